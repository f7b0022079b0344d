//! The deployment files agree with the code: the CRD files are exactly
//! `lb crd`'s output, and the Role grants exactly the API calls the
//! controller makes — as observed by the fake API server, not as listed by
//! hand.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::fake_api::{Access, FakeApi, Fault, granted_by_role, manifest_grants, roles_in, slice};
use common::*;
use futures::FutureExt;
use lb::discovery::Discovery;
use lb::discovery::k8s::{DefaultUpstream, KubernetesDiscovery};
use lb::selection::Policy;
use serde_json::json;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn crd_files_are_the_generated_crd() {
    let generated = lb::crd::crd_yaml();
    for path in [
        "manifests/01-crd.yaml",
        "helm/roundhouse/crds/upstreams.yaml",
    ] {
        assert!(
            read(path) == generated,
            "{path} differs from `lb crd`; regenerate: cargo run -q -p lb -- crd > {path}"
        );
    }
}

/// The chart's Role, with its template actions replaced: the rules are
/// plain YAML in the template, only names and labels are templated.
fn chart_grants() -> BTreeSet<Access> {
    let text = read("helm/roundhouse/templates/rbac.yaml");
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(i) = rest.find("{{") {
                out.push_str(&rest[..i]);
                out.push_str("templated");
                rest = rest[i..].find("}}").map_or("", |j| &rest[i + j + 2..]);
            }
            out.push_str(rest);
            out + "\n"
        })
        .collect();
    let roles = roles_in(&plain);
    assert_eq!(roles.len(), 1, "one Role in the chart");
    assert_eq!(roles[0]["kind"], "Role", "no cluster-wide RBAC");
    granted_by_role(&roles[0])
}

/// The Role grants exactly what the lb asked the API server for: a scenario
/// that takes every path the code has (start-up with the default Upstream
/// absent, watches, a watch that fails and starts over, status writes, a
/// status write rejected by the server) against the fake API server, which
/// records each (verb, resource, subresource) it serves. Every other
/// Kubernetes scenario checks, when its fake is dropped, that what it served
/// is granted; this one checks that nothing more is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_exactly_what_the_lb_calls() {
    let granted = manifest_grants();
    assert_eq!(
        granted,
        chart_grants(),
        "manifests/ and the chart grant the same"
    );
    let text = read("manifests/10-rbac.yaml");
    for doc in roles_in(&text) {
        assert_ne!(doc["kind"], "ClusterRole", "no cluster-wide RBAC");
    }

    let b = backends_on_one_port(&["a"]);
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        b[0].addr.port(),
        &[("127.0.0.11", true, true, false, "a")],
    ));
    api.put_upstream(
        "rejected",
        json!({"service": "backend", "match": {"pathPrefix": "/r"}}),
    );
    api.fail_status("rejected", Fault::invalid("denied"), None);
    let kubeconfig = api.kubeconfig();
    let lb = TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                let d = DefaultUpstream::new("backend", "backend", Some("http")).unwrap();
                Box::new(KubernetesDiscovery::new(client, "roundhouse", Some(d)))
                    as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    );
    wait_until("default Upstream created and its status written", || {
        !api.status_writes("backend").is_empty() && api.status_attempts("rejected") > 0
    })
    .await;
    let lists = api.list_requests();
    api.drop_watches();
    api.compact();
    wait_until("re-list", || api.list_requests() > lists).await;
    drop(lb);

    let served = api.served();
    let show = |s: &BTreeSet<Access>| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        show(&served),
        show(&granted),
        "what the lb called (left) and what manifests/10-rbac.yaml grants (right)"
    );
}

