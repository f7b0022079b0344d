//! The TLS listener's certificates from the `kubernetes.io/tls` Secrets
//! named in the configuration (`--tls-secret`). They are read once before
//! the LB serves (a missing or invalid Secret is a configuration error),
//! then watched, each by its own watcher with a `metadata.name` field
//! selector: so the Role can grant `get`, `list` and `watch` on exactly
//! those names (`resourceNames`), never on every Secret in the namespace.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::discovery::{CertPair, Publisher, SourceError};

/// The type of a TLS Secret.
const TLS_TYPE: &str = "kubernetes.io/tls";

/// The certificate pair in `secret`, or why there is none.
pub fn pair_of(secret: &Secret) -> Result<CertPair, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    if secret.type_.as_deref() != Some(TLS_TYPE) {
        return Err(format!(
            "type is {:?}, expected {TLS_TYPE}",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let data = secret.data.as_ref();
    let field = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("no `{key}` in its data"))
    };
    Ok(CertPair {
        name: format!("secret/{name}"),
        chain_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
    })
}

/// Reads every named Secret (in order).
pub async fn read(api: &Api<Secret>, names: &[String]) -> Result<Vec<CertPair>, SourceError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let error = |message: String| SourceError::TlsSecret {
            name: name.clone(),
            message,
        };
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(error("not found in the namespace".into())),
            Err(e) => return Err(error(format!("cannot read it: {e}"))),
        };
        out.push(pair_of(&secret).map_err(error)?);
    }
    Ok(out)
}

/// Watches the named Secrets and publishes the set whenever one changes.
/// A Secret that is deleted or becomes invalid is logged and its last good
/// certificate keeps serving.
pub async fn follow(
    api: Api<Secret>,
    names: Vec<String>,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let watches = names.iter().map(|name| {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher::watcher(api.clone(), config)
            .default_backoff()
            .boxed()
    });
    let mut events = stream::select_all(watches);
    let mut current: BTreeMap<String, CertPair> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        let secret = match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => s,
            Ok(Event::Delete(s)) => {
                warn!(
                    secret = s.metadata.name.as_deref().unwrap_or(""),
                    "TLS Secret deleted; its last certificate keeps serving"
                );
                continue;
            }
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                publisher.record_error("secrets");
                warn!(error = %e, "watching the TLS Secrets failed; retrying");
                continue;
            }
        };
        let name = secret.metadata.name.clone().unwrap_or_default();
        match pair_of(&secret) {
            Ok(pair) => {
                if current.get(&name) != Some(&pair) {
                    info!(secret = %name, "TLS Secret changed");
                    current.insert(name, pair);
                }
            }
            Err(message) => {
                warn!(secret = %name, error = %message, "TLS Secret is not usable; its last certificate keeps serving");
                continue;
            }
        }
        if names.iter().all(|n| current.contains_key(n)) {
            publisher.publish_certs(names.iter().map(|n| current[n].clone()).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn secret(type_: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("web-tls".into()),
                ..ObjectMeta::default()
            },
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_tls_secret_gives_its_pair_and_anything_else_a_reason() {
        let ok = secret(TLS_TYPE, &[("tls.crt", b"chain"), ("tls.key", b"key")]);
        let pair = pair_of(&ok).unwrap();
        assert_eq!(
            (pair.name.as_str(), &pair.chain_pem[..], &pair.key_pem[..]),
            ("secret/web-tls", &b"chain"[..], &b"key"[..])
        );
        let opaque = secret("Opaque", &[("tls.crt", b"c"), ("tls.key", b"k")]);
        assert!(
            pair_of(&opaque)
                .unwrap_err()
                .contains("expected kubernetes.io/tls")
        );
        let no_key = secret(TLS_TYPE, &[("tls.crt", b"c")]);
        assert!(pair_of(&no_key).unwrap_err().contains("tls.key"));
        let empty = secret(TLS_TYPE, &[("tls.crt", b""), ("tls.key", b"k")]);
        assert!(pair_of(&empty).unwrap_err().contains("tls.crt"));
    }
}
