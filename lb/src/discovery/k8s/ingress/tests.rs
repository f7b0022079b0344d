//! The adapter end to end on plain objects: Ingresses (written as users
//! write them, in YAML), IngressClasses, Services, EndpointSlices and
//! Secrets in, routes, certificates, statuses and reports out.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::Event;

use super::routes::{self, shares};
use super::*;
use crate::discovery::k8s::endpoints::service_addresses;
use crate::discovery::k8s::endpoints::tests::{ep, slice};
use crate::discovery::route::{
    Action, HostMatch, ListenerId, Listeners, Match, PathMatch, PathRewrite, Redirect,
    RedirectStatus, Route, Rule, ValueMatch,
};
use crate::discovery::{CertPair, Protocol};

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap_or_else(|e| panic!("{e}\n{s}"))
}

fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    yaml(&format!(
        "metadata:\n  name: {name}\n  annotations:\n    ingressclass.kubernetes.io/is-default-class: \"{default}\"\nspec:\n  controller: {controller}\n"
    ))
}

/// An Ingress from YAML, created `second` seconds after a fixed instant.
fn ingress(second: i64, text: &str) -> Ingress {
    let mut i: Ingress = yaml(text);
    i.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + second).unwrap(),
    ));
    i.metadata.generation.get_or_insert(1);
    i
}

fn service(ns: &str, name: &str, ports: &[(&str, i32)]) -> Service {
    let ports: String = ports
        .iter()
        .map(|(n, p)| format!("  - name: {n}\n    port: {p}\n"))
        .collect();
    yaml(&format!(
        "metadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  ports:\n{ports}"
    ))
}

fn slice_in(ns: &str, name: &str, svc: &str, port: (&str, i32), ips: &[&str]) -> EndpointSlice {
    let mut s = slice(
        name,
        svc,
        &[port],
        ips.iter()
            .enumerate()
            .map(|(i, ip)| ep(ip, None, None, None, &format!("{svc}-{i}")))
            .collect(),
    );
    s.metadata.namespace = Some(ns.into());
    s
}

fn tls_secret(ns: &str, name: &str, hosts: &[&str]) -> Secret {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(cert.pem().into_bytes())),
                (
                    "tls.key".to_owned(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ]
            .into_iter()
            .collect(),
        ),
        ..Secret::default()
    }
}

/// A synced index over the objects: the class `roundhouse` (ours, default)
/// and `nginx`, Services `web/backend` (port 80 named http → 5000, two
/// endpoints) and `web/canary` (one endpoint), `web/grpc` (h2c port).
fn index(ingresses: Vec<Ingress>, secrets: Vec<Secret>) -> IngressIndex {
    let mut index = IngressIndex::default();
    let classes = vec![
        class("roundhouse", CONTROLLER, true),
        class("nginx", "k8s.io/ingress-nginx", false),
    ];
    let services = vec![
        service("web", "backend", &[("http", 80)]),
        service("web", "canary", &[("http", 80)]),
        service("web", "grpc", &[("grpc", 50051)]),
    ];
    let mut grpc = slice_in("web", "grpc-a", "grpc", ("grpc", 5001), &["10.0.2.1"]);
    grpc.ports.as_mut().unwrap()[0].app_protocol = Some("kubernetes.io/h2c".into());
    let slices = vec![
        slice_in(
            "web",
            "backend-a",
            "backend",
            ("http", 5000),
            &["10.0.0.1", "10.0.0.2"],
        ),
        slice_in("web", "canary-a", "canary", ("http", 5000), &["10.0.1.1"]),
        grpc,
    ];
    fn load<K>(apply: &mut dyn FnMut(Event<K>) -> bool, items: Vec<K>) {
        apply(Event::Init);
        for i in items {
            apply(Event::InitApply(i));
        }
        apply(Event::InitDone);
    }
    load(&mut |e| index.apply_class(e), classes);
    load(&mut |e| index.apply_service(e), services);
    load(&mut |e| index.apply_slice(e), slices);
    load(&mut |e| index.apply_secret(e), secrets);
    load(&mut |e| index.apply_ingress(e), ingresses);
    assert!(index.synced());
    index
}

fn compute(index: &IngressIndex) -> Computed {
    index.compute(&IngressConfig::default(), &[])
}

