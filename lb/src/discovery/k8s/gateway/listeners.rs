//! Gateway listeners: which ones this LB can serve, on which of its own
//! listeners, with which certificates; and the Gateway's status.
//!
//! The port map (docs/gateway-api.md, "Listener ports"): a Gateway
//! listener with protocol `HTTP` on the configured HTTP port (default 80)
//! is served by the LB's plain listener (`--listen`), one with `HTTPS` on
//! the HTTPS port (default 443) by its TLS listener (`--tls-listen`); the
//! LB's Service maps those ports onto its own. Any other port is
//! `Accepted=False` `PortUnavailable`; any other protocol
//! `UnsupportedProtocol`. Listeners that claim the same LB listener and
//! hostname conflict: inside one Gateway all of them are `Conflicted`; across
//! Gateways served by one LB the oldest Gateway keeps it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::super::conditions::{condition, truth};
use super::super::gateway_api::{
    GROUP, Gateway, GatewayAddress, GatewayStatus, Listener, ListenerStatus, ReferenceGrant,
    RouteGroupKind,
};
use super::grants::{Side, permitted};
use super::{GatewayConfig, RouteKindName};
use crate::discovery::CertPair;
use crate::discovery::route::{HostMatch, ListenerId};

/// What a listener's `allowedRoutes.namespaces` admits.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowedNamespaces {
    /// The Gateway's own namespace.
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match.
    Selector(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector),
}

/// A condition's failure: reason and message.
pub type Failed = (&'static str, String);

/// One Gateway listener as the LB serves it (or why not).
#[derive(Debug, Clone)]
pub struct ListenerPlan {
    /// Its name.
    pub name: String,
    /// Its port.
    pub port: i32,
    /// The LB listener that serves it.
    pub id: ListenerId,
    /// Its hostname (`None`: any).
    pub hostname: Option<HostMatch>,
    /// `Err`: `Accepted=False`.
    pub accepted: Result<(), Failed>,
    /// `Err`: `ResolvedRefs=False`.
    pub resolved: Result<(), Failed>,
    /// `Some`: `Conflicted=True`.
    pub conflicted: Option<Failed>,
    /// Route kinds it takes.
    pub kinds: Vec<RouteKindName>,
    /// Namespaces it admits routes from.
    pub namespaces: AllowedNamespaces,
    /// Its certificates (HTTPS).
    pub certs: Vec<CertPair>,
}

impl ListenerPlan {
    /// Whether routes may attach (accepted; refs and conflicts do not stop
    /// attachment, only programming).
    pub fn attachable(&self) -> bool {
        self.accepted.is_ok()
    }

    /// Whether it serves traffic.
    pub fn programmed(&self) -> bool {
        self.accepted.is_ok() && self.resolved.is_ok() && self.conflicted.is_none()
    }

    /// What it claims on the LB: its LB listener and hostname.
    pub fn claim(&self) -> (u8, String) {
        (
            self.id.0,
            self.hostname
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )
    }
}

/// One Gateway this LB programs.
#[derive(Debug, Clone)]
pub struct GatewayPlan {
    /// `namespace/name`.
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// Its listeners, in spec order.
    pub listeners: Vec<ListenerPlan>,
    /// `Err`: the Gateway itself is not accepted.
    pub invalid: Option<Failed>,
}

const TLS_TYPE: &str = "kubernetes.io/tls";

/// The certificate of a Secret, or why it cannot be used.
pub fn secret_pair(secret: &Secret, key: &str) -> Result<CertPair, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if secret.type_.as_deref() != Some(TLS_TYPE) {
        return Err(format!(
            "Secret {key} is of type {:?}, not {TLS_TYPE}",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("Secret {key} has no `{k}`"))
    };
    let chain = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("Secret {key}: tls.crt is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("Secret {key}: tls.crt holds no certificate"));
    }
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("Secret {key}: tls.key is not a PEM private key: {e}"))?;
    Ok(CertPair {
        name: format!("secret/{key}"),
        chain_pem: chain,
        key_pem,
    })
}

fn route_kinds(listener: &Listener) -> (Vec<RouteKindName>, Option<Failed>) {
    let Some(asked) = listener
        .allowed_routes
        .as_ref()
        .map(|a| &a.kinds)
        .filter(|k| !k.is_empty())
    else {
        return (vec![RouteKindName::Http, RouteKindName::Grpc], None);
    };
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for k in asked {
        let group = k.group.as_deref().unwrap_or(GROUP);
        match (group, k.kind.as_str()) {
            (GROUP, "HTTPRoute") => kinds.push(RouteKindName::Http),
            (GROUP, "GRPCRoute") => kinds.push(RouteKindName::Grpc),
            _ => invalid.push(format!("{group}/{}", k.kind)),
        }
    }
    kinds.dedup();
    let failed = (!invalid.is_empty()).then(|| {
        (
            "InvalidRouteKinds",
            format!(
                "route kinds not supported: {} (supported: HTTPRoute, GRPCRoute)",
                invalid.join(", ")
            ),
        )
    });
    (kinds, failed)
}

