//! TLS termination with rustls (the `ring` provider, which the Kubernetes
//! client already links, so TLS adds no second crypto library).
//!
//! One [`ServerConfig`] for the life of the process: TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1`, session resumption by tickets (TLS 1.3 and
//! 1.2) and a session-ID cache (TLS 1.2). Certificates come from a
//! [`CertStore`], the config's certificate resolver: it picks a chain by
//! SNI (the first whose names match, else the first of the set) and can be
//! swapped atomically at any time, so a renewed certificate takes effect
//! on the next handshake without touching open connections (or the ticket
//! keys: sessions resume across a swap).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

pub use crate::discovery::CertPair;

/// A certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificates at all.
    #[error("no TLS certificate configured")]
    Empty,
    /// No `CERTIFICATE` block in the chain.
    #[error("{name}: no certificate in the chain (expected PEM `CERTIFICATE` blocks)")]
    NoCertificate {
        /// The pair's name.
        name: String,
    },
    /// The chain is not valid PEM.
    #[error("{name}: invalid certificate PEM: {source}")]
    BadChain {
        /// The pair's name.
        name: String,
        /// Cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// No usable private key.
    #[error(
        "{name}: no private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block): {source}"
    )]
    BadKey {
        /// The pair's name.
        name: String,
        /// Cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A key type rustls cannot sign with, or a key that is not the
    /// certificate's.
    #[error("{name}: {source}")]
    Unusable {
        /// The pair's name.
        name: String,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate does not parse as X.509.
    #[error("{name}: the leaf certificate is not valid X.509: {source}")]
    BadLeaf {
        /// The pair's name.
        name: String,
        /// Cause.
        #[source]
        source: webpki::Error,
    },
}

/// One usable certificate.
struct Loaded {
    name: String,
    key: Arc<CertifiedKey>,
}

impl Loaded {
    fn parse(pair: &CertPair) -> Result<Self, TlsError> {
        let name = pair.name.clone();
        let chain = CertificateDer::pem_slice_iter(&pair.chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::BadChain {
                name: name.clone(),
                source,
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate { name });
        };
        webpki::EndEntityCert::try_from(leaf).map_err(|source| TlsError::BadLeaf {
            name: name.clone(),
            source,
        })?;
        let key =
            PrivateKeyDer::from_pem_slice(&pair.key_pem).map_err(|source| TlsError::BadKey {
                name: name.clone(),
                source,
            })?;
        let signer =
            provider::sign::any_supported_type(&key).map_err(|source| TlsError::Unusable {
                name: name.clone(),
                source,
            })?;
        let key = CertifiedKey::new(chain, signer);
        key.keys_match().map_err(|source| TlsError::Unusable {
            name: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            key: Arc::new(key),
        })
    }

    fn serves(&self, sni: &ServerName<'_>) -> bool {
        webpki::EndEntityCert::try_from(self.key.end_entity_cert().expect("checked at load"))
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(sni).is_ok())
    }
}

/// The current certificates: a rustls resolver that can be swapped
/// atomically.
pub struct CertStore {
    current: ArcSwap<Vec<Loaded>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.current.load().iter().map(|c| c.name.clone()).collect();
        f.debug_struct("CertStore").field("certs", &names).finish()
    }
}

