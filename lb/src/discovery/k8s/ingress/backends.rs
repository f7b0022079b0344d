//! An Ingress backend (a Service and a Service port, by name or number)
//! resolved into a route-model [`Backend`].
//!
//! An Ingress names the *Service* port, while EndpointSlices carry the
//! target port under the Service port's name, so the Service is read to
//! map one onto the other: a port number is looked up among the Service's
//! ports, and its name (none for a Service with a single unnamed port)
//! selects the slices' port through [`resolve_service_port`], the same
//! resolution as the Gateway API's backendRefs. Backends are built once per
//! computation and shared by every rule that names them, so rules on one
//! Service port share its endpoints' health and counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::discovery::k8s::endpoints::{
    PortError, resolve_service_port, service_port, slices_by_service,
};
use crate::discovery::route::Backend;
use crate::discovery::{Protocol, UpstreamPolicy};

/// What an Ingress's annotations change about its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Overrides {
    /// `backend-protocol` (else the port's `appProtocol`).
    pub protocol: Option<Protocol>,
    /// `proxy-connect-timeout`.
    pub connect_timeout: Option<Duration>,
}

/// The Ingress's backends that are built from the cluster's Services and
/// EndpointSlices, once per computation.
pub struct Backends<'a> {
    services: &'a BTreeMap<String, Service>,
    slices: HashMap<String, Vec<&'a EndpointSlice>>,
    /// By Service, Service port number and overrides.
    built: HashMap<(String, i32, Overrides), Result<Arc<Backend>, String>>,
}

impl<'a> Backends<'a> {
    /// Backends over these Services and slices (both keyed
    /// `namespace/name`).
    pub fn new(
        services: &'a BTreeMap<String, Service>,
        slices: &'a BTreeMap<String, EndpointSlice>,
    ) -> Self {
        Self {
            services,
            slices: slices_by_service(slices),
            built: HashMap::new(),
        }
    }