/// The routes of one Ingress (without the `404` of its hosts' unknown
/// paths: [`closed_hosts`]).
fn routes_of<'c>(c: &'c Computed, name: &str) -> Vec<&'c Route> {
    c.routing
        .routes
        .iter()
        .filter(|r| &*r.origin.name == name && closed_host(r).is_none())
        .map(|r| &**r)
        .collect()
}

/// The host of a route that answers `404` to its unknown paths.
fn closed_host(r: &Route) -> Option<String> {
    (r.rules.len() == 1 && r.rules[0].name.as_deref() == Some(routes::NO_PATH))
        .then(|| r.scopes[0].hostnames[0].to_string())
}

/// The hosts closed by `404` routes, sorted.
fn closed_hosts(c: &Computed) -> Vec<String> {
    let mut hosts: Vec<String> = c
        .routing
        .routes
        .iter()
        .filter_map(|r| closed_host(r))
        .collect();
    hosts.sort();
    hosts
}

fn reasons(c: &Computed) -> Vec<(String, &'static str)> {
    c.reports
        .iter()
        .map(|r| (r.ingress.clone(), r.reason))
        .collect()
}

fn backend_eps(rule: &Rule) -> Vec<String> {
    rule.backends()
        .flat_map(|b| b.endpoints.iter().map(|e| e.addr.to_string()))
        .collect()
}

const FANOUT: &str = r#"
metadata: {name: fanout, namespace: web}
spec:
  ingressClassName: roundhouse
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}
      - {path: /cart, pathType: Exact, backend: {service: {name: canary, port: {name: http}}}}
      - {path: /api, pathType: ImplementationSpecific, backend: {service: {name: backend, port: {name: http}}}}
  - host: "*.example.com"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: canary, port: {number: 80}}}}
"#;

#[test]
fn host_and_path_fan_out() {
    let c = compute(&index(vec![ingress(1, FANOUT)], vec![]));
    assert!(c.reports.is_empty(), "{:?}", c.reports);
    assert_eq!(c.ours.iter().collect::<Vec<_>>(), ["web/fanout"]);
    let routes = routes_of(&c, "fanout");
    assert_eq!(routes.len(), 2, "one route per host");
    let shop = routes[0];
    assert_eq!(shop.origin.kind, crate::discovery::RouteKind::Ingress);
    assert_eq!(shop.origin.to_string(), "Ingress web/fanout");
    assert_eq!(shop.order.created, Some(1_767_225_601));
    assert_eq!(shop.scopes.len(), 1);
    assert_eq!(
        shop.scopes[0].listeners,
        Listeners::ALL,
        "no TLS: every listener"
    );
    assert_eq!(
        shop.scopes[0].hostnames,
        [HostMatch::parse("shop.example.com").unwrap()]
    );
    let matches: Vec<&Match> = shop.rules.iter().map(|r| &r.matches[0]).collect();
    assert_eq!(
        matches,
        [
            &Match::prefix("/"),
            &Match::exact("/cart"),
            &Match::prefix("/api")
        ],
        "ImplementationSpecific is a prefix"
    );
    assert_eq!(shares(&shop.rules[0]), [("web/backend:80".to_owned(), 1)]);
    assert_eq!(
        backend_eps(&shop.rules[0]),
        ["10.0.0.1:5000", "10.0.0.2:5000"]
    );
    assert_eq!(shares(&shop.rules[1]), [("web/canary:80".to_owned(), 1)]);
    assert_eq!(
        shares(&shop.rules[2]),
        [("web/backend:80".to_owned(), 1)],
        "by port name or number: the same backend"
    );
    assert!(std::sync::Arc::ptr_eq(
        shop.rules[0].backends().next().unwrap(),
        shop.rules[2].backends().next().unwrap()
    ));
    let wild = routes[1];
    assert_eq!(
        wild.scopes[0].hostnames,
        [HostMatch::Wildcard("example.com".into())]
    );
    assert!(c.statuses.is_empty(), "no address known: no status");
    assert!(c.routing.upstreams.is_empty());
    // Both hosts are closed: an unknown path is a 404 of the host itself,
    // ranked below all its paths, on every listener.
    assert_eq!(closed_hosts(&c), ["*.example.com", "shop.example.com"]);
    let closed = c
        .routing
        .routes
        .iter()
        .find(|r| closed_host(r).as_deref() == Some("shop.example.com"))
        .unwrap();
    assert_eq!(closed.origin.to_string(), "Ingress web/fanout");
    assert_eq!(closed.order.created, None);
    assert_eq!(closed.scopes[0].listeners, Listeners::ALL);
    assert_eq!(closed.rules[0].matches, [Match::prefix("/")]);
    assert!(matches!(
        &closed.rules[0].action,
        Action::Respond(f) if f.status == http::StatusCode::NOT_FOUND
    ));
}