/// The listeners of `gw`, before conflicts between Gateways.
pub fn plan(
    gw: &Gateway,
    config: &GatewayConfig,
    grants: &BTreeMap<String, ReferenceGrant>,
    secrets: &BTreeMap<String, Secret>,
) -> GatewayPlan {
    let namespace = gw.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", gw.name_any());
    let invalid = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
        .map(|p| {
            (
                "InvalidParameters",
                format!(
                    "roundhouse takes no infrastructure parameters ({}/{} {})",
                    p.group, p.kind, p.name
                ),
            )
        });
    let mut listeners: Vec<ListenerPlan> = gw
        .spec
        .listeners
        .iter()
        .map(|l| plan_listener(l, &namespace, config, grants, secrets))
        .collect();
    // Inside one Gateway: two listeners on one LB listener and hostname
    // both conflict; on one port with different protocols too.
    for i in 0..listeners.len() {
        for j in 0..listeners.len() {
            if i == j || listeners[i].accepted.is_err() || listeners[j].accepted.is_err() {
                continue;
            }
            let (a, b) = (&listeners[i], &listeners[j]);
            if a.port == b.port && a.id != b.id {
                listeners[i].conflicted = Some((
                    "ProtocolConflict",
                    format!(
                        "listener {} uses the same port with another protocol",
                        b.name
                    ),
                ));
            } else if a.claim() == b.claim() {
                listeners[i].conflicted = Some((
                    "HostnameConflict",
                    format!(
                        "listener {} has the same port and hostname",
                        listeners[j].name
                    ),
                ));
            }
        }
    }
    GatewayPlan {
        key,
        namespace,
        listeners,
        invalid,
    }
}

fn plan_listener(
    l: &Listener,
    namespace: &str,
    config: &GatewayConfig,
    grants: &BTreeMap<String, ReferenceGrant>,
    secrets: &BTreeMap<String, Secret>,
) -> ListenerPlan {
    let (kinds, kinds_failed) = route_kinds(l);
    let namespaces = match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        Some(n) => match n.from.as_deref() {
            Some("All") => AllowedNamespaces::All,
            Some("Selector") => AllowedNamespaces::Selector(n.selector.clone().unwrap_or_default()),
            _ => AllowedNamespaces::Same,
        },
        None => AllowedNamespaces::Same,
    };
    let hostname = l.hostname.as_deref().map(HostMatch::parse);
    let mut plan = ListenerPlan {
        name: l.name.clone(),
        port: l.port,
        id: ListenerId::PLAIN,
        hostname: None,
        accepted: Ok(()),
        resolved: Ok(()),
        conflicted: None,
        kinds,
        namespaces,
        certs: Vec::new(),
    };
    match hostname {
        Some(Err(e)) => {
            plan.accepted = Err(("UnsupportedValue", e.to_string()));
            plan.kinds.clear();
        }
        Some(Ok(h)) => plan.hostname = Some(h),
        None => {}
    }
    let https = match l.protocol.as_str() {
        "HTTP" => false,
        "HTTPS" => true,
        other => {
            plan.accepted = Err((
                "UnsupportedProtocol",
                format!("protocol {other} is not supported (HTTP and HTTPS are)"),
            ));
            plan.kinds.clear();
            return plan;
        }
    };
    let want = if https {
        config.https_port
    } else {
        config.http_port
    };
    if l.port != i32::from(want) {
        plan.accepted = Err((
            "PortUnavailable",
            format!(
                "this LB serves {} on port {want} only (docs/gateway-api.md, listener ports)",
                l.protocol
            ),
        ));
        return plan;
    }
    if let Some(failed) = kinds_failed {
        plan.resolved = Err(failed);
    }
    if !https {
        return plan;
    }
    plan.id = ListenerId::TLS;
    let tls = l.tls.clone().unwrap_or_default();
    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
        plan.accepted = Err((
            "UnsupportedProtocol",
            "TLS passthrough is not supported on HTTPS listeners".into(),
        ));
        return plan;
    }
    if tls.certificate_refs.is_empty() {
        plan.resolved = Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
        return plan;
    }
    for r in &tls.certificate_refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let secret_key = format!("{ns}/{}", r.name);
        let outcome = if !group.is_empty() || kind != "Secret" {
            Err((
                "InvalidCertificateRef",
                format!("certificateRefs may name core Secrets only, not {group}/{kind}"),
            ))
        } else if !permitted(
            grants.values(),
            Side {
                group: GROUP,
                kind: "Gateway",
                namespace,
            },
            Side {
                group: "",
                kind: "Secret",
                namespace: ns,
            },
            &r.name,
        ) {
            Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {ns} lets Gateways of {namespace} use Secret {secret_key}"
                ),
            ))
        } else {
            match secrets.get(&secret_key) {
                None => Err((
                    "InvalidCertificateRef",
                    format!("Secret {secret_key} not found"),
                )),
                Some(s) => secret_pair(s, &secret_key).map_err(|e| ("InvalidCertificateRef", e)),
            }
        };
        match outcome {
            Ok(pair) => plan.certs.push(pair),
            Err(failed) => {
                if plan.resolved.is_ok() {
                    plan.resolved = Err(failed);
                }
            }
        }
    }
    plan
}