    /// The backend of `svc` in `namespace` with `overrides` set by the
    /// Ingress `owner` (`namespace/name`), or why there is none. A port by
    /// name and the same port by number are one backend.
    pub fn get(
        &mut self,
        namespace: &str,
        svc: &IngressServiceBackend,
        overrides: &Overrides,
        owner: &str,
    ) -> Result<Arc<Backend>, String> {
        let service_key = format!("{namespace}/{}", svc.name);
        let port = svc.port.as_ref();
        let wanted = match (
            port.and_then(|p| p.number),
            port.and_then(|p| p.name.as_deref()),
        ) {
            (Some(n), _) => IntOrString::Int(n),
            (None, Some(name)) if !name.is_empty() => IntOrString::String(name.to_owned()),
            _ => {
                return Err(format!(
                    "backend Service {service_key} has no port (port.name or port.number)"
                ));
            }
        };
        let Some(service) = self.services.get(&service_key) else {
            return Err(format!("Service {service_key} not found"));
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!(
                "Service {service_key} is of type ExternalName, which has no endpoints to balance over"
            ));
        }
        let Some(port) = service_port(service, &wanted) else {
            let what = match &wanted {
                IntOrString::Int(n) => format!("port {n}"),
                IntOrString::String(s) => format!("port named {s:?}"),
            };
            return Err(format!("Service {service_key} has no {what}"));
        };
        let key = (service_key, port.port, overrides.clone());
        if let Some(b) = self.built.get(&key) {
            return b.clone();
        }
        let built = self.build(&key.0, port, overrides, owner);
        self.built.insert(key, built.clone());
        built
    }

    fn build(
        &self,
        service_key: &str,
        port: &ServicePort,
        overrides: &Overrides,
        owner: &str,
    ) -> Result<Arc<Backend>, String> {
        let number = port.port;
        let slices = self
            .slices
            .get(service_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let resolved = match resolve_service_port(slices, port) {
            Ok(r) => r,
            Err(PortError::Unknown | PortError::Ambiguous { .. }) => {
                return Err(format!(
                    "the EndpointSlices of Service {service_key} have no port for Service port {number}"
                ));
            }
        };
        let natural = if resolved.h2c {
            Protocol::H2c
        } else {
            Protocol::Http1
        };
        let protocol = overrides.protocol.unwrap_or(natural);
        let mut name = format!("{service_key}:{number}");
        if protocol != natural || overrides.connect_timeout.is_some() {
            name = format!("{name} (Ingress {owner})");
        }
        Ok(Arc::new(Backend {
            name: name.into(),
            endpoints: resolved.routed,
            protocol,
            policy: UpstreamPolicy {
                connect_timeout: overrides.connect_timeout,
                ..UpstreamPolicy::default()
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::k8s::endpoints::H2C_APP_PROTOCOL;
    use crate::discovery::k8s::endpoints::tests::{ep, slice};
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::networking::v1::ServiceBackendPort;
    use kube::api::ObjectMeta;

    pub(crate) fn service(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: n.map(str::to_owned),
                            port: *p,
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn by_number(name: &str, n: i32) -> IngressServiceBackend {
        IngressServiceBackend {
            name: name.into(),
            port: Some(ServiceBackendPort {
                number: Some(n),
                name: None,
            }),
        }
    }

    fn by_name(name: &str, port: &str) -> IngressServiceBackend {
        IngressServiceBackend {
            name: name.into(),
            port: Some(ServiceBackendPort {
                number: None,
                name: Some(port.into()),
            }),
        }
    }

    fn addrs(b: &Backend) -> Vec<String> {
        b.endpoints.iter().map(|e| e.addr.to_string()).collect()
    }

    #[test]
    fn a_service_port_number_is_mapped_to_the_target_port_through_its_name() {
        let services: BTreeMap<String, Service> = [
            (
                "web/backend".to_owned(),
                service("web", "backend", &[(Some("http"), 80), (Some("grpc"), 81)]),
            ),
            (
                "web/single".to_owned(),
                service("web", "single", &[(None, 8080)]),
            ),
        ]
        .into_iter()
        .collect();
        let mut grpc = slice(
            "backend-a",
            "backend",
            &[("http", 5000), ("grpc", 5001)],
            vec![ep("10.0.0.1", None, None, None, "p1")],
        );
        grpc.ports.as_mut().unwrap()[1].app_protocol = Some(H2C_APP_PROTOCOL.into());
        let single = slice(
            "single-a",
            "single",
            &[("", 9000)],
            vec![ep("10.0.0.2", None, None, None, "p2")],
        );
        let slices: BTreeMap<String, EndpointSlice> = [
            ("web/backend-a".to_owned(), grpc),
            ("web/single-a".to_owned(), single),
            // Same Service name, other namespace: not ours.
            (
                "other/backend-a".to_owned(),
                slice(
                    "backend-a",
                    "backend",
                    &[("http", 5000)],
                    vec![ep("10.9.9.9", None, None, None, "x")],
                ),
            ),
        ]
        .into_iter()
        .collect();
        let mut b = Backends::new(&services, &slices);
        let none = Overrides::default();
        let http = b
            .get("web", &by_number("backend", 80), &none, "web/i")
            .unwrap();
        assert_eq!(addrs(&http), ["10.0.0.1:5000"]);
        assert_eq!(
            (&*http.name, http.protocol),
            ("web/backend:80", Protocol::Http1)
        );
        let same = b
            .get("web", &by_name("backend", "http"), &none, "web/j")
            .unwrap();
        assert_eq!(same.name, http.name, "by name or number: one backend name");
        let g = b
            .get("web", &by_name("backend", "grpc"), &none, "web/i")
            .unwrap();
        assert_eq!(
            (addrs(&g), g.protocol),
            (vec!["10.0.0.1:5001".to_owned()], Protocol::H2c)
        );
        let s = b
            .get("web", &by_number("single", 8080), &none, "web/i")
            .unwrap();
        assert_eq!(addrs(&s), ["10.0.0.2:9000"]);
        for (svc, want) in [
            (
                by_number("backend", 5000),
                "Service web/backend has no port 5000",
            ),
            (
                by_name("backend", "metrics"),
                "Service web/backend has no port named \"metrics\"",
            ),
            (by_number("missing", 80), "Service web/missing not found"),
        ] {
            assert_eq!(b.get("web", &svc, &none, "web/i").unwrap_err(), want);
        }
        let no_port = IngressServiceBackend {
            name: "backend".into(),
            port: None,
        };
        assert!(
            b.get("web", &no_port, &none, "web/i")
                .unwrap_err()
                .contains("has no port")
        );
    }

    #[test]
    fn overrides_give_the_ingress_its_own_backend() {
        let services: BTreeMap<String, Service> = [(
            "web/b".to_owned(),
            service("web", "b", &[(Some("http"), 80)]),
        )]
        .into_iter()
        .collect();
        let slices: BTreeMap<String, EndpointSlice> = [(
            "web/b-1".to_owned(),
            slice(
                "b-1",
                "b",
                &[("http", 5000)],
                vec![ep("10.0.0.1", None, None, None, "p")],
            ),
        )]
        .into_iter()
        .collect();
        let mut b = Backends::new(&services, &slices);
        let h2c = Overrides {
            protocol: Some(Protocol::H2c),
            connect_timeout: None,
        };
        let x = b.get("web", &by_number("b", 80), &h2c, "web/grpc").unwrap();
        assert_eq!(
            (&*x.name, x.protocol),
            ("web/b:80 (Ingress web/grpc)", Protocol::H2c)
        );
        let same_as_natural = Overrides {
            protocol: Some(Protocol::Http1),
            connect_timeout: None,
        };
        assert_eq!(
            &*b.get("web", &by_number("b", 80), &same_as_natural, "web/x")
                .unwrap()
                .name,
            "web/b:80"
        );
        let t = Overrides {
            protocol: None,
            connect_timeout: Some(Duration::from_secs(3)),
        };
        let y = b.get("web", &by_number("b", 80), &t, "web/slow").unwrap();
        assert_eq!(y.policy.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(&*y.name, "web/b:80 (Ingress web/slow)");
        // No slices yet: a backend without endpoints (503), not an error.
        let empty = BTreeMap::new();
        let mut b = Backends::new(&services, &empty);
        assert!(
            b.get("web", &by_number("b", 80), &Overrides::default(), "web/i")
                .unwrap()
                .endpoints
                .is_empty()
        );
    }
}