impl CertStore {
    /// A store serving `pairs`; every one must be usable.
    pub fn new(pairs: &[CertPair]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(Self::load(pairs)?),
        }))
    }

    /// A store with no certificate yet (handshakes fail until
    /// [`CertStore::replace`] gives it some): for sources that fetch their
    /// certificates after the start, such as Kubernetes Secrets.
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Whether it holds any certificate.
    pub fn is_loaded(&self) -> bool {
        !self.current.load().is_empty()
    }

    fn load(pairs: &[CertPair]) -> Result<Vec<Loaded>, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::Empty);
        }
        pairs.iter().map(Loaded::parse).collect()
    }

    /// Serves `pairs` from the next handshake on. If any of them is
    /// unusable nothing changes and the error says why (the previous set
    /// keeps serving).
    pub fn replace(&self, pairs: &[CertPair]) -> Result<(), TlsError> {
        self.current.store(Arc::new(Self::load(pairs)?));
        Ok(())
    }

    /// The names of the certificates in service.
    pub fn names(&self) -> Vec<String> {
        self.current.load().iter().map(|c| c.name.clone()).collect()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        let by_name = sni
            .and_then(|s| ServerName::try_from(s.to_owned()).ok())
            .and_then(|sni| certs.iter().find(|c| c.serves(&sni)));
        by_name.or_else(|| certs.first()).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Sessions kept for TLS 1.2 session-ID resumption (per process).
const SESSION_CACHE: usize = 4096;

/// The server configuration for every TLS listener: certificates from
/// `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` (ECDSA P-256).
    pub(crate) fn pair(name: &str, names: &[&str]) -> CertPair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertPair {
            name: name.to_owned(),
            chain_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    fn leaf_of(key: &CertifiedKey) -> Vec<u8> {
        key.end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn picks_by_sni_and_falls_back_to_the_first() {
        let a = pair("a", &["a.example"]);
        let b = pair("b", &["b.example", "*.wild.example"]);
        let store = CertStore::new(&[a.clone(), b.clone()]).unwrap();
        let leaf = |sni| leaf_of(&store.pick(sni).unwrap());
        let a_leaf = leaf(Some("a.example"));
        let b_leaf = leaf(Some("b.example"));
        assert_ne!(a_leaf, b_leaf);
        assert_eq!(leaf(Some("x.wild.example")), b_leaf, "wildcard SAN");
        assert_eq!(leaf(Some("unknown.example")), a_leaf, "no match: the first");
        assert_eq!(leaf(None), a_leaf, "no SNI: the first");
    }

    #[test]
    fn a_bad_replacement_keeps_the_old_certificates() {
        let a = pair("a", &["a.example"]);
        let store = CertStore::new(std::slice::from_ref(&a)).unwrap();
        let before = leaf_of(&store.pick(None).unwrap());
        let mut broken = pair("b", &["b.example"]);
        broken.key_pem = a.key_pem.clone();
        let e = store.replace(&[broken]).unwrap_err();
        assert!(matches!(e, TlsError::Unusable { .. }), "{e}");
        assert_eq!(
            leaf_of(&store.pick(None).unwrap()),
            before,
            "still the old one"
        );
        let b = pair("b", &["b.example"]);
        store.replace(&[b]).unwrap();
        assert_ne!(leaf_of(&store.pick(None).unwrap()), before, "swapped");
    }

    #[test]
    fn unusable_input_is_a_clear_error() {
        let good = pair("good", &["a.example"]);
        let cases = [
            (
                CertPair {
                    chain_pem: b"not pem".to_vec(),
                    ..good.clone()
                },
                "no certificate",
            ),
            (
                CertPair {
                    key_pem: b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec(),
                    ..good.clone()
                },
                "no private key",
            ),
            (
                CertPair {
                    chain_pem: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                        .to_vec(),
                    ..good.clone()
                },
                "not valid X.509",
            ),
        ];
        for (pair, want) in cases {
            let e = CertStore::new(&[pair]).unwrap_err().to_string();
            assert!(e.starts_with("good: ") && e.contains(want), "{e}");
        }
        assert!(matches!(CertStore::new(&[]), Err(TlsError::Empty)));
        let dbg = format!("{good:?}");
        assert!(!dbg.contains("PRIVATE"), "no key material in Debug: {dbg}");
    }

    #[test]
    fn the_config_offers_h2_and_http11_and_resumes() {
        let store = CertStore::new(&[pair("a", &["a.example"])]).unwrap();
        let config = server_config(store).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ticketer.enabled());
    }
}