fn docs(path: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|d| {
            serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
                .unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every file of manifests/gateway-api/ (and its examples).
fn gateway_files() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["manifests/gateway-api", "manifests/gateway-api/examples"] {
        let mut files: Vec<String> = std::fs::read_dir(repo(dir))
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension().is_some_and(|x| x == "yaml"))
                    .then(|| format!("{dir}/{}", p.file_name().unwrap().to_str().unwrap()))
            })
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// The Gateway API objects of manifests/gateway-api/ read through the
/// types the lb uses, and written back: a field the lb does not know (a
/// typo, or something it ignores) would be lost, so the object must come
/// back as it was. (The Gateway API CRDs' own schemas are not available
/// offline; this checks names and types of every field we write, not the
/// CRDs' enum values and CEL rules.)
#[test]
fn gateway_api_manifests_round_trip_through_the_lb_types() {
    use lb::discovery::k8s::gateway_api::{Gateway, GatewayClass, HTTPRoute};
    let mut seen = 0;
    for file in gateway_files() {
        for doc in docs(&file) {
            let back = match doc["kind"].as_str().unwrap() {
                "GatewayClass" => serde_json::to_value(
                    serde_json::from_value::<GatewayClass>(doc.clone()).unwrap(),
                ),
                "Gateway" => {
                    serde_json::to_value(serde_json::from_value::<Gateway>(doc.clone()).unwrap())
                }
                "HTTPRoute" => {
                    serde_json::to_value(serde_json::from_value::<HTTPRoute>(doc.clone()).unwrap())
                }
                _ => continue,
            }
            .unwrap();
            seen += 1;
            assert_eq!(back, doc, "{file}: {} does not round-trip", doc["kind"]);
        }
    }
    assert!(seen >= 4, "GatewayClass, Gateway, two HTTPRoutes: {seen}");
}

/// The Gateway API mode's RBAC grants exactly what the lb calls: a
/// scenario with every kind it reads, a route of each kind attached, a
/// status of each kind written, a cross-namespace Secret and a re-list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_role_grants_exactly_what_the_lb_calls() {
    use common::fake_api::{Kind, NS, gateway_grants};
    let b = backends_on_one_port(&["a", "b"]);
    let api = FakeApi::start_gateway();
    api.put(Kind::Namespace, json!({"metadata": {"name": NS}}));
    for file in gateway_files() {
        if file.ends_with("examples/weighted-80-20.yaml") {
            continue;
        }
        for doc in docs(&file) {
            if let Some(kind) = Kind::of(&doc)
                && matches!(kind, Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute)
            {
                api.put(kind, doc);
            }
        }
    }
    api.put(
        Kind::Service,
        json!({"metadata": {"name": "backend"},
               "spec": {"ports": [{"name": "http", "port": 5000}, {"name": "grpc", "port": 5001, "appProtocol": "kubernetes.io/h2c"}]}}),
    );
    api.put(
        Kind::Service,
        json!({"metadata": {"name": "lb"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 8080}]}}),
    );
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        b[0].addr.port(),
        &[
            ("127.0.0.11", true, true, false, "backend-a"),
            ("127.0.0.12", true, true, false, "backend-b"),
        ],
    ));
    api.put(
        Kind::GrpcRoute,
        json!({"metadata": {"name": "hosts"},
               "spec": {"parentRefs": [{"name": "roundhouse"}],
                        "rules": [{"matches": [{"method": {"service": "roundhouse.v1.Hosts"}}],
                                   "backendRefs": [{"name": "backend", "port": 5001}]}]}}),
    );
    api.put(
        Kind::ReferenceGrant,
        json!({"metadata": {"name": "certs", "namespace": "elsewhere"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": NS}],
                        "to": [{"group": "", "kind": "Secret"}]}}),
    );
    let kubeconfig = api.kubeconfig();
    let lb = TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                Box::new(
                    lb::discovery::k8s::gateway::GatewayDiscovery::new(
                        client,
                        NS,
                        lb::discovery::k8s::gateway::GatewayConfig {
                            gateways: vec![format!("{NS}/roundhouse")],
                            ..Default::default()
                        },
                    )
                    .with_service(Some("lb".into())),
                ) as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    );
    wait_until("every status written", || {
        let parents = |k, n| {
            api.get(k, NS, n).is_some_and(|o| {
                o["status"]["parents"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            })
        };
        api.get(Kind::GatewayClass, "", "roundhouse")
            .is_some_and(|o| !o["status"]["conditions"].is_null())
            && api
                .get(Kind::Gateway, NS, "roundhouse")
                .is_some_and(|o| o["status"]["addresses"][0]["value"] == "10.96.0.10")
            && parents(Kind::HttpRoute, "backend")
            && parents(Kind::GrpcRoute, "hosts")
    })
    .await;
    let lists = api.list_requests();
    api.drop_watches();
    api.compact();
    wait_until("re-list", || api.list_requests() > lists).await;
    drop(lb);

    let (cluster, namespaced) = gateway_grants();
    assert!(
        namespaced.is_empty(),
        "no namespaced Role is needed: {namespaced:?}"
    );
    // Watches are cluster-wide; status calls name the object's namespace,
    // which the ClusterRole (bound cluster-wide) grants as well.
    let served: BTreeSet<String> = api.served().iter().map(ToString::to_string).collect();
    let granted: BTreeSet<String> = cluster.iter().map(ToString::to_string).collect();
    assert_eq!(
        served, granted,
        "what the lb called (left) and what manifests/gateway-api/20-rbac.yaml grants (right)"
    );
}

