//! The Ingress source against the fake API server: what it publishes
//! (routes, certificates, readiness), what it writes (Ingress status) and
//! reports (Events), how it follows changes, and that the ClusterRole of
//! manifests/ingress/ grants exactly the calls it makes.
//!
//! Routing requests by these routes is the data plane's part; here the
//! source's output is read from its publisher, as the data plane reads it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::fake_api::{FakeApi, Kind, ingress_grants};
use common::{HANG, get_once, tls_client_with, tls_connect, wait_until};
use lb::discovery::k8s::ingress::{IngressConfig, IngressDiscovery};
use lb::discovery::{Discovery, RouteKind, Subscriber};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NS: &str = "roundhouse";

/// A running source and what it publishes.
struct Running {
    routing: Subscriber,
    certs: tokio::sync::watch::Receiver<std::sync::Arc<Vec<lb::discovery::CertPair>>>,
    metrics: lb::metrics::DiscoveryMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// `namespace/name` of the Ingresses with routes in the last snapshot.
    fn routed(&self) -> BTreeSet<String> {
        let snap = self.routing.borrow();
        snap.routing
            .iter()
            .flat_map(|r| r.routes.iter())
            .filter(|r| r.origin.kind == RouteKind::Ingress)
            .map(|r| format!("{}/{}", r.origin.namespace, r.origin.name))
            .collect()
    }
}

async fn start(api: &FakeApi, config: IngressConfig, service: Option<&str>) -> Running {
    let client = FakeApi::client(&api.kubeconfig()).await;
    let metrics = lb::metrics::DiscoveryMetrics::default();
    let (publisher, routing) = lb::discovery::channel_with_metrics(metrics.clone());
    let certs = publisher.subscribe_certs();
    let source = IngressDiscovery::new(client, NS, config)
        .with_service(service.map(str::to_owned))
        .with_instance("lb-test-0")
        .with_status_timeout(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let task = tokio::spawn(Box::new(source).run(publisher, stop.clone()));
    Running {
        routing,
        certs,
        metrics,
        stop,
        task,
    }
}

fn class(api: &FakeApi, name: &str, controller: &str) {
    api.put(
        Kind::IngressClass,
        json!({"metadata": {"name": name}, "spec": {"controller": controller}}),
    );
}

fn backend(api: &FakeApi, ns: &str) {
    api.put(
        Kind::Service,
        json!({
            "metadata": {"name": "backend", "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 5000}]},
        }),
    );
    let mut s = common::fake_api::slice(
        "backend-a",
        "backend",
        "http",
        5000,
        &[("127.0.0.11", true, true, false, "backend-0")],
    );
    s["metadata"]["namespace"] = json!(ns);
    api.put_slice(s);
}

fn ingress(ns: &str, name: &str, class: &str, annotations: Value, tls: Option<&str>) -> Value {
    let mut spec = json!({
        "ingressClassName": class,
        "rules": [{
            "host": format!("{name}.example"),
            "http": {"paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": "backend", "port": {"number": 80}}},
            }]},
        }],
    });
    if let Some(secret) = tls {
        spec["tls"] = json!([{"hosts": [format!("{name}.example")], "secretName": secret}]);
    }
    json!({
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": spec,
    })
}

/// Puts a `kubernetes.io/tls` Secret for `host`; returns its certificate
/// (DER), for clients to trust.
fn tls_secret(api: &FakeApi, ns: &str, name: &str, host: &str) -> Vec<u8> {
    use k8s_openapi::ByteString;
    let (pair, der) = common::cert(name, &[host]);
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_owned(), ByteString(pair.chain_pem)),
                ("tls.key".to_owned(), ByteString(pair.key_pem)),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    api.put(Kind::Secret, serde_json::to_value(secret).unwrap());
    der
}