#[test]
fn only_our_classes_and_the_default_class() {
    let other = FANOUT
        .replace("name: fanout", "name: theirs")
        .replace("roundhouse", "nginx");
    let legacy = r#"
metadata:
  name: legacy
  namespace: web
  annotations: {kubernetes.io/ingress.class: roundhouse}
spec:
  rules:
  - host: legacy.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;
    let classless = legacy
        .replace("name: legacy", "name: classless")
        .replace(
            "  annotations: {kubernetes.io/ingress.class: roundhouse}\n",
            "",
        )
        .replace("legacy.example", "classless.example");
    let legacy_other = legacy
        .replace("name: legacy", "name: legacy-nginx")
        .replace("ingress.class: roundhouse", "ingress.class: nginx");
    let c = compute(&index(
        vec![
            ingress(1, &other),
            ingress(2, legacy),
            ingress(3, &classless),
            ingress(4, &legacy_other),
        ],
        vec![],
    ));
    assert_eq!(
        c.ours.iter().collect::<Vec<_>>(),
        ["web/classless", "web/legacy"],
        "ingressClassName nginx and the legacy annotation nginx are not ours"
    );
}

#[test]
fn default_backends_catch_what_no_path_matches() {
    let with_rules = r#"
metadata: {name: with-rules, namespace: web}
spec:
  ingressClassName: roundhouse
  defaultBackend: {service: {name: canary, port: {number: 80}}}
  rules:
  - host: a.example
    http: {paths: [{path: /api, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;
    let no_rules = r#"
metadata: {name: catch-all, namespace: web}
spec:
  ingressClassName: roundhouse
  defaultBackend: {service: {name: backend, port: {number: 80}}}
"#;
    let c = compute(&index(
        vec![ingress(1, with_rules), ingress(2, no_rules)],
        vec![],
    ));
    assert!(c.reports.is_empty(), "{:?}", c.reports);
    let r = routes_of(&c, "with-rules");
    assert_eq!(r.len(), 2);
    let default = r.iter().find(|r| r.order.created.is_none()).unwrap();
    assert_eq!(
        default.scopes[0].hostnames,
        [HostMatch::parse("a.example").unwrap()]
    );
    assert_eq!(default.rules[0].matches, [Match::prefix("/")]);
    assert_eq!(shares(&default.rules[0]), [("web/canary:80".to_owned(), 1)]);
    let all = routes_of(&c, "catch-all");
    assert_eq!(all.len(), 1);
    assert!(all[0].scopes[0].hostnames.is_empty(), "any host");
    assert_eq!(all[0].order.created, None, "ranks below explicit paths");
    assert!(
        closed_hosts(&c).is_empty(),
        "a host with a defaultBackend needs no 404 of its own"
    );
}

#[test]
fn conflicts_go_to_the_oldest_and_are_reported() {
    let mk = |name: &str, path: &str, kind: &str, svc: &str| {
        format!(
            "metadata: {{name: {name}, namespace: web}}\nspec:\n  ingressClassName: roundhouse\n  rules:\n  - host: a.example\n    http: {{paths: [{{path: {path}, pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}\n"
        )
    };
    let c = compute(&index(
        vec![
            ingress(5, &mk("young", "/api/", "Prefix", "canary")),
            ingress(1, &mk("old", "/api", "Prefix", "backend")),
            ingress(1, &mk("same-age", "/api", "Prefix", "canary")),
            ingress(6, &mk("exact", "/api", "Exact", "canary")),
        ],
        vec![],
    ));
    assert_eq!(c.conflicts, 2);
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        [
            ("web/same-age".to_owned(), "Conflict"),
            ("web/young".to_owned(), "Conflict")
        ],
        "/api and /api/ are one prefix; Exact /api is another claim"
    );
    let msg = &c
        .reports
        .iter()
        .find(|r| r.ingress == "web/young")
        .unwrap()
        .message;
    assert!(
        msg.contains("Ingress web/old") && msg.contains("Prefix path /api"),
        "{msg}"
    );
    assert!(routes_of(&c, "young").is_empty() && routes_of(&c, "same-age").is_empty());
    assert_eq!(routes_of(&c, "old").len(), 1);
    assert_eq!(routes_of(&c, "exact").len(), 1);
}

const TLS: &str = r#"
metadata: {name: secure, namespace: web}
spec:
  ingressClassName: roundhouse
  tls:
  - hosts: [secure.example]
    secretName: secure-tls
  rules:
  - host: secure.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;

#[test]
fn tls_hosts_redirect_plain_http_and_serve_their_secret() {
    let plain_too = r#"
metadata: {name: same-host, namespace: web}
spec:
  ingressClassName: roundhouse
  rules:
  - host: secure.example
    http: {paths: [{path: /other, pathType: Prefix, backend: {service: {name: canary, port: {number: 80}}}}]}
"#;
    let c = compute(&index(
        vec![ingress(1, TLS), ingress(2, plain_too)],
        vec![tls_secret("web", "secure-tls", &["secure.example"])],
    ));
    assert!(c.reports.is_empty(), "{:?}", c.reports);
    assert_eq!(c.certs.len(), 1);
    assert_eq!(c.certs[0].name, "secret/web/secure-tls");
    for name in ["secure", "same-host"] {
        let r = routes_of(&c, name);
        assert_eq!(r.len(), 2, "{name}: a redirect route and a forward route");
        let plain = r
            .iter()
            .find(|r| r.scopes[0].listeners == Listeners::only(ListenerId::PLAIN))
            .unwrap();
        let tls = r
            .iter()
            .find(|r| r.scopes[0].listeners == Listeners::only(ListenerId::TLS))
            .unwrap();
        let Action::Redirect(redirect) = &plain.rules[0].action else {
            panic!("{:?}", plain.rules[0].action)
        };
        assert_eq!(
            redirect,
            &Redirect {
                scheme: Some("https".into()),
                status: RedirectStatus::PERMANENT_REDIRECT,
                ..Redirect::default()
            }
        );
        assert_eq!(plain.rules[0].matches, tls.rules[0].matches);
        assert!(matches!(tls.rules[0].action, Action::Forward(_)));
    }
    // ssl-redirect "false": every listener forwards.
    let off = TLS.replace(
        "metadata: {name: secure, namespace: web}",
        "metadata: {name: secure, namespace: web, annotations: {nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}}",
    );
    let c = compute(&index(vec![ingress(1, &off)], vec![]));
    let r = routes_of(&c, "secure");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].scopes[0].listeners, Listeners::ALL);
    assert_eq!(
        reasons(&c),
        [("web/secure".to_owned(), "InvalidTLSSecret")],
        "the Secret is missing"
    );
    // force-ssl-redirect without TLS, to a non-default HTTPS port.
    let forced = FANOUT.replace(
        "metadata: {name: fanout, namespace: web}",
        "metadata: {name: fanout, namespace: web, annotations: {nginx.ingress.kubernetes.io/force-ssl-redirect: \"true\"}}",
    );
    let config = IngressConfig {
        https_port: 8443,
        ..IngressConfig::default()
    };
    let c = index(vec![ingress(1, &forced)], vec![]).compute(&config, &[]);
    let plain = routes_of(&c, "fanout")
        .into_iter()
        .find(|r| r.scopes[0].listeners == Listeners::only(ListenerId::PLAIN))
        .unwrap();
    let Action::Redirect(redirect) = &plain.rules[0].action else {
        panic!()
    };
    assert_eq!(redirect.port, Some(8443));
}

