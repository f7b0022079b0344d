//! HTTPRoute and GRPCRoute: which listeners a route attaches to (parent
//! references, allowed namespaces and kinds, hostname intersection), its
//! rules in the route model with backend references still by Service, and
//! its status per parent.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::super::conditions::{condition, truth};
use super::super::endpoints::ServiceRef;
use super::super::gateway_api::{
    BackendRef, CONTROLLER_NAME, GROUP, GrpcRouteMatch, GrpcRouteRule, HeaderFilter, HeaderMatch,
    HttpRouteFilter, HttpRouteMatch, HttpRouteRule, ParentReference, ReferenceGrant,
    RouteParentStatus, RouteStatus,
};
use super::RouteKindName;
use super::grants::{Side, permitted, selects};
use super::listeners::{AllowedNamespaces, Failed, GatewayPlan};
use crate::discovery::route::{
    self, HeaderEdits, HostMatch, Listeners, Match, PathMatch, PathRewrite, Pattern, QueryMatch,
    Redirect, RedirectStatus, Rewrite, RulePolicy, Scope, ValueMatch,
};

/// A route of either kind, as attachment reads it.
#[derive(Debug, Clone, Copy)]
pub struct RouteView<'a> {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKindName,
    /// Namespace.
    pub namespace: &'a str,
    /// `spec.parentRefs`.
    pub parent_refs: &'a [ParentReference],
    /// `spec.hostnames`.
    pub hostnames: &'a [String],
}

/// What became of one parent reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Parent {
    /// Not a Gateway this LB programs: no status entry from this LB.
    NotOurs,
    /// `Accepted=False` with this reason.
    Rejected(Failed),
    /// Attached to these listeners: (Gateway index, listener index,
    /// hostnames the route serves there; empty: any).
    Attached(Vec<(usize, usize, Vec<HostMatch>)>),
}

/// The parent reference's Gateway key (`namespace/name`) if it names a Gateway.
fn gateway_key(p: &ParentReference, route_ns: &str) -> Option<String> {
    let group = p.group.as_deref().unwrap_or(GROUP);
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    (group == GROUP && kind == "Gateway")
        .then(|| format!("{}/{}", p.namespace.as_deref().unwrap_or(route_ns), p.name))
}

fn namespace_admitted(
    allowed: &AllowedNamespaces,
    gateway_ns: &str,
    route_ns: &str,
    namespaces: &BTreeMap<String, Namespace>,
) -> bool {
    match allowed {
        AllowedNamespaces::Same => gateway_ns == route_ns,
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(s) => namespaces
            .get(route_ns)
            .is_some_and(|n| selects(s, n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))),
    }
}

/// Attaches `route` to the programmed Gateways in `gateways` (by key).
/// `hostnames` are the route's hostnames, parsed.
pub fn attach(
    route: RouteView<'_>,
    hostnames: &[HostMatch],
    gateways: &[GatewayPlan],
    by_key: &BTreeMap<String, usize>,
    namespaces: &BTreeMap<String, Namespace>,
) -> Vec<(ParentReference, Parent)> {
    route
        .parent_refs
        .iter()
        .map(|p| {
            let Some(gi) = gateway_key(p, route.namespace).and_then(|k| by_key.get(&k).copied())
            else {
                return (p.clone(), Parent::NotOurs);
            };
            let gw = &gateways[gi];
            let named: Vec<usize> = gw
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    p.section_name.as_deref().is_none_or(|s| s == l.name)
                        && p.port.is_none_or(|port| port == l.port)
                })
                .map(|(i, _)| i)
                .collect();
            if named.is_empty() {
                return (
                    p.clone(),
                    Parent::Rejected((
                        "NoMatchingParent",
                        format!(
                            "Gateway {} has no listener{}{}",
                            gw.key,
                            p.section_name
                                .as_deref()
                                .map(|s| format!(" named {s}"))
                                .unwrap_or_default(),
                            p.port.map(|n| format!(" on port {n}")).unwrap_or_default()
                        ),
                    )),
                );
            }
            let admitted: Vec<usize> = named
                .iter()
                .copied()
                .filter(|&i| {
                    let l = &gw.listeners[i];
                    l.attachable()
                        && l.kinds.contains(&route.kind)
                        && namespace_admitted(
                            &l.namespaces,
                            &gw.namespace,
                            route.namespace,
                            namespaces,
                        )
                })
                .collect();
            if admitted.is_empty() {
                return (
                    p.clone(),
                    Parent::Rejected((
                        "NotAllowedByListeners",
                        format!(
                            "no listener of Gateway {} admits {}s from namespace {}",
                            gw.key,
                            route.kind.as_str(),
                            route.namespace
                        ),
                    )),
                );
            }
            let attached: Vec<(usize, usize, Vec<HostMatch>)> = admitted
                .iter()
                .filter_map(|&i| {
                    route::intersect_hostnames(gw.listeners[i].hostname.as_ref(), hostnames)
                        .map(|h| (gi, i, h))
                })
                .collect();
            if attached.is_empty() {
                return (
                    p.clone(),
                    Parent::Rejected((
                        "NoMatchingListenerHostname",
                        format!(
                            "no hostname of the route matches a listener of Gateway {}",
                            gw.key
                        ),
                    )),
                );
            }
            (p.clone(), Parent::Attached(attached))
        })
        .collect()
}