/// Marks the listeners of younger Gateways that claim what an older
/// Gateway's listener claims. `plans` are in seniority order (oldest first).
pub fn settle_across_gateways(plans: &mut [GatewayPlan]) {
    let mut owner: BTreeMap<(u8, String), String> = BTreeMap::new();
    for plan in plans.iter_mut() {
        for l in plan.listeners.iter_mut() {
            if l.accepted.is_err() || l.conflicted.is_some() {
                continue;
            }
            match owner.get(&l.claim()) {
                Some(winner) if *winner != plan.key => {
                    l.conflicted = Some((
                        "HostnameConflict",
                        format!(
                            "Gateway {winner} (older) has a listener on the same port and \
                             hostname on this LB; run one LB per Gateway to serve both \
                             (docs/gateway-api.md)"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    owner.insert(l.claim(), plan.key.clone());
                }
            }
        }
    }
}

fn kinds_status(kinds: &[RouteKindName]) -> Vec<RouteGroupKind> {
    kinds
        .iter()
        .map(|k| RouteGroupKind {
            group: Some(GROUP.into()),
            kind: k.as_str().into(),
        })
        .collect()
}

/// The Gateway's status: addresses, conditions, one entry per listener
/// with its attached route count.
pub fn status(
    gw: &Gateway,
    plan: &GatewayPlan,
    attached: &BTreeMap<String, i32>,
    addresses: &[GatewayAddress],
    now: &Time,
) -> GatewayStatus {
    let generation = gw.metadata.generation;
    let previous = gw.status.clone().unwrap_or_default();
    let cond = |prev: &[Condition], type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, truth(ok), reason, message, generation, prev, now)
    };
    let listeners: Vec<ListenerStatus> = plan
        .listeners
        .iter()
        .map(|l| {
            let prev = previous
                .listeners
                .iter()
                .find(|p| p.name == l.name)
                .map(|p| p.conditions.clone())
                .unwrap_or_default();
            let mut conditions = vec![match &l.accepted {
                Ok(()) => cond(
                    &prev,
                    "Accepted",
                    true,
                    "Accepted",
                    "listener accepted".into(),
                ),
                Err((r, m)) => cond(&prev, "Accepted", false, r, m.clone()),
            }];
            conditions.push(match &l.resolved {
                Ok(()) => cond(
                    &prev,
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "references resolved".into(),
                ),
                Err((r, m)) => cond(&prev, "ResolvedRefs", false, r, m.clone()),
            });
            conditions.push(match &l.conflicted {
                None => cond(
                    &prev,
                    "Conflicted",
                    false,
                    "NoConflicts",
                    "no conflicts".into(),
                ),
                Some((r, m)) => cond(&prev, "Conflicted", true, r, m.clone()),
            });
            conditions.push(if l.programmed() {
                cond(
                    &prev,
                    "Programmed",
                    true,
                    "Programmed",
                    format!(
                        "served by the LB's {} listener",
                        if l.id == ListenerId::TLS {
                            "TLS"
                        } else {
                            "plain"
                        }
                    ),
                )
            } else {
                cond(
                    &prev,
                    "Programmed",
                    false,
                    "Invalid",
                    "not served: see the other conditions".into(),
                )
            });
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds: kinds_status(&l.kinds),
                attached_routes: attached.get(&l.name).copied().unwrap_or(0),
                conditions,
            }
        })
        .collect();
    let accepted_count = plan.listeners.iter().filter(|l| l.accepted.is_ok()).count();
    let accepted = match &plan.invalid {
        Some((r, m)) => cond(&previous.conditions, "Accepted", false, r, m.clone()),
        None if accepted_count == 0 => cond(
            &previous.conditions,
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid".into(),
        ),
        None if accepted_count < plan.listeners.len() => cond(
            &previous.conditions,
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are not valid; the others are served".into(),
        ),
        None => cond(
            &previous.conditions,
            "Accepted",
            true,
            "Accepted",
            "accepted by roundhouse".into(),
        ),
    };
    let any_programmed = plan.invalid.is_none() && plan.listeners.iter().any(|l| l.programmed());
    let programmed = if addresses.is_empty() {
        cond(
            &previous.conditions,
            "Programmed",
            false,
            "AddressNotAssigned",
            "the LB knows no address of its own (--gateway-address or --gateway-service)".into(),
        )
    } else if any_programmed {
        cond(
            &previous.conditions,
            "Programmed",
            true,
            "Programmed",
            "served by this LB".into(),
        )
    } else {
        cond(
            &previous.conditions,
            "Programmed",
            false,
            "Invalid",
            "no listener is served".into(),
        )
    };
    GatewayStatus {
        addresses: addresses.to_vec(),
        conditions: vec![accepted, programmed],
        listeners,
    }
}
