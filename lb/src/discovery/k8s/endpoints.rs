//! Endpoint resolution, the same for every route kind: a backend is a
//! Service port ([`ServiceRef`]); its endpoints are read from the Service's
//! EndpointSlices.
//!
//! Rules: slices of one Service are merged and de-duplicated (the more
//! ready view of an address wins); endpoints with `ready` true or unset
//! take traffic; serving-but-terminating endpoints only when nothing is
//! ready. The port is found per slice by name or number (unset: the
//! slice's only port), and `appProtocol: kubernetes.io/h2c` on it makes
//! the backend h2c.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::discovery::EndpointSpec;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// The `appProtocol` of a Service port that speaks HTTP/2 without TLS
/// (Kubernetes' well-known value).
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// A backend by reference: a port of a Service. Route kinds translate
/// their backend references into these; [`resolve`] finds the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Port name or number; `None`: the Service's only port.
    pub port: Option<IntOrString>,
}

impl ServiceRef {
    /// The port as written (`(unset)` when there is none).
    pub fn port_text(&self) -> String {
        match &self.port {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => "(unset)".into(),
        }
    }
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`).
pub fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice.labels().get(SERVICE_LABEL).map(String::as_str)
}

/// The slices of `slices` (keyed `namespace/name`) by their Service
/// (`namespace/name`); slices without the Service label are left out.
pub fn slices_by_service(
    slices: &BTreeMap<String, EndpointSlice>,
) -> HashMap<String, Vec<&EndpointSlice>> {
    let mut by_service: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
    for (key, s) in slices {
        if let (Some(svc), Some((ns, _))) = (service_of(s), key.split_once('/')) {
            by_service.entry(format!("{ns}/{svc}")).or_default().push(s);
        }
    }
    by_service
}

/// The port of `svc` that `wanted` names: a Service port number, or a
/// Service port name (route kinds name the *Service* port, not the
/// target port the slices carry).
pub fn service_port<'a>(svc: &'a Service, wanted: &IntOrString) -> Option<&'a ServicePort> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_deref())
        .unwrap_or_default();
    ports.iter().find(|p| match wanted {
        IntOrString::Int(n) => p.port == *n,
        IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
    })
}

/// Resolves Service port `port` against the Service's slices: the slices
/// carry its target port under the Service port's name (a single unnamed
/// port is their only port). The backend is h2c when the slices' port or
/// the Service port is `appProtocol: kubernetes.io/h2c`.
pub fn resolve_service_port(
    slices: &[&EndpointSlice],
    port: &ServicePort,
) -> Result<ServiceEndpoints, PortError> {
    let slice_port = port
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(|n| IntOrString::String(n.to_owned()));
    let mut resolved = resolve(slices, slice_port.as_ref())?;
    resolved.h2c |= port.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL);
    Ok(resolved)
}

/// The addresses a Service gives clients: its load-balancer ingress IPs
/// and host names, else its external IPs, else its cluster IPs. The
/// Ingress and Gateway API modes write these (of the LB's own Service)
/// into their objects' status.
pub fn service_addresses(svc: &Service) -> Vec<String> {
    let ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| {
            list.iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !ingress.is_empty() {
        return ingress;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    if let Some(external) = spec.external_ips.filter(|e| !e.is_empty()) {
        return external;
    }
    match spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.into_iter().filter(|ip| ip != "None").collect(),
        _ => spec
            .cluster_ip
            .into_iter()
            .filter(|ip| ip != "None" && !ip.is_empty())
            .collect(),
    }
}

/// An endpoint as read from a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Address and the resolved port.
    pub addr: SocketAddr,
    /// `conditions.ready` (unset counts as ready).
    pub ready: bool,
    /// `conditions.serving` (unset: as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (unset: false).
    pub terminating: bool,
    /// The pod behind it (`targetRef.name`).
    pub pod: Option<String>,
}

/// A port that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    /// No port given and the Service has several.
    Ambiguous {
        /// How many ports.
        count: usize,
        /// Their names, comma-separated.
        names: String,
    },
    /// The Service has slices but none has the port.
    Unknown,
}

/// How usable a Service's endpoints are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// At least one endpoint is ready.
    EndpointsAvailable,
    /// Only terminating-but-serving endpoints are left; they are used.
    ServingTerminatingOnly,
    /// The Service has endpoints but none is ready.
    NoReadyEndpoints,
    /// No EndpointSlice names the Service.
    ServiceNotFound,
}

/// A Service port resolved against its slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// Every endpoint of the port, by address.
    pub found: Vec<Found>,
    /// The endpoints that take new requests, in address order.
    pub routed: Vec<EndpointSpec>,
    /// How many of `found` are ready.
    pub ready: usize,
    /// Which case this is.
    pub availability: Availability,
    /// Whether the port is declared `appProtocol: kubernetes.io/h2c`.
    pub h2c: bool,
}

/// The port of `slice` that `wanted` names (with `wanted` unset, the only
/// port) and whether the Service declares it `appProtocol:
/// kubernetes.io/h2c`.
fn slice_port(
    slice: &EndpointSlice,
    wanted: Option<&IntOrString>,
) -> Result<Option<(u16, bool)>, PortError> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match wanted {
        None => match ports {
            [] => return Ok(None),
            [only] => Some(only),
            _ => {
                return Err(PortError::Ambiguous {
                    count: ports.len(),
                    names: ports
                        .iter()
                        .filter_map(|p| p.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        },
        Some(IntOrString::Int(n)) => ports.iter().find(|p| p.port == Some(*n)),
        Some(IntOrString::String(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str())),
    };
    Ok(port.and_then(|p| {
        let number = p
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)?;
        Some((number, p.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL)))
    }))
}

/// The endpoints of `slices` on the wanted port; whether any slice had the
/// port; whether the port is declared h2c.
fn endpoints_of(
    slices: &[&EndpointSlice],
    wanted: Option<&IntOrString>,
) -> Result<(Vec<Found>, bool, bool), PortError> {
    let mut by_addr: BTreeMap<SocketAddr, Found> = BTreeMap::new();
    let mut any_port = false;
    let mut h2c = false;
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some((port, port_h2c)) = slice_port(slice, wanted)? else {
            continue;
        };
        any_port = true;
        h2c |= port_h2c;
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let cond = ep.conditions.clone().unwrap_or_default();
            // The API: an unset `ready` means ready; `serving` defaults to
            // `ready`; `terminating` to false.
            let ready = cond.ready.unwrap_or(true);
            let found = Found {
                addr: SocketAddr::new(ip, port),
                ready,
                serving: cond.serving.unwrap_or(ready),
                terminating: cond.terminating.unwrap_or(false),
                pod: ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| r.name.clone()),
            };
            // The same address in two slices (during a slice split): keep
            // the more ready view.
            match by_addr.get(&found.addr) {
                Some(old) if (old.ready, old.serving) >= (found.ready, found.serving) => {}
                _ => {
                    by_addr.insert(found.addr, found);
                }
            }
        }
    }
    Ok((by_addr.into_values().collect(), any_port, h2c))
}