/// The scopes a route serves in: one per attached, programmed listener.
pub fn scopes(parents: &[(ParentReference, Parent)], gateways: &[GatewayPlan]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for (_, p) in parents {
        let Parent::Attached(list) = p else { continue };
        for (gi, li, hostnames) in list {
            let l = &gateways[*gi].listeners[*li];
            if !l.programmed() || gateways[*gi].invalid.is_some() {
                continue;
            }
            let scope = Scope {
                listeners: Listeners::only(l.id),
                hostnames: hostnames.clone(),
            };
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
    }
    out
}

/// A share of a rule's traffic before endpoint resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareIntent {
    /// Weight.
    pub weight: u32,
    /// The Service port, or why the reference is invalid (its share
    /// answers 500): (reason, message).
    pub target: Result<ServiceRef, Failed>,
}

/// What a rule does, before endpoint resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionIntent {
    /// Forward to weighted Services.
    Forward(Vec<ShareIntent>),
    /// Redirect.
    Redirect(Redirect),
}

/// A rule of the route model with its backends still by reference.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleIntent {
    /// The rule's name.
    pub name: Option<String>,
    /// Matches (OR; empty: every request).
    pub matches: Vec<Match>,
    /// Header edits and rewrites.
    pub filters: route::Filters,
    /// What it does.
    pub action: ActionIntent,
    /// Timeouts.
    pub policy: RulePolicy,
}

/// A route value roundhouse does not support (`Accepted=False`,
/// `UnsupportedValue`).
pub type Unsupported = String;

fn header_name(name: &str) -> Result<HeaderName, Unsupported> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))
}

fn value_match(type_: Option<&str>, value: &str, what: &str) -> Result<ValueMatch, Unsupported> {
    match type_.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(value.into())),
        "RegularExpression" => Pattern::new(value)
            .map(ValueMatch::Regex)
            .map_err(|e| format!("{what} regular expression {value:?}: {e}")),
        other => Err(format!("{what} match type {other} is not supported")),
    }
}

fn header_matches(headers: &[HeaderMatch]) -> Result<Vec<route::HeaderMatch>, Unsupported> {
    headers
        .iter()
        .map(|h| {
            Ok(route::HeaderMatch {
                name: header_name(&h.name)?,
                value: value_match(h.type_.as_deref(), &h.value, "header")?,
            })
        })
        .collect()
}

fn http_match(m: &HttpRouteMatch) -> Result<Match, Unsupported> {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.as_deref().unwrap_or("/");
    let path = match path.type_.as_deref().unwrap_or("PathPrefix") {
        "Exact" => PathMatch::Exact(value.into()),
        "PathPrefix" => PathMatch::Prefix(value.into()),
        "RegularExpression" => PathMatch::Regex(
            Pattern::new(value).map_err(|e| format!("path regular expression {value:?}: {e}"))?,
        ),
        other => return Err(format!("path match type {other} is not supported")),
    };
    let method = m
        .method
        .as_deref()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid method {s:?}")))
        .transpose()?;
    let query = m
        .query_params
        .iter()
        .map(|q| {
            Ok(QueryMatch {
                name: q.name.as_str().into(),
                value: value_match(q.type_.as_deref(), &q.value, "query parameter")?,
            })
        })
        .collect::<Result<_, Unsupported>>()?;
    Ok(Match {
        path,
        method,
        headers: header_matches(&m.headers)?,
        query,
    })
}