#[test]
fn unusable_tls_secrets_are_left_out_and_reported() {
    let mut broken = tls_secret("web", "secure-tls", &["secure.example"]);
    broken
        .data
        .as_mut()
        .unwrap()
        .insert("tls.key".into(), ByteString(b"nope".to_vec()));
    let other = TLS
        .replace("name: secure,", "name: other,")
        .replace("secure-tls", "good-tls")
        .replace("secure.example", "other.example");
    let c = compute(&index(
        vec![ingress(1, TLS), ingress(2, &other)],
        vec![broken, tls_secret("web", "good-tls", &["other.example"])],
    ));
    let names: Vec<&str> = c.certs.iter().map(|p: &CertPair| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["secret/web/good-tls"],
        "one bad Secret does not hold back the others"
    );
    assert_eq!(reasons(&c), [("web/secure".to_owned(), "InvalidTLSSecret")]);
    assert!(
        c.reports[0].message.contains("tls.key"),
        "{}",
        c.reports[0].message
    );
}

const MAIN: &str = r#"
metadata: {name: main, namespace: web}
spec:
  ingressClassName: roundhouse
  rules:
  - host: app.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;

fn canary_ingress(name: &str, annotations: &str, path: &str) -> String {
    format!(
        r#"
metadata:
  name: {name}
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/canary: "true"
{annotations}
spec:
  ingressClassName: roundhouse
  rules:
  - host: app.example
    http: {{paths: [{{path: {path}, pathType: Prefix, backend: {{service: {{name: canary, port: {{number: 80}}}}}}}}]}}
"#
    )
}