/// Resolves a Service port against the Service's slices (`slices` are
/// exactly the slices labelled with the Service).
pub fn resolve(
    slices: &[&EndpointSlice],
    port: Option<&IntOrString>,
) -> Result<ServiceEndpoints, PortError> {
    let (found, any_port, h2c) = endpoints_of(slices, port)?;
    if !slices.is_empty() && !any_port {
        return Err(PortError::Unknown);
    }
    let ready = found.iter().filter(|f| f.ready).count();
    let (routed, availability): (Vec<&Found>, Availability) = if slices.is_empty() {
        (Vec::new(), Availability::ServiceNotFound)
    } else if ready > 0 {
        (
            found.iter().filter(|f| f.ready).collect(),
            Availability::EndpointsAvailable,
        )
    } else {
        let fallback: Vec<&Found> = found
            .iter()
            .filter(|f| f.serving && f.terminating)
            .collect();
        if fallback.is_empty() {
            (Vec::new(), Availability::NoReadyEndpoints)
        } else {
            (fallback, Availability::ServingTerminatingOnly)
        }
    };
    let routed = routed
        .iter()
        .map(|f| {
            let spec = EndpointSpec::new(f.addr);
            match &f.pod {
                Some(pod) => spec.named(pod.as_str()),
                None => spec,
            }
        })
        .collect();
    Ok(ServiceEndpoints {
        found,
        routed,
        ready,
        availability,
        h2c,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    pub(crate) fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
        pod: &str,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn slice(
        name: &str,
        svc: &str,
        ports: &[(&str, i32)],
        eps: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(SERVICE_LABEL.to_owned(), svc.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some((*n).into()),
                        port: Some(*p),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_service_without_slices_is_not_found_and_a_missing_port_is_unknown() {
        let r = resolve(&[], None).unwrap();
        assert_eq!(r.availability, Availability::ServiceNotFound);
        assert!(r.routed.is_empty());
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let port = IntOrString::String("grpc".into());
        assert_eq!(resolve(&[&s], Some(&port)), Err(PortError::Unknown));
        let two = slice("b", "s", &[("http", 80), ("admin", 9)], vec![]);
        assert_eq!(
            resolve(&[&two], None),
            Err(PortError::Ambiguous {
                count: 2,
                names: "http, admin".into()
            })
        );
    }

    #[test]
    fn ready_endpoints_are_routed_in_address_order_with_their_pods() {
        let s = slice(
            "a",
            "s",
            &[("http", 80)],
            vec![
                ep("10.0.0.2", Some(true), None, None, "two"),
                ep("10.0.0.1", None, None, None, "one"),
                ep("10.0.0.3", Some(false), Some(false), None, "three"),
            ],
        );
        let r = resolve(&[&s], Some(&IntOrString::Int(80))).unwrap();
        assert_eq!(r.availability, Availability::EndpointsAvailable);
        assert_eq!((r.ready, r.found.len()), (2, 3));
        let routed: Vec<String> = r
            .routed
            .iter()
            .map(|e| format!("{} {}", e.addr, e.name.as_deref().unwrap()))
            .collect();
        assert_eq!(routed, ["10.0.0.1:80 one", "10.0.0.2:80 two"]);
    }

    fn yaml_service(text: &str) -> Service {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn a_service_port_is_found_by_number_or_name_and_resolved_under_its_name() {
        let svc = yaml_service(
            "metadata: {name: s}\nspec: {ports: [{name: http, port: 80}, {name: grpc, port: 81, appProtocol: kubernetes.io/h2c}]}\n",
        );
        let by_number = service_port(&svc, &IntOrString::Int(81)).unwrap();
        let by_name = service_port(&svc, &IntOrString::String("grpc".into())).unwrap();
        assert_eq!(by_number, by_name);
        assert!(service_port(&svc, &IntOrString::Int(82)).is_none());
        assert!(service_port(&svc, &IntOrString::String("admin".into())).is_none());
        // The slices carry the target ports under the Service ports' names.
        let s = slice(
            "a",
            "s",
            &[("http", 8080), ("grpc", 9090)],
            vec![ep("10.0.0.1", None, None, None, "p")],
        );
        let grpc = resolve_service_port(&[&s], by_name).unwrap();
        assert_eq!(grpc.routed[0].addr.port(), 9090);
        assert!(grpc.h2c, "the Service port's appProtocol");
        let http = service_port(&svc, &IntOrString::Int(80)).unwrap();
        let http = resolve_service_port(&[&s], http).unwrap();
        assert_eq!(http.routed[0].addr.port(), 8080);
        assert!(!http.h2c);
        let mut keys = BTreeMap::new();
        keys.insert("ns/a".to_owned(), s.clone());
        let by_service = slices_by_service(&keys);
        assert_eq!(by_service.keys().collect::<Vec<_>>(), ["ns/s"]);
    }

    #[test]
    fn service_addresses_prefer_load_balancer_then_external_then_cluster_ips() {
        let lb = yaml_service(
            "metadata: {name: lb}\nspec: {clusterIP: 10.96.0.7, externalIPs: [192.0.2.1]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.5}, {hostname: lb.example}]}}\n",
        );
        assert_eq!(service_addresses(&lb), ["203.0.113.5", "lb.example"]);
        let external = yaml_service(
            "metadata: {name: lb}\nspec: {clusterIP: 10.96.0.7, externalIPs: [192.0.2.1]}\n",
        );
        assert_eq!(service_addresses(&external), ["192.0.2.1"]);
        let cluster = yaml_service(
            "metadata: {name: lb}\nspec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.7, fd00::7]}\n",
        );
        assert_eq!(service_addresses(&cluster), ["10.96.0.7", "fd00::7"]);
        let headless =
            yaml_service("metadata: {name: lb}\nspec: {clusterIP: None, clusterIPs: [None]}\n");
        assert!(service_addresses(&headless).is_empty());
    }
}