fn grpc_match(m: &GrpcRouteMatch) -> Result<Match, Unsupported> {
    let path = match &m.method {
        None => PathMatch::any(),
        Some(mm) => {
            let (svc, method) = (mm.service.as_deref(), mm.method.as_deref());
            match mm.type_.as_deref().unwrap_or("Exact") {
                "Exact" => match (svc, method) {
                    (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}").into()),
                    (Some(s), None) => PathMatch::Prefix(format!("/{s}").into()),
                    (None, Some(m)) => PathMatch::Regex(
                        Pattern::new(&format!("/[^/]+/{}", regex_escape(m)))
                            .map_err(|e| e.to_string())?,
                    ),
                    (None, None) => PathMatch::any(),
                },
                "RegularExpression" => {
                    let s = svc.unwrap_or("[^/]+");
                    let m = method.unwrap_or("[^/]+");
                    PathMatch::Regex(
                        Pattern::new(&format!("/(?:{s})/(?:{m})"))
                            .map_err(|e| format!("gRPC method regular expression: {e}"))?,
                    )
                }
                other => return Err(format!("gRPC method match type {other} is not supported")),
            }
        }
    };
    Ok(Match {
        path,
        method: None,
        headers: header_matches(&m.headers)?,
        query: Vec::new(),
    })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn header_edits(f: &HeaderFilter) -> Result<HeaderEdits, Unsupported> {
    let pair = |h: &super::super::gateway_api::HttpHeader| {
        Ok((
            header_name(&h.name)?,
            HeaderValue::from_str(&h.value)
                .map_err(|_| format!("invalid value for header {}", h.name))?,
        ))
    };
    Ok(HeaderEdits {
        set: f.set.iter().map(pair).collect::<Result<_, Unsupported>>()?,
        add: f.add.iter().map(pair).collect::<Result<_, Unsupported>>()?,
        remove: f
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(p: &super::super::gateway_api::PathModifier) -> Result<PathRewrite, Unsupported> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Ok(PathRewrite::ReplaceFull(
            p.replace_full_path.as_deref().unwrap_or("/").into(),
        )),
        "ReplacePrefixMatch" => Ok(PathRewrite::ReplacePrefix(
            p.replace_prefix_match.as_deref().unwrap_or("/").into(),
        )),
        other => Err(format!("path modifier {other} is not supported")),
    }
}

/// Applies `filters` to a rule; returns its redirect, if one.
fn apply_filters(
    filters: &[HttpRouteFilter],
    out: &mut route::Filters,
    grpc: bool,
) -> Result<Option<Redirect>, Unsupported> {
    let mut redirect = None;
    for f in filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                out.request_headers = header_edits(
                    f.request_header_modifier
                        .as_ref()
                        .ok_or("RequestHeaderModifier without requestHeaderModifier")?,
                )?;
            }
            "ResponseHeaderModifier" => {
                out.response_headers = header_edits(
                    f.response_header_modifier
                        .as_ref()
                        .ok_or("ResponseHeaderModifier without responseHeaderModifier")?,
                )?;
            }
            "RequestRedirect" if !grpc => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or("RequestRedirect without requestRedirect")?;
                let status = match r.status_code {
                    None => RedirectStatus::default(),
                    Some(code) => u16::try_from(code)
                        .ok()
                        .and_then(RedirectStatus::new)
                        .ok_or_else(|| format!("redirect status {code} is not supported"))?,
                };
                redirect = Some(Redirect {
                    scheme: r.scheme.as_deref().map(Into::into),
                    hostname: r.hostname.as_deref().map(Into::into),
                    path: r.path.as_ref().map(path_rewrite).transpose()?,
                    port: r
                        .port
                        .map(|p| u16::try_from(p).map_err(|_| format!("redirect port {p}")))
                        .transpose()?,
                    status,
                });
            }
            "URLRewrite" if !grpc => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or("URLRewrite without urlRewrite")?;
                out.rewrite = Some(Rewrite {
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(|h| {
                            HeaderValue::from_str(h)
                                .map_err(|_| format!("invalid rewrite hostname {h:?}"))
                        })
                        .transpose()?,
                    path: r.path.as_ref().map(path_rewrite).transpose()?,
                });
            }
            other => return Err(format!("filter {other} is not supported by roundhouse")),
        }
    }
    Ok(redirect)
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, combinations); `0s`
/// disables the timeout, which roundhouse reads as "the LB's default".
pub fn gateway_duration(s: &str) -> Result<Option<Duration>, Unsupported> {
    let bad = || format!("invalid duration {s:?}");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| bad())?;
    }
    Ok((!total.is_zero()).then_some(total))
}

