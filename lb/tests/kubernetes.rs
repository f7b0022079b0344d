//! The Kubernetes source against an in-process fake API server, with a real
//! kube-rs Client (built from a kubeconfig) and real backends on 127.0.0.x.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, Fault, crd_schema, slice};
use common::*;
use futures::FutureExt;
use http::StatusCode;
use lb::discovery::Discovery;
use lb::discovery::k8s::{DefaultUpstream, KubernetesDiscovery};
use lb::selection::Policy;
use serde_json::json;

fn start_lb(api: &FakeApi, default: bool) -> TestLb {
    start_lb_with(api, default, None)
}

/// The LB over `api`; with `default`, it creates Upstream `backend`;
/// `status_timeout` overrides the status-write deadline.
fn start_lb_with(api: &FakeApi, default: bool, status_timeout: Option<Duration>) -> TestLb {
    let kubeconfig = api.kubeconfig();
    TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                let d = default
                    .then(|| DefaultUpstream::new("backend", "backend", Some("http")).unwrap());
                let mut k = KubernetesDiscovery::new(client, "roundhouse", d);
                if let Some(t) = status_timeout {
                    k = k.with_status_timeout(t);
                }
                Box::new(k) as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    )
}

/// The sum of every series of metric `name` (any labels).
fn metric_sum(lb: &TestLb, name: &str) -> f64 {
    lb.running
        .balancer
        .metrics()
        .encode()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// One series, e.g. `roundhouse_status_writes_total{result="ok"}` (0 if absent).
fn metric(lb: &TestLb, series: &str) -> f64 {
    lb.running
        .balancer
        .metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Log capture: INFO and above from the `lb` crate, in every test of this
/// binary (events carry the Upstream name, so tests use their own names).
mod logs {
    use std::fmt::Write as _;
    use std::sync::{Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    /// One captured event: level and `message k=v …`.
    #[derive(Debug, Clone)]
    pub struct Line {
        pub level: tracing::Level,
        pub text: String,
    }

    static LINES: OnceLock<Mutex<Vec<Line>>> = OnceLock::new();

    struct Capture;

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0.push_str(value);
            } else {
                let _ = write!(self.0, " {}={value}", field.name());
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut f = Fields(String::new());
            event.record(&mut f);
            LINES.get().unwrap().lock().unwrap().push(Line {
                level: *event.metadata().level(),
                text: f.0,
            });
        }
    }

    /// Starts capturing (once per process).
    pub fn init() {
        LINES.get_or_init(|| {
            let filter =
                tracing_subscriber::filter::Targets::new().with_target("lb", tracing::Level::INFO);
            let _ = tracing_subscriber::registry()
                .with(Capture.with_filter(filter))
                .try_init();
            Mutex::new(Vec::new())
        });
    }

    /// Captured WARN lines containing every one of `needles`.
    pub fn warnings(needles: &[&str]) -> Vec<Line> {
        LINES
            .get()
            .expect("logs::init() first")
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.level == tracing::Level::WARN && needles.iter().all(|n| l.text.contains(n))
            })
            .cloned()
            .collect()
    }
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
    let errors = metric_sum(&lb, "roundhouse_discovery_errors_total");
    assert!(errors >= 1.0, "watch errors are counted");
    // In sync again: the last-sync time is recent.
    wait_until("last sync advances after the re-list", || {
        let last = metric_sum(&lb, "roundhouse_discovery_last_sync_timestamp_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        now - last < 3.0
    })
    .await;
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

fn reason_of(api: &FakeApi, name: &str) -> Option<serde_json::Value> {
    api.upstream(name)
        .map(|u| u["status"]["conditions"][0]["reason"].clone())
        .filter(|r| !r.is_null())
}

/// Issue 17, defects 1-3: one Upstream whose status the API server rejects
/// (422, e.g. an admission webhook) forever. The other three get their
/// status at once; the rejected one is tried once, logged once, and tried
/// again only when its inputs change; status failures are not counted as
/// discovery errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_status_blocks_no_other_and_is_logged_once() {
    logs::init();
    let b = backends_on_one_port(&["a", "b"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    let denial = "admission webhook \"quota.example\" denied the request: status quota exceeded";
    api.fail_status("backend", Fault::invalid(denial), None);
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.11", true, true, false, "a")],
    ));
    // "backend" sorts first, as in the report.
    api.put_upstream("backend", json!({"service": "backend", "port": "http"}));
    api.put_upstream(
        "bad-port",
        json!({"service": "backend", "port": "grpc", "match": {"pathPrefix": "/bad"}}),
    );
    api.put_upstream(
        "date",
        json!({"service": "date", "match": {"pathPrefix": "/date"}}),
    );
    api.put_upstream(
        "fourth",
        json!({"service": "backend", "port": "http", "match": {"pathPrefix": "/4"}}),
    );
    let lb = start_lb(&api, false);
    for (name, reason) in [
        ("bad-port", "InvalidSpec"),
        ("date", "ServiceNotFound"),
        ("fourth", "EndpointsAvailable"),
    ] {
        wait_until(&format!("status of {name}"), || {
            reason_of(&api, name) == Some(json!(reason))
        })
        .await;
    }
    wait_until("stale gauge", || {
        metric(&lb, "roundhouse_upstream_status_stale") == 1.0
    })
    .await;
    assert_eq!(api.status_attempts("backend"), 1, "a 422 is not retried");
    assert!(api.upstream("backend").unwrap()["status"].is_null());
    assert_eq!(
        metric(
            &lb,
            r#"roundhouse_status_writes_total{result="permanent_error"}"#
        ),
        1.0
    );
    assert!(metric(&lb, r#"roundhouse_status_writes_total{result="ok"}"#) >= 3.0);
    assert_eq!(
        metric_sum(&lb, "roundhouse_discovery_errors_total"),
        0.0,
        "a failed status write is not a discovery error"
    );
    assert_eq!(
        metric(
            &lb,
            r#"roundhouse_discovery_errors_total{resource="endpointslices"}"#
        ),
        0.0
    );
    let logged = logs::warnings(&["upstream=backend", "quota exceeded"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert!(logged[0].text.contains("422"), "{logged:#?}");

    // backend's inputs change (a second endpoint): one new attempt, same
    // error, not logged again.
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
    wait_until("retry after the change", || {
        api.status_attempts("backend") == 2
    })
    .await;
    wait_until("fourth sees the change too", || {
        api.upstream("fourth").unwrap()["status"]["ready"] == "2/2"
    })
    .await;
    // Something unrelated to backend: date's Service appears.
    api.put_slice(slice(
        "date-1",
        "date",
        "http",
        port,
        &[("127.0.0.11", true, true, false, "a")],
    ));
    wait_until("date routed", || {
        reason_of(&api, "date") == Some(json!("EndpointsAvailable"))
    })
    .await;
    assert_eq!(
        api.status_attempts("backend"),
        2,
        "no retry without a change"
    );
    assert_eq!(
        logs::warnings(&["upstream=backend", "quota exceeded"]).len(),
        1
    );

    // The webhook relents; the next change of the object gets through.
    api.clear_fault("backend");
    api.put_upstream("backend", json!({"service": "backend", "port": "http"}));
    wait_until("backend status", || {
        reason_of(&api, "backend") == Some(json!("EndpointsAvailable"))
    })
    .await;
    wait_until("nothing stale", || {
        metric(&lb, "roundhouse_upstream_status_stale") == 0.0
    })
    .await;
}

/// Retryable failures (409, 500, a write that never answers) are retried
/// with back-off, and the others are written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_status_failures_are_retried_and_a_hang_times_out() {
    let api = FakeApi::start();
    api.fail_status("conflicted", Fault::conflict(), Some(2));
    api.fail_status("erroring", Fault::internal(), Some(1));
    api.fail_status("hanging", Fault::Hang, Some(1));
    for (i, name) in ["conflicted", "erroring", "hanging", "plain"]
        .iter()
        .enumerate()
    {
        api.put_upstream(
            name,
            json!({"service": format!("svc-{i}"), "match": {"pathPrefix": format!("/{name}")}}),
        );
    }
    let lb = start_lb_with(&api, false, Some(Duration::from_millis(300)));
    for name in ["plain", "conflicted", "erroring", "hanging"] {
        wait_until(&format!("status of {name}"), || {
            reason_of(&api, name) == Some(json!("ServiceNotFound"))
        })
        .await;
    }
    assert_eq!(api.status_attempts("conflicted"), 3);
    assert_eq!(api.status_attempts("erroring"), 2);
    assert_eq!(api.status_attempts("hanging"), 2);
    assert_eq!(api.status_attempts("plain"), 1);
    wait_until("counters", || {
        metric(&lb, r#"roundhouse_status_writes_total{result="ok"}"#) == 4.0
    })
    .await;
    assert_eq!(
        metric(
            &lb,
            r#"roundhouse_status_writes_total{result="retryable_error"}"#
        ),
        4.0
    );
    assert_eq!(metric_sum(&lb, "roundhouse_discovery_errors_total"), 0.0);
}

/// An API server without server-side apply on the status subresource
/// (415): statuses are written as merge patches instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_when_server_side_apply_is_rejected() {
    let api = FakeApi::start();
    api.reject_status_apply(true);
    api.put_upstream("merge-only", json!({"service": "nothing-here"}));
    let _lb = start_lb(&api, false);
    wait_until("status written", || {
        reason_of(&api, "merge-only") == Some(json!("ServiceNotFound"))
    })
    .await;
    let writes = api.status_writes("merge-only");
    assert_eq!(writes.len(), 1);
    assert!(
        writes[0].get("apiVersion").is_none(),
        "a merge patch: {}",
        writes[0]
    );
}

/// The server prunes what its (older) CRD does not know: the status it
/// returns never equals the computed one. It is written once per change,
/// not again after every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_status_is_not_rewritten() {
    let b = backends_on_one_port(&["a"]);
    let port = b[0].addr.port();
    let api = FakeApi::start();
    let mut old_crd = crd_schema();
    old_crd["properties"]["status"]["properties"]["endpoints"]["items"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("pod")
        .expect("the CRD has status.endpoints[].pod");
    api.set_upstream_schema(old_crd);
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        port,
        &[("127.0.0.11", true, true, false, "a")],
    ));
    api.put_upstream(
        "pruned",
        json!({"service": "backend", "port": "http", "unknown": 1}),
    );
    assert!(
        api.upstream("pruned").unwrap()["spec"]
            .get("unknown")
            .is_none(),
        "pruned"
    );
    let lb = start_lb(&api, false);
    wait_until("status", || {
        reason_of(&api, "pruned") == Some(json!("EndpointsAvailable"))
    })
    .await;
    let stored = api.upstream("pruned").unwrap();
    assert!(
        stored["status"]["endpoints"][0].get("pod").is_none(),
        "{stored}"
    );
    assert_eq!(stored["status"]["endpoints"][0]["address"], "127.0.0.11");
    // Other Upstreams come and go, get statuses; `pruned` is left alone.
    for i in 0..3 {
        let name = format!("other-{i}");
        api.put_upstream(
            &name,
            json!({"service": "backend", "match": {"pathPrefix": format!("/{i}")}}),
        );
        wait_until("other status", || !api.status_writes(&name).is_empty()).await;
    }
    wait_until("nothing stale", || {
        metric(&lb, "roundhouse_upstream_status_stale") == 0.0
    })
    .await;
    assert_eq!(api.status_writes("pruned").len(), 1);
}

/// Issue 17, defect 4: with `--default-upstream`, `/readyz` stays 503 until
/// that Upstream exists and is resolved, even when creating it is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_only_once_the_default_route_exists() {
    let b = backends_on_one_port(&["a"]);
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        b[0].addr.port(),
        &[("127.0.0.11", true, true, false, "a")],
    ));
    // The create is held until the test has seen /readyz while it waits.
    api.hold_creates();
    let lb = start_lb(&api, true);
    wait_until("the LB's create of Upstream backend", || {
        api.held_creates() == 1
    })
    .await;
    let (status, _) = get_once(lb.admin, "/readyz").await.unwrap();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while Upstream backend is being created"
    );
    api.release_creates();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut not_ready = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "never ready ({not_ready} probes said not ready)"
        );
        let (status, _) = get_once(lb.admin, "/readyz").await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            not_ready += 1;
            tokio::task::yield_now().await;
            continue;
        }
        assert_eq!(status, StatusCode::OK);
        // Ready: the route must be there already (the table is applied
        // before readiness flips, and routes only grow here).
        assert_eq!(
            ready_ips(&lb, "backend"),
            ["127.0.0.11"],
            "/readyz said 200 before Upstream backend was routed (after {not_ready} 503s)"
        );
        assert_eq!(
            get_once(lb.addr, "/host").await.unwrap(),
            (StatusCode::OK, "a\n".into())
        );
        break;
    }
    assert_eq!(api.creates(), ["backend"]);
}