#[test]
fn canary_weight_is_an_exact_share_and_headers_select_it() {
    let canary = canary_ingress(
        "canary",
        "    nginx.ingress.kubernetes.io/canary-weight: \"20\"\n    nginx.ingress.kubernetes.io/canary-by-header: X-Canary\n    nginx.ingress.kubernetes.io/canary-by-cookie: beta",
        "/",
    );
    let c = compute(&index(vec![ingress(1, MAIN), ingress(2, &canary)], vec![]));
    assert!(c.reports.is_empty(), "{:?}", c.reports);
    let main = routes_of(&c, "main");
    assert_eq!(main.len(), 1);
    assert_eq!(
        shares(&main[0].rules[0]),
        [
            ("web/backend:80".to_owned(), 80),
            ("web/canary:80".to_owned(), 20)
        ]
    );
    let canary = routes_of(&c, "canary");
    assert_eq!(canary.len(), 1);
    assert_eq!(canary[0].scopes, main[0].scopes);
    type Seen = (String, String, Vec<(String, u32)>);
    let rules: Vec<Seen> = canary[0]
        .rules
        .iter()
        .map(|r| {
            let h = &r.matches[0].headers[0];
            let v = match &h.value {
                ValueMatch::Exact(v) => v.to_string(),
                ValueMatch::Regex(p) => p.as_str().to_owned(),
            };
            (h.name.to_string(), v, shares(r))
        })
        .collect();
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules[0],
        (
            "x-canary".into(),
            "always".into(),
            vec![("web/canary:80".into(), 1)]
        )
    );
    assert_eq!(
        rules[1],
        (
            "x-canary".into(),
            "never".into(),
            vec![("web/backend:80".into(), 1)]
        )
    );
    assert_eq!(rules[2].0, "cookie");
    assert_eq!(rules[2].2, [("web/canary:80".to_owned(), 1)]);
    let ValueMatch::Regex(cookie) = &canary[0].rules[2].matches[0].headers[0].value else {
        panic!()
    };
    for (value, want) in [
        ("beta=always", true),
        ("a=1; beta=always", true),
        ("beta=always; a=1", true),
        ("notbeta=always", false),
        ("beta=alwaysx", false),
        ("beta=never", false),
    ] {
        assert_eq!(cookie.is_match(value), want, "{value}");
    }
    assert!(
        canary[0].rules[0].matches[0].specificity() > main[0].rules[0].matches[0].specificity(),
        "a header rule outranks the weighted rule of the same path"
    );
}

#[test]
fn canaries_need_a_main_path_and_one_per_path() {
    let first = canary_ingress(
        "first",
        "    nginx.ingress.kubernetes.io/canary-weight: \"50\"",
        "/",
    );
    let second = canary_ingress(
        "second",
        "    nginx.ingress.kubernetes.io/canary-weight: \"10\"",
        "/",
    );
    let lost = canary_ingress(
        "lost",
        "    nginx.ingress.kubernetes.io/canary-weight: \"10\"",
        "/nowhere",
    );
    let c = compute(&index(
        vec![
            ingress(1, MAIN),
            ingress(2, &first),
            ingress(3, &second),
            ingress(4, &lost),
        ],
        vec![],
    ));
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        [
            ("web/lost".to_owned(), "CanaryWithoutMain"),
            ("web/second".to_owned(), "Conflict")
        ]
    );
    assert_eq!(
        shares(&routes_of(&c, "main")[0].rules[0]),
        [
            ("web/backend:80".to_owned(), 50),
            ("web/canary:80".to_owned(), 50)
        ]
    );
    // Weight 0: no canary share, the main takes everything.
    let zero = canary_ingress(
        "zero",
        "    nginx.ingress.kubernetes.io/canary-weight: \"0\"",
        "/",
    );
    let c = compute(&index(vec![ingress(1, MAIN), ingress(2, &zero)], vec![]));
    assert_eq!(
        shares(&routes_of(&c, "main")[0].rules[0]),
        [("web/backend:80".to_owned(), 100)]
    );
}

