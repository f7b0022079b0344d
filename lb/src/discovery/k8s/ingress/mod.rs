//! The Ingress adapter: `networking.k8s.io/v1` Ingresses of roundhouse's
//! IngressClass, with the ingress-nginx annotations people depend on,
//! become routes of the route model, TLS certificates for the TLS listener,
//! the Ingresses' `status.loadBalancer` and reports (Kubernetes Events,
//! log lines, metrics) for whatever cannot be honoured.
//!
//! One pure step, [`IngressIndex::compute`], reads every store and returns
//! all of it; the watch loop ([`source`]) feeds the stores, publishes, and
//! hands statuses to a status writer and reports to the [`events`]
//! reporter. The steps, each in its own module:
//!
//! 1. [`class`]: which Ingresses are ours (`ingressClassName`, the legacy
//!    annotation, the default class);
//! 2. [`annotations`]: `nginx.ingress.kubernetes.io/…` read and checked;
//! 3. [`routes`]: rules, paths, `defaultBackend`, canaries, conflicts and
//!    HTTPS redirects translated into routes, with backends resolved by
//!    [`backends`] (Service ports through their EndpointSlices, as for every
//!    kind);
//! 4. [`tls`]: the `tls` sections' Secrets checked and served by SNI.
//!
//! docs/ingress.md is the user's view: what each annotation does here and
//! where roundhouse differs from ingress-nginx.

pub mod annotations;
pub mod backends;
pub mod class;
pub mod events;
pub mod routes;
pub mod sink;
pub mod source;
pub mod tls;

pub use self::class::CONTROLLER;
pub use self::source::IngressDiscovery;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use self::annotations::ProblemKind;
use self::backends::Backends;
use self::class::Classes;
use self::routes::{Ours, Settings};
use super::conflicts::seniority;
use super::store::{Buffered, Touched, by_name, by_namespace_and_name};
use crate::discovery::{CertPair, RoutingConfig};

/// How this LB serves Ingresses (the `--ingress-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// IngressClass names to serve; empty: every class naming
    /// [`CONTROLLER`].
    pub classes: Vec<String>,
    /// The HTTPS port clients reach (`--https-port`): redirects to HTTPS
    /// name it when it is not 443.
    pub https_port: u16,
    /// The addresses written to the Ingresses' `status.loadBalancer`
    /// (IPs or host names); empty: the LB Service's, if one is named.
    pub addresses: Vec<String>,
    /// The request body limit of an Ingress without `proxy-body-size`
    /// (`--ingress-max-body-size`; `None`: none).
    pub max_body_bytes: Option<u64>,
}

/// ingress-nginx's default `proxy-body-size` (nginx's
/// `client_max_body_size`): 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            https_port: 443,
            addresses: Vec::new(),
            max_body_bytes: Some(DEFAULT_MAX_BODY_BYTES),
        }
    }
}

/// Something to tell the owner of an Ingress: an Event on it, a log line,
/// and for annotations a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The Ingress (`namespace/name`).
    pub ingress: String,
    /// A `Warning` Event (else `Normal`).
    pub warning: bool,
    /// The Event reason (`UnsupportedAnnotation`, `Conflict`, …).
    pub reason: &'static str,
    /// The annotation concerned, if any (the metric's label).
    pub annotation: Option<String>,
    /// For people.
    pub message: String,
}

/// Every object the adapter reads, as watch stores (cluster-wide).
#[derive(Debug)]
pub struct IngressIndex {
    /// IngressClasses (cluster-scoped), by name.
    pub classes: Buffered<IngressClass>,
    /// Ingresses, by `namespace/name`.
    pub ingresses: Buffered<Ingress>,
    /// Services (for their ports and the LB's own addresses).
    pub services: Buffered<Service>,
    /// EndpointSlices.
    pub slices: Buffered<EndpointSlice>,
    /// `kubernetes.io/tls` Secrets.
    pub secrets: Buffered<Secret>,
}

impl Default for IngressIndex {
    fn default() -> Self {
        Self {
            classes: Buffered::keyed(by_name),
            ingresses: Buffered::keyed(by_namespace_and_name),
            services: Buffered::keyed(by_namespace_and_name),
            slices: Buffered::keyed(by_namespace_and_name),
            secrets: Buffered::keyed(by_namespace_and_name),
        }
    }
}

/// Everything the adapter decides from the stores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    /// The routing snapshot.
    pub routing: RoutingConfig,
    /// The certificates of our Ingresses' `tls` sections, by Secret.
    pub certs: Vec<CertPair>,
    /// The status of each of our Ingresses (none without an address).
    pub statuses: BTreeMap<String, IngressStatus>,
    /// What to report.
    pub reports: Vec<Report>,
    /// Paths not routed because of a conflict.
    pub conflicts: usize,
    /// Our Ingresses (`namespace/name`).
    pub ours: BTreeSet<String>,
}

fn changed<K>(t: Touched<K>) -> bool {
    !matches!(t, Touched::Nothing)
}