/// Resolves one backend reference of a route in `route_ns` to a Service
/// port (existence is checked against EndpointSlices later).
pub fn backend_target(
    b: &BackendRef,
    kind: RouteKindName,
    route_ns: &str,
    grants: &BTreeMap<String, ReferenceGrant>,
) -> Result<ServiceRef, Failed> {
    let group = b.group.as_deref().unwrap_or("");
    let k = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || k != "Service" {
        return Err((
            "InvalidKind",
            format!(
                "backendRef {group}/{k} {}: only Services are supported",
                b.name
            ),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    if !permitted(
        grants.values(),
        Side {
            group: GROUP,
            kind: kind.as_str(),
            namespace: route_ns,
        },
        Side {
            group: "",
            kind: "Service",
            namespace: ns,
        },
        &b.name,
    ) {
        return Err((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in {ns} lets {}s of {route_ns} use Service {}",
                kind.as_str(),
                b.name
            ),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            "UnsupportedValue",
            format!("backendRef Service {ns}/{} needs a port", b.name),
        ));
    };
    Ok(ServiceRef {
        namespace: ns.to_owned(),
        name: b.name.clone(),
        port: Some(IntOrString::Int(port)),
    })
}

fn shares(
    refs: &[BackendRef],
    kind: RouteKindName,
    route_ns: &str,
    grants: &BTreeMap<String, ReferenceGrant>,
) -> Result<Vec<ShareIntent>, Unsupported> {
    refs.iter()
        .map(|b| {
            if !b.filters.is_empty() {
                return Err("filters on a backendRef are not supported".to_owned());
            }
            Ok(ShareIntent {
                weight: u32::try_from(b.weight.unwrap_or(1)).map_err(|_| "negative weight")?,
                target: backend_target(b, kind, route_ns, grants),
            })
        })
        .collect()
}

/// An HTTPRoute rule in the model (backends by reference).
pub fn http_rule(
    r: &HttpRouteRule,
    route_ns: &str,
    grants: &BTreeMap<String, ReferenceGrant>,
) -> Result<RuleIntent, Unsupported> {
    let matches = r.matches.iter().map(http_match).collect::<Result<_, _>>()?;
    let mut filters = route::Filters::default();
    let redirect = apply_filters(&r.filters, &mut filters, false)?;
    let timeouts = r.timeouts.clone().unwrap_or_default();
    let policy = RulePolicy {
        request_timeout: timeouts
            .request
            .as_deref()
            .map(gateway_duration)
            .transpose()?
            .flatten(),
        backend_request_timeout: timeouts
            .backend_request
            .as_deref()
            .map(gateway_duration)
            .transpose()?
            .flatten(),
        retries: None,
    };
    let action = match redirect {
        Some(r) => ActionIntent::Redirect(r),
        None => ActionIntent::Forward(shares(
            &r.backend_refs,
            RouteKindName::Http,
            route_ns,
            grants,
        )?),
    };
    Ok(RuleIntent {
        name: r.name.clone(),
        matches,
        filters,
        action,
        policy,
    })
}

/// A GRPCRoute rule in the model (backends by reference).
pub fn grpc_rule(
    r: &GrpcRouteRule,
    route_ns: &str,
    grants: &BTreeMap<String, ReferenceGrant>,
) -> Result<RuleIntent, Unsupported> {
    let matches = r.matches.iter().map(grpc_match).collect::<Result<_, _>>()?;
    let mut filters = route::Filters::default();
    apply_filters(&r.filters, &mut filters, true)?;
    Ok(RuleIntent {
        name: r.name.clone(),
        matches,
        filters,
        action: ActionIntent::Forward(shares(
            &r.backend_refs,
            RouteKindName::Grpc,
            route_ns,
            grants,
        )?),
        policy: RulePolicy::default(),
    })
}

/// The route's status entries for the parents this LB handles (in spec
/// order), given each parent's outcome, whether the rules are supported,
/// and the first unresolved backend reference (if any).
pub fn parent_statuses(
    parents: &[(ParentReference, Parent)],
    unsupported: Option<&str>,
    unresolved: Option<&Failed>,
    generation: Option<i64>,
    previous: Option<&RouteStatus>,
    now: &Time,
) -> Vec<RouteParentStatus> {
    parents
        .iter()
        .filter(|(_, p)| *p != Parent::NotOurs)
        .map(|(parent_ref, p)| {
            let prev: Vec<Condition> = previous
                .and_then(|s| {
                    s.parents.iter().find(|e| {
                        e.controller_name == CONTROLLER_NAME && e.parent_ref == *parent_ref
                    })
                })
                .map(|e| e.conditions.clone())
                .unwrap_or_default();
            let cond = |type_: &str, ok: bool, reason: &str, message: String| {
                condition(type_, truth(ok), reason, message, generation, &prev, now)
            };
            let accepted = match (p, unsupported) {
                (Parent::Rejected((r, m)), _) => cond("Accepted", false, r, m.clone()),
                (_, Some(m)) => cond("Accepted", false, "UnsupportedValue", m.to_owned()),
                _ => cond("Accepted", true, "Accepted", "attached".into()),
            };
            let resolved = match unresolved {
                Some((r, m)) => cond("ResolvedRefs", false, r, m.clone()),
                None => cond(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "all references resolved".into(),
                ),
            };
            RouteParentStatus {
                parent_ref: parent_ref.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![accepted, resolved],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations() {
        assert_eq!(gateway_duration("10s"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(
            gateway_duration("1h30m"),
            Ok(Some(Duration::from_secs(5400)))
        );
        assert_eq!(
            gateway_duration("500ms"),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            gateway_duration("0s"),
            Ok(None),
            "0s: no timeout of its own"
        );
        for bad in ["", "10", "s", "1d", "123456s", "1.5s", "-1s"] {
            assert!(gateway_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_methods_become_paths() {
        let m = |svc: Option<&str>, method: Option<&str>, t: Option<&str>| {
            grpc_match(&GrpcRouteMatch {
                method: Some(super::super::super::gateway_api::GrpcMethodMatch {
                    type_: t.map(Into::into),
                    service: svc.map(Into::into),
                    method: method.map(Into::into),
                }),
                headers: vec![],
            })
            .unwrap()
            .path
        };
        assert_eq!(
            m(Some("roundhouse.v1.Hosts"), Some("Get"), None),
            PathMatch::Exact("/roundhouse.v1.Hosts/Get".into())
        );
        assert_eq!(
            m(Some("roundhouse.v1.Hosts"), None, None),
            PathMatch::Prefix("/roundhouse.v1.Hosts".into())
        );
        let PathMatch::Regex(p) = m(None, Some("Get"), None) else {
            panic!("a regex")
        };
        assert!(p.is_match("/a.b.C/Get") && !p.is_match("/a/GetX") && !p.is_match("/a/b/Get"));
        let PathMatch::Regex(p) = m(Some("a\\.b\\..*"), None, Some("RegularExpression")) else {
            panic!("a regex")
        };
        assert!(p.is_match("/a.b.Svc/Any") && !p.is_match("/x.b.Svc/Any"));
    }

    #[test]
    fn unsupported_filters_and_matches_are_reported() {
        let rule: HttpRouteRule = serde_json::from_value(serde_json::json!({
            "filters": [{"type": "RequestMirror"}],
            "backendRefs": [{"name": "s", "port": 80}]
        }))
        .unwrap();
        let err = http_rule(&rule, "ns", &BTreeMap::new()).unwrap_err();
        assert!(err.contains("RequestMirror"), "{err}");
        let rule: HttpRouteRule = serde_json::from_value(serde_json::json!({
            "matches": [{"path": {"type": "Glob", "value": "/*"}}]
        }))
        .unwrap();
        assert!(
            http_rule(&rule, "ns", &BTreeMap::new())
                .unwrap_err()
                .contains("Glob")
        );
    }

    #[test]
    fn backend_references_are_checked() {
        let grants = BTreeMap::new();
        let b = |v: serde_json::Value| serde_json::from_value::<BackendRef>(v).unwrap();
        let ok = backend_target(
            &b(serde_json::json!({"name": "s", "port": 80})),
            RouteKindName::Http,
            "ns",
            &grants,
        )
        .unwrap();
        assert_eq!((ok.namespace.as_str(), ok.name.as_str()), ("ns", "s"));
        let kind = backend_target(
            &b(
                serde_json::json!({"group": "unknown.io", "kind": "Thing", "name": "s", "port": 80}),
            ),
            RouteKindName::Http,
            "ns",
            &grants,
        );
        assert_eq!(kind.unwrap_err().0, "InvalidKind");
        let cross = backend_target(
            &b(serde_json::json!({"name": "s", "namespace": "other", "port": 80})),
            RouteKindName::Http,
            "ns",
            &grants,
        );
        assert_eq!(cross.unwrap_err().0, "RefNotPermitted");
    }
}