#[test]
fn rewrite_target_with_regex_paths_as_in_the_ingress_nginx_example() {
    let rewrite = r#"
metadata:
  name: rewrite
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/use-regex: "true"
    nginx.ingress.kubernetes.io/rewrite-target: /$2
spec:
  ingressClassName: roundhouse
  rules:
  - host: rewrite.bar.com
    http:
      paths:
      - path: /something(/|$)(.*)
        pathType: ImplementationSpecific
        backend: {service: {name: backend, port: {number: 80}}}
      - path: /bad(
        pathType: ImplementationSpecific
        backend: {service: {name: backend, port: {number: 80}}}
"#;
    let c = compute(&index(vec![ingress(1, rewrite)], vec![]));
    assert_eq!(reasons(&c), [("web/rewrite".to_owned(), "InvalidPath")]);
    assert_eq!(
        c.reports[0].annotation.as_deref(),
        Some("nginx.ingress.kubernetes.io/use-regex")
    );
    let r = routes_of(&c, "rewrite");
    assert_eq!(r[0].rules.len(), 1);
    let rule = &r[0].rules[0];
    let PathMatch::Regex(p) = &rule.matches[0].path else {
        panic!("{:?}", rule.matches)
    };
    for (path, want) in [
        ("/something", true),
        ("/something/", true),
        ("/something/new", true),
        ("/SOMETHING/new", true),
        ("/somethingelse", false),
        ("/x/something", false),
    ] {
        assert_eq!(p.is_match(path), want, "{path}");
    }
    let caps = p.regex().captures("/something/new").unwrap();
    assert_eq!(caps.get(2).map(|m| m.as_str()), Some("new"));
    assert_eq!(
        rule.filters.rewrite.as_ref().unwrap().path,
        Some(PathRewrite::Captures("/$2".into()))
    );
    assert!(rule.validate(0).is_ok());
}

#[test]
fn regex_paths_rank_by_the_path_written_and_templates_name_only_groups() {
    let regex = r#"
metadata:
  name: regex
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /$host/$1
spec:
  ingressClassName: roundhouse
  rules:
  - host: api.example
    http:
      paths:
      - {path: /api(.*), pathType: ImplementationSpecific, backend: {service: {name: backend, port: {number: 80}}}}
      - path: "/v(?<version>[0-9]+)/"
        pathType: ImplementationSpecific
        backend: {service: {name: backend, port: {number: 80}}}
"#;
    let named = regex
        .replace("name: regex", "name: named")
        .replace("/$host/$1", "/${version}/$1")
        .replace("api.example", "named.example");
    let prefix = r#"
metadata: {name: prefix, namespace: web}
spec:
  ingressClassName: roundhouse
  rules:
  - host: api.example
    http:
      paths:
      - {path: /api/v1/users, pathType: Prefix, backend: {service: {name: canary, port: {number: 80}}}}
"#;
    let c = compute(&index(
        vec![ingress(1, regex), ingress(2, &named), ingress(3, prefix)],
        vec![],
    ));
    // `$host` is an nginx variable: reported once per path, not
    // rewritten; so is `${version}` on the path without that group.
    assert_eq!(
        reasons(&c),
        [
            ("web/regex".to_owned(), "InvalidAnnotation"),
            ("web/regex".to_owned(), "InvalidAnnotation"),
            ("web/named".to_owned(), "InvalidAnnotation"),
        ]
    );
    assert!(
        c.reports[0].message.contains("$host"),
        "{}",
        c.reports[0].message
    );
    let rules = &routes_of(&c, "regex")[0].rules;
    assert!(rules.iter().all(|r| r.filters.rewrite.is_none()));
    // Ranked by the 8 characters of `/api(.*)`, not the 14 of
    // `(?i)/api(.*).*`: the other Ingress's `/api/v1/users` prefix (13)
    // wins, as in ingress-nginx (longest location first).
    let regex_match = &rules[0].matches[0];
    let prefix_match = &routes_of(&c, "prefix")[0].rules[0].matches[0];
    assert!(prefix_match.specificity() > regex_match.specificity());
    // A named group of the path is a capture, not a variable.
    let named = &routes_of(&c, "named")[0].rules;
    assert_eq!(
        named[1].filters.rewrite.as_ref().unwrap().path,
        Some(PathRewrite::Captures("/${version}/$1".into()))
    );
    assert!(
        named[0].filters.rewrite.is_none(),
        "`/api(.*)` has no group `version`"
    );
}

#[test]
fn app_root_permanent_redirect_and_source_ranges() {
    let approot = r#"
metadata:
  name: approot
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/app-root: /app1}
spec:
  ingressClassName: roundhouse
  rules:
  - host: approot.bar.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;
    let moved = MAIN
        .replace("name: main,", "name: moved,")
        .replace("app.example", "moved.example")
        .replace(
            "namespace: web}",
            "namespace: web, annotations: {nginx.ingress.kubernetes.io/permanent-redirect: \"https://new.example/\"}}",
        );
    let allow = MAIN
        .replace("name: main,", "name: allow,")
        .replace("app.example", "allow.example")
        .replace(
            "namespace: web}",
            "namespace: web, annotations: {nginx.ingress.kubernetes.io/whitelist-source-range: \"10.0.0.0/8\"}}",
        );
    let broken = allow
        .replace("name: allow,", "name: broken,")
        .replace("allow.example", "broken.example")
        .replace("10.0.0.0/8", "ten");
    let c = compute(&index(
        vec![
            ingress(1, approot),
            ingress(2, &moved),
            ingress(3, &allow),
            ingress(4, &broken),
        ],
        vec![],
    ));
    let r = routes_of(&c, "approot");
    assert_eq!(r[0].rules[0].matches, [Match::exact("/")]);
    let Action::Redirect(to_root) = &r[0].rules[0].action else {
        panic!()
    };
    assert_eq!(to_root.path, Some(PathRewrite::ReplaceFull("/app1".into())));
    assert_eq!(to_root.status, RedirectStatus::FOUND);
    assert!(
        matches!(r[0].rules[1].action, Action::Forward(_)),
        "the path itself"
    );
    let Action::Redirect(away) = &routes_of(&c, "moved")[0].rules[0].action else {
        panic!()
    };
    assert_eq!(away.hostname.as_deref(), Some("new.example"));
    assert_eq!(away.status, RedirectStatus::MOVED_PERMANENTLY);
    let allow = &routes_of(&c, "allow")[0].rules[0];
    let ranges = allow.filters.source.as_ref().unwrap();
    assert!(
        ranges.permits("10.1.2.3".parse().unwrap())
            && !ranges.permits("192.168.0.1".parse().unwrap())
    );
    let redirected = MAIN
        .replace("name: main,", "name: redirected,")
        .replace("app.example", "redirected.example")
        .replace(
            "namespace: web}",
            "namespace: web, annotations: {nginx.ingress.kubernetes.io/permanent-redirect: \"https://new.example/\", nginx.ingress.kubernetes.io/whitelist-source-range: \"10.0.0.0/8\"}}",
        );
    let c2 = compute(&index(vec![ingress(1, &redirected)], vec![]));
    let rule = &routes_of(&c2, "redirected")[0].rules[0];
    assert!(matches!(rule.action, Action::Redirect(_)));
    assert_eq!(
        rule.filters.source, None,
        "redirected before any access check, as nginx does"
    );
    let Action::Respond(denied) = &routes_of(&c, "broken")[0].rules[0].action else {
        panic!("an unreadable allow-list refuses everyone")
    };
    assert_eq!(denied.status, http::StatusCode::FORBIDDEN);
    assert_eq!(
        reasons(&c),
        [("web/broken".to_owned(), "InvalidAnnotation")]
    );
}