impl IngressIndex {
    /// True once every store has listed.
    pub fn synced(&self) -> bool {
        self.classes.synced()
            && self.ingresses.synced()
            && self.services.synced()
            && self.slices.synced()
            && self.secrets.synced()
    }

    /// Applies an IngressClass event; true when something visible changed.
    pub fn apply_class(&mut self, e: Event<IngressClass>) -> bool {
        changed(self.classes.apply(e))
    }
    /// Applies an Ingress event.
    pub fn apply_ingress(&mut self, e: Event<Ingress>) -> bool {
        changed(self.ingresses.apply(e))
    }
    /// Applies a Service event.
    pub fn apply_service(&mut self, e: Event<Service>) -> bool {
        changed(self.services.apply(e))
    }
    /// Applies an EndpointSlice event.
    pub fn apply_slice(&mut self, e: Event<EndpointSlice>) -> bool {
        changed(self.slices.apply(e))
    }
    /// Applies a Secret event.
    pub fn apply_secret(&mut self, e: Event<Secret>) -> bool {
        changed(self.secrets.apply(e))
    }

    /// Computes routing, certificates, statuses and reports. `addresses`
    /// are the LB's (for the statuses).
    pub fn compute(&self, config: &IngressConfig, addresses: &[String]) -> Computed {
        let classes = Classes::of(self.classes.live().values(), &config.classes);
        let mut out = Computed::default();
        let mut ours: Vec<Ours<'_>> = Vec::new();
        for (key, ing) in self.ingresses.live() {
            if classes.claims(ing).is_none() {
                continue;
            }
            let (parsed, problems) =
                annotations::parse(&ing.metadata.annotations.clone().unwrap_or_default());
            for p in problems {
                out.reports.push(Report {
                    ingress: key.clone(),
                    warning: p.kind != ProblemKind::NotApplied,
                    reason: p.kind.reason(),
                    annotation: Some(p.annotation),
                    message: p.message,
                });
            }
            ours.push(Ours {
                key,
                ingress: ing,
                annotations: parsed,
                created: ing
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
            });
            out.ours.insert(key.clone());
        }
        ours.sort_by(|a, b| {
            seniority(
                (a.ingress.metadata.creation_timestamp.as_ref(), a.key),
                (b.ingress.metadata.creation_timestamp.as_ref(), b.key),
            )
        });
        let mut backends = Backends::new(self.services.live(), self.slices.live());
        let translated = routes::translate(
            &ours,
            &mut backends,
            Settings {
                https_port: config.https_port,
                max_body_bytes: config.max_body_bytes,
            },
        );
        out.routing.routes = translated
            .routes
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
        out.reports.extend(translated.reports);
        out.conflicts = translated.conflicts;
        self.certs(&ours, &mut out);
        if !addresses.is_empty() {
            let status = lb_status(addresses);
            for key in &out.ours {
                out.statuses.insert(key.clone(), status.clone());
            }
        }
        out
    }

    /// The Secrets of our Ingresses' `tls` sections, each checked; the
    /// others reported.
    fn certs(&self, ours: &[Ours<'_>], out: &mut Computed) {
        let mut wanted: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for o in ours.iter().filter(|o| o.annotations.canary.is_none()) {
            let ns = o.ingress.namespace().unwrap_or_default();
            let tls = o.ingress.spec.as_ref().and_then(|s| s.tls.as_deref());
            for t in tls.unwrap_or_default() {
                if let Some(name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) {
                    wanted
                        .entry(format!("{ns}/{name}"))
                        .or_default()
                        .push(o.key);
                }
            }
        }
        for (key, users) in wanted {
            let pair = match self.secrets.live().get(&key) {
                None => Err(format!(
                    "TLS Secret {key} not found (or not of type kubernetes.io/tls); its hosts get \
                     the TLS listener's default certificate"
                )),
                Some(secret) => super::secrets::pair_of(secret)
                    .and_then(|mut pair| {
                        pair.name = format!("secret/{key}");
                        tls::check(&pair).map(|()| pair)
                    })
                    .map_err(|e| {
                        format!(
                            "TLS Secret {key} cannot be served ({e}); its hosts get the TLS \
                             listener's default certificate"
                        )
                    }),
            };
            match pair {
                Ok(pair) => out.certs.push(pair),
                Err(message) => {
                    for user in users {
                        out.reports.push(Report {
                            ingress: user.to_owned(),
                            warning: true,
                            reason: "InvalidTLSSecret",
                            annotation: None,
                            message: message.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// The `status` of an Ingress served at `addresses` (IPs or host names).
pub fn lb_status(addresses: &[String]) -> IngressStatus {
    IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: Some(
                addresses
                    .iter()
                    .map(|a| {
                        let ip = a.parse::<std::net::IpAddr>().is_ok();
                        IngressLoadBalancerIngress {
                            ip: ip.then(|| a.clone()),
                            hostname: (!ip).then(|| a.clone()),
                            ports: None,
                        }
                    })
                    .collect(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests;