/// Issue 17, defect 5: two Upstreams with the same match. The older one
/// routes; the other is `Ready=False`, reason `Conflict`, naming it, with a
/// log line and a metric; deleting the older one ends the conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_match_conflict_is_reported_and_recovers() {
    logs::init();
    let old = TestBackend::start_on("127.0.0.21:0".parse().unwrap(), "old");
    let new = TestBackend::start_on("127.0.0.22:0".parse().unwrap(), "new");
    let api = FakeApi::start();
    api.put_slice(slice(
        "old-1",
        "old",
        "http",
        old.addr.port(),
        &[("127.0.0.21", true, true, false, "old")],
    ));
    api.put_slice(slice(
        "new-1",
        "new",
        "http",
        new.addr.port(),
        &[("127.0.0.22", true, true, false, "new")],
    ));
    // Created first, but sorts last by name: age decides, not the name.
    api.put_upstream("zz-older", json!({"service": "old"}));
    api.put_upstream(
        "aa-newer",
        json!({"service": "new", "match": {"pathPrefix": "/"}}),
    );
    // A different prefix overlaps only partly: legal.
    api.put_upstream(
        "aa-newer-api",
        json!({"service": "new", "match": {"pathPrefix": "/api"}}),
    );
    let lb = start_lb(&api, false);
    wait_until("conflict status", || {
        reason_of(&api, "aa-newer") == Some(json!("Conflict"))
    })
    .await;
    let cond = api.upstream("aa-newer").unwrap()["status"]["conditions"][0].clone();
    assert_eq!(cond["status"], "False");
    assert!(
        cond["message"].as_str().unwrap().contains("zz-older"),
        "{cond}"
    );
    wait_until("older status", || {
        reason_of(&api, "zz-older") == Some(json!("EndpointsAvailable"))
    })
    .await;
    wait_until("api status", || {
        reason_of(&api, "aa-newer-api") == Some(json!("EndpointsAvailable"))
    })
    .await;
    assert_eq!(metric(&lb, "roundhouse_upstream_conflicts"), 1.0);
    let logged = logs::warnings(&["upstream=aa-newer ", "conflicts_with=zz-older"]);
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(get_once(lb.addr, "/host").await.unwrap().1, "old\n");
    assert_eq!(
        get_once(lb.addr, "/api/host").await.unwrap().0,
        StatusCode::NOT_FOUND,
        "served by `new`"
    );
    assert_eq!(new.hits(), 1);

    api.delete_upstream("zz-older");
    wait_until("conflict over", || {
        reason_of(&api, "aa-newer") == Some(json!("EndpointsAvailable"))
    })
    .await;
    lb.wait_table("aa-newer routed", |t| {
        t.upstreams.iter().any(|u| &*u.name == "aa-newer")
    })
    .await;
    assert_eq!(get_once(lb.addr, "/host").await.unwrap().1, "new\n");
    assert_eq!(metric(&lb, "roundhouse_upstream_conflicts"), 0.0);
}