/// The Events on `name`: (reason, note).
fn events_on(api: &FakeApi, name: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = api
        .all(Kind::Event)
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn lb_addresses(api: &FakeApi, ns: &str, name: &str) -> Option<Value> {
    api.get(Kind::Ingress, ns, name)
        .map(|o| o["status"]["loadBalancer"]["ingress"].clone())
        .filter(|v| !v.is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_ingresses_are_routed_their_status_written_and_problems_reported() {
    let api = FakeApi::start_ingress();
    class(&api, "roundhouse", "roundhouse.dev/ingress-controller");
    class(&api, "nginx", "k8s.io/ingress-nginx");
    backend(&api, "shop");
    tls_secret(&api, "shop", "web-tls", "web.example");
    api.put(
        Kind::Ingress,
        ingress(
            "shop",
            "web",
            "roundhouse",
            json!({
                "nginx.ingress.kubernetes.io/limit-rps": "10",
                "nginx.ingress.kubernetes.io/proxy-body-size": "lots",
            }),
            Some("web-tls"),
        ),
    );
    api.put(
        Kind::Ingress,
        ingress(
            "shop",
            "theirs",
            "nginx",
            json!({"nginx.ingress.kubernetes.io/limit-rps": "1"}),
            None,
        ),
    );
    let config = IngressConfig {
        addresses: vec!["10.0.0.9".into()],
        ..IngressConfig::default()
    };
    let run = start(&api, config, None).await;
    wait_until("the web Ingress routed", || {
        run.routed().contains("shop/web")
    })
    .await;
    assert!(run.routing.borrow().synced, "ready once every watch listed");
    assert_eq!(
        run.routed(),
        ["shop/web".to_owned()].into(),
        "not the nginx-class one"
    );
    let routes = run.routing.borrow().routing.clone().unwrap();
    let backend = routes
        .routes
        .iter()
        .flat_map(|r| r.rules.iter())
        .find_map(|rule| rule.backends().next().cloned())
        .unwrap();
    assert_eq!(&*backend.name, "shop/backend:80");
    assert_eq!(backend.endpoints[0].addr.to_string(), "127.0.0.11:5000");
    wait_until("the certificate published", || {
        run.certs
            .borrow()
            .iter()
            .any(|c| c.name == "secret/shop/web-tls")
    })
    .await;
    wait_until("status written", || {
        lb_addresses(&api, "shop", "web").is_some()
    })
    .await;
    assert_eq!(
        lb_addresses(&api, "shop", "web").unwrap(),
        json!([{"ip": "10.0.0.9"}])
    );
    wait_until("two Events", || events_on(&api, "web").len() == 2).await;
    let events = events_on(&api, "web");
    assert_eq!(events[0].0, "InvalidAnnotation");
    assert!(
        events[0].1.contains("proxy-body-size") && events[0].1.contains("\"lots\""),
        "{events:?}"
    );
    assert_eq!(events[1].0, "UnsupportedAnnotation");
    assert!(
        events[1]
            .1
            .contains("nginx.ingress.kubernetes.io/limit-rps"),
        "{events:?}"
    );
    let event = api
        .all(Kind::Event)
        .into_iter()
        .find(|e| e["regarding"]["name"] == "web")
        .unwrap();
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(
        event["reportingController"],
        "roundhouse.dev/ingress-controller"
    );
    assert_eq!(event["reportingInstance"], "lb-test-0");
    assert_eq!(event["type"], "Warning");
    assert!(
        events_on(&api, "theirs").is_empty(),
        "never a word about other classes' Ingresses"
    );
    assert!(lb_addresses(&api, "shop", "theirs").is_none());
    let metric = |annotation: &str, result| {
        run.metrics
            .ingress_annotations
            .get_or_create(&lb::metrics::AnnotationLabels {
                annotation: annotation.into(),
                result,
            })
            .get()
    };
    assert_eq!(
        metric("nginx.ingress.kubernetes.io/limit-rps", "unsupported"),
        1
    );

    // An endpoint change re-computes: no new Event for the same generation.
    let mut s = common::fake_api::slice(
        "backend-a",
        "backend",
        "http",
        5000,
        &[
            ("127.0.0.11", true, true, false, "backend-0"),
            ("127.0.0.12", true, true, false, "backend-1"),
        ],
    );
    s["metadata"]["namespace"] = json!("shop");
    api.put_slice(s);
    wait_until("two endpoints", || {
        run.routing.borrow().routing.as_ref().is_some_and(|r| {
            r.routes.iter().any(|r| {
                r.rules
                    .iter()
                    .any(|rule| rule.backends().any(|b| b.endpoints.len() == 2))
            })
        })
    })
    .await;
    // A new generation that fixes one annotation: the other is reported
    // again, the fixed one is not.
    api.put(
        Kind::Ingress,
        ingress(
            "shop",
            "web",
            "roundhouse",
            json!({"nginx.ingress.kubernetes.io/limit-rps": "10"}),
            Some("web-tls"),
        ),
    );
    wait_until("the limit-rps Event again", || {
        events_on(&api, "web")
            .iter()
            .filter(|e| e.0 == "UnsupportedAnnotation")
            .count()
            == 2
    })
    .await;
    assert_eq!(
        events_on(&api, "web")
            .iter()
            .filter(|e| e.0 == "InvalidAnnotation")
            .count(),
        1
    );
    assert_eq!(
        metric("nginx.ingress.kubernetes.io/limit-rps", "unsupported"),
        2
    );
    // Moved to the other class: no longer routed.
    api.put(
        Kind::Ingress,
        ingress("shop", "web", "nginx", json!({}), None),
    );
    wait_until("web no longer routed", || run.routed().is_empty()).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_takes_the_lb_service_address_and_follows_the_class() {
    let api = FakeApi::start_ingress();
    backend(&api, NS);
    api.put(
        Kind::Service,
        json!({
            "metadata": {"name": "lb", "namespace": NS},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb.cloud.example"}]}},
        }),
    );
    // No IngressClass yet: nothing is ours.
    api.put(
        Kind::Ingress,
        ingress(NS, "web", "roundhouse", json!({}), None),
    );
    let run = start(&api, IngressConfig::default(), Some("lb")).await;
    wait_until("synced", || run.routing.borrow().synced).await;
    assert!(
        run.routed().is_empty(),
        "an IngressClass that does not exist is nobody's"
    );
    class(&api, "roundhouse", "roundhouse.dev/ingress-controller");
    wait_until("routed once the class exists", || {
        run.routed().contains("roundhouse/web")
    })
    .await;
    wait_until("status from the lb Service", || {
        lb_addresses(&api, NS, "web").is_some()
    })
    .await;
    assert_eq!(
        lb_addresses(&api, NS, "web").unwrap(),
        json!([{"hostname": "lb.cloud.example"}])
    );
    run.stop().await;
}

/// The ClusterRole of manifests/ingress/ grants exactly what the lb asked
/// the API server for in Ingress mode: a scenario that takes every path
/// (watches of every kind, a watch that fails and starts over, a status
/// write, an Event), recorded by the fake API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_cluster_role_grants_exactly_what_the_lb_calls() {
    let api = FakeApi::start_ingress();
    class(&api, "roundhouse", "roundhouse.dev/ingress-controller");
    backend(&api, NS);
    tls_secret(&api, NS, "web-tls", "web.example");
    api.put(
        Kind::Ingress,
        ingress(
            NS,
            "web",
            "roundhouse",
            json!({"nginx.ingress.kubernetes.io/server-snippet": "x"}),
            Some("web-tls"),
        ),
    );
    let config = IngressConfig {
        addresses: vec!["lb.example".into()],
        ..IngressConfig::default()
    };
    let run = start(&api, config, None).await;
    wait_until("status and Event", || {
        lb_addresses(&api, NS, "web").is_some() && !events_on(&api, "web").is_empty()
    })
    .await;
    let lists = api.list_requests();
    api.drop_watches();
    api.compact();
    wait_until("re-list", || api.list_requests() > lists + 4).await;
    run.stop().await;

    let show = |s: &BTreeSet<_>| s.iter().map(ToString::to_string).collect::<Vec<String>>();
    let served: BTreeSet<_> = api.served();
    assert_eq!(
        show(&served),
        show(&ingress_grants()),
        "what the lb called (left) and what manifests/ingress/20-rbac.yaml grants (right)"
    );
    assert!(
        api.served_in()
            .iter()
            .all(|(a, ns)| ns.is_none() || a.verb == "patch" || a.verb == "create"),
        "every read is cluster-wide: {:?}",
        api.served_in()
    );
}

/// The real `lb` binary in Ingress mode (`lb serve --kubernetes --ingress`,
/// the API server from `KUBECONFIG`): ready once the watches listed, the
/// TLS listener, started without a certificate, serves the Ingress's
/// Secret by SNI, the status and an Event are written, and the pod's name
/// (`HOSTNAME`) names the replica in the Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_binary_in_ingress_mode() {
    let api = FakeApi::start_ingress();
    class(&api, "roundhouse", "roundhouse.dev/ingress-controller");
    backend(&api, NS);
    let der = tls_secret(&api, NS, "web-tls", "web.example");
    api.put(
        Kind::Ingress,
        ingress(
            NS,
            "web",
            "roundhouse",
            json!({"nginx.ingress.kubernetes.io/auth-url": "http://auth"}),
            Some("web-tls"),
        ),
    );
    let dir = std::env::temp_dir().join(format!("rh-ingress-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    struct Lb(std::process::Child);
    impl Drop for Lb {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // The ports are picked free and then bound by the lb; another process
    // may take one in between, so an lb that exits before it is ready is
    // started again on new ports.
    let mut started = None;
    for _ in 0..10 {
        let (plain, tls, admin) = (port(), port(), port());
        let mut lb = Lb(std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["serve", "--kubernetes", "--ingress", "--workers", "1"])
            .args(["--namespace", NS, "--ingress-address", "10.0.0.7"])
            .args(["--listen", &format!("127.0.0.1:{plain}")])
            .args(["--tls-listen", &format!("127.0.0.1:{tls}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOSTNAME", "lb-bin-0")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap());
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        let deadline = std::time::Instant::now() + HANG;
        loop {
            if let Ok(Some(_)) = lb.0.try_wait() {
                break;
            }
            if matches!(get_once(admin, "/readyz").await, Ok((s, _)) if s == 200) {
                started = Some((lb, tls));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if started.is_some() {
            break;
        }
    }
    let (lb, tls) = started.expect("the lb could not start in 10 tries");
    let client = tls_client_with(std::slice::from_ref(&der), &[b"http/1.1"], false);
    let tls_addr: std::net::SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let deadline = std::time::Instant::now() + HANG;
    loop {
        if let Ok(s) = tls_connect(&client, tls_addr, "web.example").await {
            assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0].to_vec(), der);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Secret's certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("status written", || lb_addresses(&api, NS, "web").is_some()).await;
    assert_eq!(
        lb_addresses(&api, NS, "web").unwrap(),
        json!([{"ip": "10.0.0.7"}])
    );
    wait_until("the auth-url Event", || !events_on(&api, "web").is_empty()).await;
    let event = api.all(Kind::Event).into_iter().next().unwrap();
    assert_eq!(event["reason"], "UnsupportedAnnotation");
    assert_eq!(event["reportingInstance"], "lb-bin-0");
    drop(lb);
    std::fs::remove_dir_all(&dir).unwrap();
}