/// The backend pods of a Service: real backends, each in its own
/// EndpointSlice (each listens on its own port here).
fn pods(api: &FakeApi, service: &str, names: &[&str]) -> Vec<TestBackend> {
    names
        .iter()
        .map(|n| {
            let b = TestBackend::start(n);
            api.put_slice(slice(
                n,
                service,
                "http",
                b.addr.port(),
                &[("127.0.0.1", true, true, false, n)],
            ));
            b
        })
        .collect()
}

/// What `/host` answers over `n` requests on one connection.
async fn hosts(addr: std::net::SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut conn = Conn::open(addr).await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, body) = conn.get("/host").await.unwrap();
        let key = if status == http::StatusCode::OK {
            body.trim().to_owned()
        } else {
            format!("{status} {}", body.trim())
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Sends 100 requests at a time until the split is `want` (routing
/// converges after the watch events; any 100 consecutive requests are then
/// one whole cycle), for at most 5 s.
async fn split_becomes(addr: std::net::SocketAddr, want: &[(&str, usize)]) {
    let want: std::collections::BTreeMap<String, usize> =
        want.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = hosts(addr, 100).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "split {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// manifests/gateway-api/ (GatewayClass, Gateway, HTTPRoute) over the
/// Service of manifests/20-backend.yaml gives ./test.sh its exact 50/50;
/// the 80/20 example gives exactly 40/40/20 over 100 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_manifests_split_50_50_and_80_20() {
    use common::fake_api::{Kind, NS};
    let api = FakeApi::start_gateway();
    api.put(Kind::Namespace, json!({"metadata": {"name": NS}}));
    let put_all = |file: &str, only_route: bool| {
        for doc in docs(file) {
            if let Some(kind) = Kind::of(&doc)
                && (!only_route || kind == Kind::HttpRoute)
                && !matches!(kind, Kind::Namespace)
            {
                api.put(kind, doc);
            }
        }
    };
    for file in [
        "manifests/gateway-api/10-gatewayclass.yaml",
        "manifests/gateway-api/40-gateway.yaml",
        "manifests/gateway-api/50-httproute.yaml",
    ] {
        put_all(file, false);
    }
    for doc in docs("manifests/20-backend.yaml") {
        if doc["kind"] == "Service" {
            api.put(Kind::Service, doc);
        }
    }
    let _backends = pods(&api, "backend", &["backend-1", "backend-2"]);
    let kubeconfig = api.kubeconfig();
    let lb = TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                Box::new(lb::discovery::k8s::gateway::GatewayDiscovery::new(
                    client,
                    NS,
                    lb::discovery::k8s::gateway::GatewayConfig {
                        gateways: vec![format!("{NS}/roundhouse")],
                        addresses: vec!["127.0.0.1".into()],
                        ..Default::default()
                    },
                )) as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    );
    wait_until(
        "the HTTPRoute is accepted with its references resolved",
        || {
            api.get(Kind::HttpRoute, NS, "backend").is_some_and(|r| {
                let c = &r["status"]["parents"][0]["conditions"];
                c[0]["status"] == "True" && c[1]["status"] == "True"
            })
        },
    )
    .await;
    split_becomes(lb.addr, &[("backend-1", 50), ("backend-2", 50)]).await;

    // The 80/20 example: its canary pod, Service and weighted route (in
    // that order, so the route never names a Service without endpoints).
    let _canary = pods(&api, "backend-canary", &["backend-canary-1"]);
    for doc in docs("manifests/gateway-api/examples/weighted-80-20.yaml") {
        match doc["kind"].as_str() {
            Some("Service") => {
                api.put(Kind::Service, doc);
            }
            Some("HTTPRoute") => {
                api.put(Kind::HttpRoute, doc);
            }
            _ => {}
        }
    }
    // Exactly 80/20 by Service, 40/40 within the Service.
    split_becomes(
        lb.addr,
        &[
            ("backend-1", 40),
            ("backend-2", 40),
            ("backend-canary-1", 20),
        ],
    )
    .await;
}