#[test]
fn filters_policy_and_backend_settings_from_annotations() {
    let tuned = r#"
metadata:
  name: tuned
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 1m
    nginx.ingress.kubernetes.io/proxy-read-timeout: "120"
    nginx.ingress.kubernetes.io/proxy-connect-timeout: "3"
    nginx.ingress.kubernetes.io/upstream-vhost: internal.example
    nginx.ingress.kubernetes.io/affinity: cookie
    nginx.ingress.kubernetes.io/session-cookie-max-age: "3600"
    nginx.ingress.kubernetes.io/enable-cors: "true"
    nginx.ingress.kubernetes.io/backend-protocol: GRPC
    nginx.ingress.kubernetes.io/limit-rps: "10"
spec:
  ingressClassName: roundhouse
  rules:
  - host: tuned.example
    http: {paths: [{path: /shop, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]}
"#;
    let c = compute(&index(vec![ingress(1, tuned)], vec![]));
    assert_eq!(
        reasons(&c),
        [("web/tuned".to_owned(), "UnsupportedAnnotation")]
    );
    assert_eq!(
        c.reports[0].annotation.as_deref(),
        Some("nginx.ingress.kubernetes.io/limit-rps")
    );
    let rule = &routes_of(&c, "tuned")[0].rules[0];
    let f = &rule.filters;
    assert_eq!(f.max_body_bytes, Some(1 << 20));
    assert_eq!(
        f.rewrite.as_ref().unwrap().hostname.as_ref().unwrap(),
        "internal.example"
    );
    let cookie = f.affinity.as_ref().unwrap();
    assert_eq!(
        (&*cookie.name, cookie.max_age),
        ("INGRESSCOOKIE", Some(Duration::from_secs(3600)))
    );
    assert_eq!(
        cookie.path.as_deref(),
        Some("/shop"),
        "the path, as ingress-nginx sets it"
    );
    assert!(f.cors.is_some());
    assert_eq!(
        rule.policy.backend_request_timeout,
        Some(Duration::from_secs(120))
    );
    let b = rule.backends().next().unwrap();
    assert_eq!(b.protocol, Protocol::H2c);
    assert_eq!(b.policy.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(&*b.name, "web/backend:80 (Ingress web/tuned)");
}

#[test]
fn body_limits_default_to_ingress_nginx_s_1m() {
    let unlimited = FANOUT.replace(
        "metadata: {name: fanout, namespace: web}",
        "metadata: {name: fanout, namespace: web, annotations: {nginx.ingress.kubernetes.io/proxy-body-size: \"0\"}}",
    );
    let limit = |c: &Computed| routes_of(c, "fanout")[0].rules[0].filters.max_body_bytes;
    let c = compute(&index(vec![ingress(1, FANOUT)], vec![]));
    assert_eq!(limit(&c), Some(1 << 20), "ingress-nginx's default");
    let c = compute(&index(vec![ingress(1, &unlimited)], vec![]));
    assert_eq!(limit(&c), None, "0: none of its own");
    let config = IngressConfig {
        max_body_bytes: Some(50 << 20),
        ..IngressConfig::default()
    };
    let c = index(vec![ingress(1, FANOUT)], vec![]).compute(&config, &[]);
    assert_eq!(limit(&c), Some(50 << 20), "--ingress-max-body-size");
}

#[test]
fn missing_backends_and_unsupported_protocols_answer_500() {
    let missing = MAIN.replace("name: backend", "name: nothere");
    let https = MAIN
        .replace("name: main,", "name: https,")
        .replace("app.example", "https.example")
        .replace(
            "namespace: web}",
            "namespace: web, annotations: {nginx.ingress.kubernetes.io/backend-protocol: HTTPS}}",
        );
    let c = compute(&index(
        vec![ingress(1, &missing), ingress(2, &https)],
        vec![],
    ));
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(
        r,
        [
            ("web/https".to_owned(), "UnsupportedAnnotation"),
            ("web/main".to_owned(), "BackendNotFound")
        ]
    );
    assert_eq!(
        shares(&routes_of(&c, "main")[0].rules[0]),
        [("invalid: Service web/nothere not found".to_owned(), 1)]
    );
    assert_eq!(
        shares(&routes_of(&c, "https")[0].rules[0]),
        [(
            "invalid: backend-protocol HTTPS is not supported".to_owned(),
            1
        )]
    );
}

#[test]
fn statuses_carry_the_lb_addresses() {
    let c = index(vec![ingress(1, MAIN)], vec![]).compute(
        &IngressConfig::default(),
        &["10.0.0.9".to_owned(), "lb.example".to_owned()],
    );
    let s = &c.statuses["web/main"];
    let list = s.load_balancer.as_ref().unwrap().ingress.as_ref().unwrap();
    assert_eq!(list[0].ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(list[1].hostname.as_deref(), Some("lb.example"));
    let svc: Service = yaml(
        "metadata: {name: lb}\nspec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.7]}\nstatus: {loadBalancer: {}}\n",
    );
    assert_eq!(service_addresses(&svc), ["10.96.0.7"]);
    let lb: Service = yaml(
        "metadata: {name: lb}\nspec: {clusterIP: 10.96.0.7}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.5}, {hostname: lb.cloud.example}]}}\n",
    );
    assert_eq!(service_addresses(&lb), ["203.0.113.5", "lb.cloud.example"]);
}
