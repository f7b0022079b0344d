//! The Kubernetes source against an in-process fake API server, with a real
//! kube-rs Client (built from a kubeconfig) and real backends on 127.0.0.x.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, slice};
use common::*;
use futures::FutureExt;
use http::StatusCode;
use lb::discovery::Discovery;
use lb::discovery::k8s::{DefaultUpstream, KubernetesDiscovery};
use lb::selection::Policy;
use serde_json::json;

fn start_lb(api: &FakeApi, default: bool) -> TestLb {
    let kubeconfig = api.kubeconfig();
    TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                let d = default
                    .then(|| DefaultUpstream::new("backend", "backend", Some("http")).unwrap());
                Box::new(KubernetesDiscovery::new(client, "roundhouse", d)) as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    )
}

fn ready_ips(lb: &TestLb, upstream: &str) -> Vec<String> {
    let t = lb.running.balancer.snapshot();
    t.upstreams
        .iter()
        .find(|u| &*u.name == upstream)
        .map(|u| {
            u.endpoints
                .iter()
                .map(|e| e.addr.ip().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn counts(lb: &TestLb, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut conn = Conn::open(lb.addr).await.unwrap();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = conn.get(path).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        *out.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    out
}

/// Runs `clients` keep-alive GET loops until stopped; returns (ok, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(lb: &TestLb, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), lb.addr);
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut conn = Conn::open(addr).await.unwrap();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match conn.get("/host").await {
                            Ok((StatusCode::OK, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            r => {
                                eprintln!("load failure: {r:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = Conn::open(addr).await.unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn more(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_until("load progress", || {
            self.ok.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_creates_default_upstream_and_splits_exactly() {
    let b = backends_on_one_port(&["pod-a", "pod-b"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-abc",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", true, true, false, "pod-a"),
            ("127.0.0.12", true, true, false, "pod-b"),
        ],
    ));
    let lb = start_lb(&api, true);
    wait_until("readiness", || lb.running.ready.get()).await;
    lb.wait_table("two endpoints", |t| {
        t.upstreams.first().is_some_and(|u| u.endpoints.len() == 2)
    })
    .await;
    assert_eq!(
        api.creates(),
        ["backend"],
        "the LB created its default Upstream"
    );
    let c = counts(&lb, "/host", 100).await;
    assert_eq!(
        c,
        BTreeMap::from([("pod-a".into(), 50), ("pod-b".into(), 50)])
    );

    // Status: written once, with counts and the Ready condition.
    wait_until("status write", || !api.status_writes("backend").is_empty()).await;
    let obj = api.upstream("backend").unwrap();
    let status = &obj["status"];
    assert_eq!(status["readyEndpoints"], 2);
    assert_eq!(status["ready"], "2/2");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "EndpointsAvailable");
    assert_eq!(status["endpoints"][0]["pod"], "pod-a");
    let writes = api.status_writes("backend");
    assert_eq!(writes[0]["apiVersion"], "roundhouse.dev/v1alpha1");

    // A change elsewhere (another Service's slice) writes nothing new.
    let before = api.status_writes("backend").len();
    api.put_slice(slice(
        "other-xyz",
        "other",
        "http",
        80,
        &[("10.9.9.9", true, true, false, "o")],
    ));
    api.put_upstream("other", json!({"service": "other"}));
    wait_until("other status", || !api.status_writes("other").is_empty()).await;
    assert_eq!(
        api.status_writes("backend").len(),
        before,
        "no write when nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_down_and_readiness_flip() {
    let b = backends_on_one_port(&["a", "b", "c"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    api.put_upstream("backend", json!({"service": "backend", "port": "http"}));
    let eps = |list: &[(&'static str, bool, &'static str)]| -> Vec<(&'static str, bool, bool, bool, &'static str)> {
        list.iter().map(|(ip, ready, pod)| (*ip, *ready, *ready, false, *pod)).collect()
    };
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &eps(&[("127.0.0.11", true, "a"), ("127.0.0.12", true, "b")]),
    ));
    let lb = start_lb(&api, false);
    lb.wait_table("2 endpoints", |t| {
        t.upstreams.first().is_some_and(|u| u.endpoints.len() == 2)
    })
    .await;

    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &eps(&[
            ("127.0.0.11", true, "a"),
            ("127.0.0.12", true, "b"),
            ("127.0.0.13", true, "c"),
        ]),
    ));
    lb.wait_table("3 endpoints", |t| t.upstreams[0].endpoints.len() == 3)
        .await;
    let c = counts(&lb, "/host", 99).await;
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        [33, 33, 33],
        "{c:?}"
    );

    // b turns not ready: no more traffic for it.
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &eps(&[
            ("127.0.0.11", true, "a"),
            ("127.0.0.12", false, "b"),
            ("127.0.0.13", true, "c"),
        ]),
    ));
    lb.wait_table("b not ready", |t| t.upstreams[0].endpoints.len() == 2)
        .await;
    let c = counts(&lb, "/host", 50).await;
    assert!(!c.contains_key("b"), "{c:?}");
    wait_until("status 2/3", || {
        api.upstream("backend").unwrap()["status"]["ready"] == "2/3"
    })
    .await;

    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &eps(&[("127.0.0.13", true, "c")]),
    ));
    lb.wait_table("1 endpoint", |t| t.upstreams[0].endpoints.len() == 1)
        .await;
    assert_eq!(
        counts(&lb, "/host", 10).await,
        BTreeMap::from([("c".into(), 10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_loses_nothing() {
    let mut b = backends_on_one_port(&["old", "new"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    api.put_upstream("backend", json!({"service": "backend"}));
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.11", true, true, false, "old")],
    ));
    let lb = start_lb(&api, false);
    lb.wait_table("old endpoint", |t| {
        t.upstreams.first().is_some_and(|u| u.endpoints.len() == 1)
    })
    .await;
    let load = Load::start(&lb, 8);
    load.more(500).await;
    // The new pod appears, not ready yet; then ready.
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", true, true, false, "old"),
            ("127.0.0.12", false, false, false, "new"),
        ],
    ));
    load.more(300).await;
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", true, true, false, "old"),
            ("127.0.0.12", true, true, false, "new"),
        ],
    ));
    lb.wait_table("both ready", |t| t.upstreams[0].endpoints.len() == 2)
        .await;
    load.more(500).await;
    // The old pod terminates: still serving while it drains, no new requests.
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", false, true, true, "old"),
            ("127.0.0.12", true, true, false, "new"),
        ],
    ));
    lb.wait_table("old out of rotation", |t| {
        t.upstreams[0].endpoints.len() == 1
    })
    .await;
    load.more(500).await;
    // Then it disappears and its process exits.
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.12", true, true, false, "new")],
    ));
    let old = b.remove(0);
    tokio::task::spawn_blocking(move || old.kill())
        .await
        .unwrap();
    load.more(500).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during the rollout ({ok} ok)");
    assert_eq!(ready_ips(&lb, "backend"), ["127.0.0.12"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slices_port_by_name_and_match_rules() {
    // Slice 1 serves a and b on port P (name http); slice 2 serves c on
    // port Q, also named http, plus a metrics port.
    let ab = backends_on_one_port(&["a", "b"]);
    let c = TestBackend::start_on("127.0.0.13:0".parse().unwrap(), "c");
    let api_backend = TestBackend::start_on("127.0.0.14:0".parse().unwrap(), "api");
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        ab[0].addr.port(),
        &[
            ("127.0.0.11", true, true, false, "a"),
            ("127.0.0.12", true, true, false, "b"),
        ],
    ));
    let mut s2 = slice(
        "backend-2",
        "backend",
        "http",
        c.addr.port(),
        &[("127.0.0.13", true, true, false, "c")],
    );
    s2["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "metrics", "port": 9100, "protocol": "TCP"}));
    api.put_slice(s2);
    api.put_slice(slice(
        "api-1",
        "api",
        "web",
        api_backend.addr.port(),
        &[("127.0.0.14", true, true, false, "api")],
    ));
    api.put_upstream("backend", json!({"service": "backend", "port": "http"}));
    api.put_upstream(
        "api",
        json!({"service": "api", "match": {"pathPrefix": "/api"}}),
    );
    api.put_upstream(
        "api-host",
        json!({"service": "api", "match": {"host": "api.example"}}),
    );
    let lb = start_lb(&api, false);
    lb.wait_table("3 upstreams", |t| {
        t.upstreams.len() == 3 && t.upstreams.iter().all(|u| !u.endpoints.is_empty())
    })
    .await;
    assert_eq!(
        ready_ips(&lb, "backend"),
        ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    );
    let c3 = counts(&lb, "/host", 90).await;
    assert_eq!(
        c3,
        BTreeMap::from([("a".into(), 30), ("b".into(), 30), ("c".into(), 30)])
    );
    // Path prefix on a segment boundary.
    let mut conn = Conn::open(lb.addr).await.unwrap();
    assert_eq!(
        conn.get("/api/host").await.unwrap().0,
        StatusCode::NOT_FOUND,
        "the backend service has no /api/host"
    );
    let (s, body) = conn.get("/apihost").await.unwrap();
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::NOT_FOUND, "not found\n"),
        "/apihost is not under /api"
    );
    // Host match beats the catch-all.
    let req = http::Request::get("/host")
        .header("host", "API.example:8080")
        .body(Default::default())
        .unwrap();
    assert_eq!(conn.send(req).await.unwrap().1, "api\n");
    assert_eq!(api_backend.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_and_410_relist_never_empty_routing() {
    let b = backends_on_one_port(&["a", "b", "c"]);
    let port = b[0].addr.port();
    let mut api = FakeApi::start();
    api.put_upstream("backend", json!({"service": "backend"}));
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", true, true, false, "a"),
            ("127.0.0.12", true, true, false, "b"),
        ],
    ));
    let lb = start_lb(&api, false);
    lb.wait_table("2 endpoints", |t| {
        t.upstreams.first().is_some_and(|u| u.endpoints.len() == 2)
    })
    .await;
    let load = Load::start(&lb, 4);
    load.more(200).await;

    // Kill the API server: routing keeps the last endpoints, still ready.
    api.kill();
    load.more(500).await;
    assert!(lb.running.ready.get(), "readiness survives the API server");
    assert_eq!(ready_ips(&lb, "backend").len(), 2);
    // Changes made while it was down (e.g. by another writer) arrive after restart.
    api.restart();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[
            ("127.0.0.11", true, true, false, "a"),
            ("127.0.0.12", true, true, false, "b"),
            ("127.0.0.13", true, true, false, "c"),
        ],
    ));
    lb.wait_table("3 endpoints after restart", |t| {
        t.upstreams[0].endpoints.len() == 3
    })
    .await;

    // 410 Gone: history compacted and watches dropped: the watcher re-lists;
    // the old set serves until the new list is complete.
    let lists = api.list_requests();
    api.compact();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.13", true, true, false, "c")],
    ));
    api.drop_watches();
    wait_until("re-list after 410", || api.list_requests() > lists).await;
    lb.wait_table("1 endpoint after re-list", |t| {
        t.upstreams[0].endpoints.len() == 1
    })
    .await;
    load.more(300).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    let metrics = lb.running.balancer.metrics().encode();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roundhouse_discovery_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors >= 1.0, "watch errors are counted:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstreams_get_reasons_and_do_not_affect_others() {
    let b = backends_on_one_port(&["a"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.11", true, true, false, "a")],
    ));
    api.put_upstream("backend", json!({"service": "backend"}));
    api.put_upstream(
        "ghost",
        json!({"service": "ghost", "match": {"pathPrefix": "/ghost"}}),
    );
    api.put_upstream(
        "badport",
        json!({"service": "backend", "port": "grpc", "match": {"pathPrefix": "/bad"}}),
    );
    let lb = start_lb(&api, false);
    let reason = |name: &str| {
        api.upstream(name)
            .map(|u| u["status"]["conditions"][0]["reason"].clone())
    };
    wait_until("ghost status", || {
        reason("ghost") == Some(json!("ServiceNotFound"))
    })
    .await;
    wait_until("badport status", || {
        reason("badport") == Some(json!("InvalidSpec"))
    })
    .await;
    wait_until("backend status", || {
        reason("backend") == Some(json!("EndpointsAvailable"))
    })
    .await;
    let bad = api.upstream("badport").unwrap();
    assert_eq!(bad["status"]["conditions"][0]["status"], "False");
    assert!(
        bad["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("grpc")
    );
    // The valid one serves; the missing Service answers 503; the invalid one
    // is not routed, so its prefix falls through to the catch-all.
    let mut conn = Conn::open(lb.addr).await.unwrap();
    assert_eq!(
        conn.get("/host").await.unwrap(),
        (StatusCode::OK, "a\n".into())
    );
    assert_eq!(
        conn.get("/ghost/x").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        conn.get("/bad/x").await.unwrap().0,
        StatusCode::NOT_FOUND,
        "served by backend, which has no /bad/x"
    );
    assert_eq!(b[0].hits(), 2);
    // Fixing the spec makes it Ready (generation 2 observed).
    api.put_upstream(
        "badport",
        json!({"service": "backend", "port": "http", "match": {"pathPrefix": "/bad"}}),
    );
    wait_until("badport fixed", || {
        reason("badport") == Some(json!("EndpointsAvailable"))
    })
    .await;
    assert_eq!(
        api.upstream("badport").unwrap()["status"]["observedGeneration"],
        2
    );
}
