//! Benchmarks of the Kubernetes discovery source against the in-process fake
//! API server of the integration tests (`lb/tests/common/fake_api.rs`).
//! A `harness = false` bench target: `cargo bench` builds it with the
//! release profile and runs the benchmarks named on its command line (all
//! five, one after another, when none is):
//!
//! ```sh
//! cargo bench -p lb --bench discovery                  # all of them
//! cargo bench -p lb --bench discovery -- scale hot_path
//! # or: bench/discovery.sh   (the Markdown report on stdout)
//! ```
//!
//! 1. `propagation`: time from an EndpointSlice change written to the fake
//!    API (`put_slice` returning) to the first request *through the proxy*
//!    answered by the new backend; and, separately, to the routing table
//!    holding the new endpoint. The LB runs in-process (`TestLb`).
//! 2. `scale`: the real `lb serve --kubernetes` binary with 100 Upstreams and
//!    1,000 endpoints in 100 EndpointSlices, one slice change per second:
//!    RSS and CPU of the LB process from `/proc/PID`. Then request-level
//!    propagation through that binary at that scale.
//! 3. `hot_path`: wrk through the real binary with 1 Upstream vs 100
//!    Upstreams (99 that do not match the requests), alternating rounds.
//! 4. `reconnect`: the fake API server down for `OUTAGE_SECONDS`, then
//!    back; time from the first change written after the restart to the
//!    first request through the proxy answered by the new backend.
//! 5. `gateway`: Gateway API mode (in-process LB): an HTTPRoute or endpoint
//!    change to the first request routed accordingly, the measured route
//!    alone and next to 1,000 HTTPRoutes × 5 rules.
//!
//! Knobs (environment): `CHANGES` (100), `GAP_MS` (50), `SCALE_SECONDS` (60),
//! `SCALE_PROBE_CHANGES` (50), `ROUNDS` (3), `DURATION` (10), `CONNECTIONS`
//! (32), `THREADS` (2), `WORKERS` (2), `WARMUP` (2), `OUTAGE_SECONDS` (10),
//! `RECONNECT_ROUNDS` (5), `LB_BIN` (default: the
//! `lb` binary cargo built with this benchmark), `BENCH_REPORT` (append the
//! Markdown results to this file as well as printing them).

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, NS, slice};
use common::*;
use futures::FutureExt;
use http::StatusCode;
use lb::discovery::Discovery;
use lb::discovery::k8s::KubernetesDiscovery;
use lb::selection::Policy;
use serde_json::{Value, json};

// ---------------------------------------------------------------- helpers

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a non-negative integer, got {v:?}")),
        Err(_) => default,
    }
}

/// Prints a Markdown block and appends it to `BENCH_REPORT` if set.
fn report(text: &str) {
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open BENCH_REPORT {path}: {e}"));
        writeln!(f, "{text}").unwrap();
    }
}

fn note(text: &str) {
    eprintln!("==> {text}");
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn summary_row(label: &str, samples: &[Duration]) -> String {
    let mut v = samples.to_vec();
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} |",
        v.len(),
        ms(v[0]),
        ms(pct(&v, 0.50)),
        ms(pct(&v, 0.90)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap()),
        ms(mean),
    )
}

const SUMMARY_HEAD: &str = "| measured at | changes | min | p50 | p90 | p99 | max | mean |\n\
                            | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/{pid}/status"))
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn lb_bin() -> PathBuf {
    std::env::var_os("LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lb")))
}

/// `lb serve --kubernetes` as a child process, its kubeconfig pointing at
/// `api`. Killed (SIGKILL, by its own PID) on drop.
struct LbProc {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl LbProc {
    fn start(api: &FakeApi, tag: &str) -> LbProc {
        let dir = std::env::temp_dir().join(format!(
            "roundhouse-bench-discovery-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let log = std::fs::File::create(dir.join("lb.log")).unwrap();
        let (addr, admin) = (free_addr(), free_addr());
        let workers = knob("WORKERS", 2).to_string();
        let mut cmd = Command::new(lb_bin());
        cmd.args(["serve", "--kubernetes", "--namespace", NS])
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--workers", &workers]);
        // Nothing from the caller's environment may change the setup.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LB_")
                || k.to_string_lossy().starts_with("KUBERNETES_")
            {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", lb_bin().display()));
        LbProc {
            child,
            addr,
            admin,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("lb exited early ({status}); log:\n{}", self.log());
            }
            if matches!(
                get_once(self.admin, "/readyz").await,
                Ok((StatusCode::OK, _))
            ) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lb not ready after 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin `/endpoints` document.
    async fn endpoints(&self) -> Value {
        let (status, body) = get_once(self.admin, "/endpoints").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// (upstreams, endpoints) in the current table.
    async fn counts(&self) -> (usize, usize) {
        let doc = self.endpoints().await;
        let ups = doc["upstreams"].as_array().cloned().unwrap_or_default();
        let eps = ups
            .iter()
            .map(|u| u["endpoints"].as_array().map_or(0, Vec::len))
            .sum();
        (ups.len(), eps)
    }

    async fn wait_counts(&self, upstreams: usize, endpoints: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.counts().await;
            if c == (upstreams, endpoints) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "table never reached {upstreams} upstreams / {endpoints} endpoints (at {c:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LbProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KEEP_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An EndpointSlice of `svc-i` with 10 endpoints 10.0.i.1‥10.0.i.10 (port
/// 8080); `generation` > 0 moves the last one to a new address, as a
/// rolling update replacing one pod would.
fn scale_slice(i: usize, generation: u64) -> Value {
    let eps: Vec<(String, String)> = (1..=10)
        .map(|j| {
            let ip = if j == 10 && generation > 0 {
                format!("10.{}.{}.10", 1 + generation % 250, i)
            } else {
                format!("10.0.{i}.{j}")
            };
            let pod = if j == 10 {
                format!("svc-{i}-pod-{j}-{generation}")
            } else {
                format!("svc-{i}-pod-{j}")
            };
            (ip, pod)
        })
        .collect();
    let refs: Vec<(&str, bool, bool, bool, &str)> = eps
        .iter()
        .map(|(ip, pod)| (ip.as_str(), true, true, false, pod.as_str()))
        .collect();
    slice(
        &format!("svc-{i}-abcde"),
        &format!("svc-{i}"),
        "http",
        8080,
        &refs,
    )
}

/// Upstream `svc-i` over Service `svc-i`, under path prefix `/svc-i`
/// (distinct matches: Upstreams with the same match are a `Conflict`).
fn scale_upstream(i: usize) -> Value {
    json!({"service": format!("svc-{i}"), "match": {"pathPrefix": format!("/svc-{i}")}})
}

fn start_lb_in_process(api: &FakeApi) -> TestLb {
    let kubeconfig = api.kubeconfig();
    TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                Box::new(KubernetesDiscovery::new(client, NS, None)) as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    )
}

/// Sends `req()` on `conn` until the body is `want`; returns the requests sent.
async fn until_answer(
    conn: &mut Conn,
    want: &str,
    req: impl Fn() -> http::Request<http_body_util::Full<bytes::Bytes>>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let (status, body) = conn.send(req()).await.unwrap();
        n += 1;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body.trim() == want {
            return n;
        }
        assert!(Instant::now() < deadline, "{want} never answered");
    }
}

fn get_host(host: &'static str) -> impl Fn() -> http::Request<http_body_util::Full<bytes::Bytes>> {
    move || {
        http::Request::get("/host")
            .header("host", host)
            .body(http_body_util::Full::default())
            .unwrap()
    }
}

// ------------------------------------------------------ 1. propagation

async fn propagation() {
    // Alone, then next to the scale test's 100 Upstreams / 1,000 endpoints
    // (which change nothing for the measured Upstream's requests).
    for extra in [false, true] {
        run_propagation(extra).await;
    }
}

async fn run_propagation(extra: bool) {
    let changes = knob("CHANGES", 100) as usize;
    let gap = Duration::from_millis(knob("GAP_MS", 50));
    let b = backends_on_one_port(&["pod-a", "pod-b"]);
    let port = b[0].addr.port();
    let ips = ["127.0.0.11", "127.0.0.12"];
    let names = ["pod-a", "pod-b"];
    let api = FakeApi::start();
    api.put_upstream("backend", json!({"service": "backend"}));
    if extra {
        // Each under its own path prefix: two catch-alls would be a
        // Conflict (the older one serves), and `backend` must serve.
        for i in 0..100 {
            api.put_upstream(&format!("svc-{i}"), scale_upstream(i));
            api.put_slice(scale_slice(i, 0));
        }
    }
    let put = |k: usize| {
        api.put_slice(slice(
            "backend-abcde",
            "backend",
            "http",
            port,
            &[(ips[k], true, true, false, names[k])],
        ));
    };
    put(0);
    let lb = start_lb_in_process(&api);
    wait_until("readiness", || lb.running.ready.get()).await;
    let n = if extra { 101 } else { 1 };
    lb.wait_table("all upstreams", |t| t.upstreams.len() == n)
        .await;
    if extra {
        // Let the 100 first status writes (and their echoes) pass.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut conn = Conn::open(lb.addr).await.unwrap();
    until_answer(&mut conn, "pod-a", get_host("test")).await;
    // Warm both upstream connections and the watch path.
    for k in [1, 0] {
        put(k);
        until_answer(&mut conn, names[k], get_host("test")).await;
        tokio::time::sleep(gap).await;
    }
    // Plain request round trip on this keep-alive connection, for scale.
    let mut rtt = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        conn.get("/host").await.unwrap();
        rtt.push(t.elapsed());
    }

    let load_before = load_avg();
    note(&format!(
        "propagation: {changes} changes, request level (GET /host on one keep-alive connection)"
    ));
    let mut request_level = Vec::new();
    let mut sent = Vec::new();
    for i in 0..changes {
        let k = (i + 1) % 2; // 0 is in place: B, A, B, …
        tokio::time::sleep(gap).await;
        put(k);
        let t0 = Instant::now();
        sent.push(until_answer(&mut conn, names[k], get_host("test")).await);
        request_level.push(t0.elapsed());
    }
    // Leave A in place, as at the start of the pass.
    if changes % 2 == 1 {
        tokio::time::sleep(gap).await;
        put(0);
        until_answer(&mut conn, "pod-a", get_host("test")).await;
    }

    note(&format!(
        "propagation: {changes} changes, routing-table level"
    ));
    let addrs = [b[0].addr, b[1].addr];
    let mut table_level = Vec::new();
    for i in 0..changes {
        let k = (i + 1) % 2;
        tokio::time::sleep(gap).await;
        put(k);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let t = lb.running.balancer.snapshot();
            let ok = t.upstreams.iter().any(|u| {
                &*u.name == "backend" && u.endpoints.len() == 1 && u.endpoints[0].addr == addrs[k]
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "table never switched");
            std::thread::yield_now();
        }
        table_level.push(t0.elapsed());
    }
    let load_after = load_avg();

    let mut rtt_sorted = rtt.clone();
    rtt_sorted.sort();
    sent.sort_unstable();
    let over = |v: &[Duration]| v.iter().filter(|d| **d > Duration::from_millis(10)).count();
    let mut out = String::new();
    writeln!(
        out,
        "#### Propagation (in-process LB, {changes} alternating changes, {} ms apart){}\n",
        gap.as_millis(),
        if extra {
            ", next to 100 other Upstreams with 1,000 endpoints"
        } else {
            ", 1 Upstream"
        }
    )
    .unwrap();
    writeln!(out, "{SUMMARY_HEAD}").unwrap();
    writeln!(
        out,
        "{}",
        summary_row("first request answered by the new backend", &request_level)
    )
    .unwrap();
    writeln!(
        out,
        "{}",
        summary_row("routing table holds the new endpoint", &table_level)
    )
    .unwrap();
    writeln!(
        out,
        "\nChanges over 10 ms: {} (request level), {} (table level). Requests per \
         change until the new backend answered: median {}, max {}. A plain GET /host \
         round trip on the same connection: p50 {}, p99 {}. Load average {load_before} \
         before, {load_after} after.\n",
        over(&request_level),
        over(&table_level),
        sent[sent.len() / 2],
        sent.last().unwrap(),
        ms(pct(&rtt_sorted, 0.5)),
        ms(pct(&rtt_sorted, 0.99)),
    )
    .unwrap();
    report(&out);
}

// ------------------------------------------------------------- 2. scale

async fn scale() {
    let seconds = knob("SCALE_SECONDS", 60);
    let probe_changes = knob("SCALE_PROBE_CHANGES", 50) as usize;
    let gap = Duration::from_millis(knob("GAP_MS", 50));
    let tck = clk_tck() as f64;
    let api = FakeApi::start();
    for i in 0..100 {
        api.put_upstream(&format!("svc-{i}"), scale_upstream(i));
        api.put_slice(scale_slice(i, 0));
    }
    note("scale: starting lb serve --kubernetes (100 Upstreams, 1,000 endpoints)");
    let t0 = Instant::now();
    let mut lb = LbProc::start(&api, "scale");
    let pid = lb.pid();
    lb.wait_ready().await;
    let ready_after = t0.elapsed();
    lb.wait_counts(100, 1000).await;
    let synced_after = t0.elapsed();
    // Every Upstream gets its first status write; let that finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..100).any(|i| api.status_writes(&format!("svc-{i}")).is_empty()) {
        assert!(Instant::now() < deadline, "status writes never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses_after = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total_writes = |api: &FakeApi| -> usize {
        (0..100)
            .map(|i| api.status_writes(&format!("svc-{i}")).len())
            .sum()
    };

    // Idle: 5 s with nothing changing (the fake sends a watch bookmark
    // every 200 ms on each of the two watches).
    let rss_idle = status_kb(pid, "VmRSS");
    let c0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / tck / 5.0;

    note(&format!(
        "scale: one EndpointSlice change per second for {seconds} s"
    ));
    let (lists0, watches0, writes0) = (
        api.list_requests(),
        api.watch_requests(),
        total_writes(&api),
    );
    let load_before = load_avg();
    let start = Instant::now();
    let c_start = cpu_ticks(pid);
    let mut rss_samples = vec![status_kb(pid, "VmRSS")];
    let mut last = 0;
    for s in 0..seconds {
        let at = start + Duration::from_secs(s);
        tokio::time::sleep_until(at.into()).await;
        last = (s % 100) as usize;
        api.put_slice(scale_slice(last, s + 1));
        for q in 1..4 {
            tokio::time::sleep_until((at + Duration::from_millis(250 * q)).into()).await;
            rss_samples.push(status_kb(pid, "VmRSS"));
        }
    }
    tokio::time::sleep_until((start + Duration::from_secs(seconds)).into()).await;
    let window = start.elapsed();
    let c_end = cpu_ticks(pid);
    rss_samples.push(status_kb(pid, "VmRSS"));
    let load_after = load_avg();
    let hwm = status_kb(pid, "VmHWM");
    let (lists1, watches1) = (api.list_requests(), api.watch_requests());
    // The last change is in the table.
    if seconds > 0 {
        let want = format!("10.{}.{}.10:8080", 1 + seconds % 250, last);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let doc = lb.endpoints().await;
            if doc.to_string().contains(&want) {
                break;
            }
            assert!(Instant::now() < deadline, "last change {want} not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let writes1 = total_writes(&api);
    lb.wait_counts(100, 1000).await;
    let window_cpu = (c_end - c_start) as f64 / tck;
    let rss_max = *rss_samples.iter().max().unwrap();
    let rss_end = *rss_samples.last().unwrap();

    // Request-level propagation through the real binary at that scale: a
    // 101st Upstream (host match) for two real backends.
    note(&format!(
        "scale: request-level propagation through the binary, {probe_changes} changes"
    ));
    let b = backends_on_one_port(&["pod-a", "pod-b"]);
    let port = b[0].addr.port();
    let ips = ["127.0.0.11", "127.0.0.12"];
    let names = ["pod-a", "pod-b"];
    let put = |k: usize| {
        api.put_slice(slice(
            "probe-abcde",
            "probe",
            "http",
            port,
            &[(ips[k], true, true, false, names[k])],
        ));
    };
    api.put_upstream(
        "probe",
        json!({"service": "probe", "match": {"host": "probe.test"}}),
    );
    put(0);
    lb.wait_counts(101, 1001).await;
    let mut conn = Conn::open(lb.addr).await.unwrap();
    until_answer(&mut conn, "pod-a", get_host("probe.test")).await;
    for k in [1, 0] {
        tokio::time::sleep(gap).await;
        put(k);
        until_answer(&mut conn, names[k], get_host("probe.test")).await;
    }
    let mut probe = Vec::new();
    for i in 0..probe_changes {
        let k = (i + 1) % 2;
        tokio::time::sleep(gap).await;
        put(k);
        let t = Instant::now();
        until_answer(&mut conn, names[k], get_host("probe.test")).await;
        probe.push(t.elapsed());
    }
    let log_lines = lb.log().lines().count();

    let mut out = String::new();
    writeln!(
        out,
        "#### Scale (real `lb serve --kubernetes`, 100 Upstreams, 1,000 endpoints in 100 EndpointSlices)\n"
    )
    .unwrap();
    writeln!(out, "| what | value |\n| --- | ---: |").unwrap();
    writeln!(out, "| start → /readyz 200 | {} |", ms(ready_after)).unwrap();
    writeln!(
        out,
        "| start → table has 100 upstreams / 1,000 endpoints | {} |",
        ms(synced_after)
    )
    .unwrap();
    writeln!(
        out,
        "| start → all 100 Upstream statuses written | {} |",
        ms(statuses_after)
    )
    .unwrap();
    writeln!(out, "| RSS after sync, idle | {} |", mib(rss_idle)).unwrap();
    writeln!(
        out,
        "| CPU idle (5 s, watch bookmarks only) | {:.2} % of one core |",
        idle_cpu * 100.0
    )
    .unwrap();
    writeln!(
        out,
        "| window | {:.1} s, {seconds} slice changes (1/s) |",
        window.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "| CPU over the window (utime+stime) | {:.2} s = {:.2} % of one core |",
        window_cpu,
        window_cpu / window.as_secs_f64() * 100.0
    )
    .unwrap();
    if seconds > 0 {
        writeln!(
            out,
            "| CPU per slice change (window CPU ÷ changes, idle included) | {:.2} ms |",
            window_cpu * 1e3 / seconds as f64
        )
        .unwrap();
    }
    writeln!(
        out,
        "| RSS during the window: start / max / end (sampled every 250 ms) | {} / {} / {} |",
        mib(rss_samples[0]),
        mib(rss_max),
        mib(rss_end)
    )
    .unwrap();
    writeln!(out, "| VmHWM (peak RSS since start) | {} |", mib(hwm)).unwrap();
    writeln!(
        out,
        "| status writes during the window | {} |",
        writes1 - writes0
    )
    .unwrap();
    writeln!(
        out,
        "| list / watch requests during the window | {} / {} |",
        lists1 - lists0,
        watches1 - watches0
    )
    .unwrap();
    writeln!(
        out,
        "| LB log lines (RUST_LOG=info), whole run | {log_lines} |"
    )
    .unwrap();
    writeln!(
        out,
        "\nLoad average {load_before} before the window, {load_after} after.\n"
    )
    .unwrap();
    if !probe.is_empty() {
        writeln!(
            out,
            "Request-level propagation through this binary at this scale (a 101st Upstream \
             with a host match, slice alternating between two real backends, {probe_changes} \
             changes {} ms apart):\n",
            gap.as_millis()
        )
        .unwrap();
        writeln!(out, "{SUMMARY_HEAD}").unwrap();
        writeln!(
            out,
            "{}\n",
            summary_row("first request answered by the new backend", &probe)
        )
        .unwrap();
    }
    report(&out);
}

// ---------------------------------------------------------- 3. hot path

#[derive(Debug, Clone, Default)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

fn parse_latency_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, mult) = if let Some(x) = v.strip_suffix("us") {
        (x, 1e-3)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_ms = parse_latency_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = parse_latency_ms(v);
        } else if t.contains("requests in") {
            r.requests = t.split_whitespace().next().unwrap().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // connect N, read N, write N, timeout N
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    r
}

fn wrk(url: &str, seconds: u64) -> (WrkResult, String) {
    let threads = knob("THREADS", 2).to_string();
    let conns = knob("CONNECTIONS", 32).to_string();
    let out = Command::new("timeout")
        .arg((seconds + 20).to_string())
        .arg("wrk")
        .args(["-t", &threads, "-c", &conns, "-d", &format!("{seconds}s")])
        .args(["--timeout", "5s", "--latency", url])
        .output()
        .expect("cannot run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (parse_wrk(&text), text)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn hot_path() {
    let rounds = knob("ROUNDS", 3);
    let duration = knob("DURATION", 10);
    let warmup = knob("WARMUP", 2);
    let tck = clk_tck() as f64;
    // One real backend; both LBs route every benchmark request to it.
    let b = backends_on_one_port(&["web"]);
    let port = b[0].addr.port();
    let web_slice = || {
        slice(
            "web-abcde",
            "web",
            "http",
            port,
            &[("127.0.0.11", true, true, false, "web")],
        )
    };
    // Two fake API servers, identical EndpointSlices (the web one plus the
    // 100 × 10 of the scale test); only the Upstreams differ.
    let one = FakeApi::start();
    let hundred = FakeApi::start();
    for api in [&one, &hundred] {
        api.put_slice(web_slice());
        for i in 0..99 {
            api.put_slice(scale_slice(i, 0));
        }
        api.put_upstream("web", json!({"service": "web"}));
    }
    for i in 0..99 {
        let m = if i % 2 == 0 {
            json!({"host": format!("svc-{i}.example")})
        } else {
            json!({"pathPrefix": format!("/svc-{i}")})
        };
        hundred.put_upstream(
            &format!("svc-{i}"),
            json!({"service": format!("svc-{i}"), "match": m}),
        );
    }
    let mut lb1 = LbProc::start(&one, "one");
    let mut lb100 = LbProc::start(&hundred, "hundred");
    lb1.wait_ready().await;
    lb100.wait_ready().await;
    lb1.wait_counts(1, 1).await;
    lb100.wait_counts(100, 991).await;
    for lb in [&lb1, &lb100] {
        let (s, body) = get_once(lb.addr, "/host").await.unwrap();
        assert_eq!((s, body.trim()), (StatusCode::OK, "web"));
    }
    // Let the status writes of the 100 finish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = [
        status_kb(lb1.pid(), "VmRSS"),
        status_kb(lb100.pid(), "VmRSS"),
    ];

    let targets = [("1 Upstream", &lb1), ("100 Upstreams", &lb100)];
    if warmup > 0 {
        for (name, lb) in targets {
            note(&format!("hot path: warm-up {name}, {warmup} s"));
            wrk(&format!("http://{}/host", lb.addr), warmup);
        }
    }
    let load_before = load_avg();
    let mut results: BTreeMap<&str, Vec<(WrkResult, f64, String)>> = BTreeMap::new();
    for r in 0..rounds {
        let order: Vec<_> = if r % 2 == 0 {
            targets.to_vec()
        } else {
            targets.iter().rev().cloned().collect()
        };
        for (name, lb) in order {
            note(&format!("hot path: round {} of {rounds}, {name}", r + 1));
            let c0 = cpu_ticks(lb.pid());
            let (res, _) = wrk(&format!("http://{}/host", lb.addr), duration);
            let cpu = (cpu_ticks(lb.pid()) - c0) as f64 / tck;
            let us_per_req = if res.requests > 0 {
                cpu * 1e6 / res.requests as f64
            } else {
                f64::NAN
            };
            results
                .entry(name)
                .or_default()
                .push((res, us_per_req, load_avg()));
        }
    }
    let load_after = load_avg();
    let rss_after = [
        status_kb(lb1.pid(), "VmRSS"),
        status_kb(lb100.pid(), "VmRSS"),
    ];
    let conns = knob("CONNECTIONS", 32);
    let threads = knob("THREADS", 2);

    let mut out = String::new();
    writeln!(
        out,
        "#### Hot path: 1 vs 100 Upstreams (real binary, `wrk -t{threads} -c{conns} -d{duration}s --latency`, {rounds} alternating rounds, medians)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| LB with | req/s (median) | p50 | p99 | LB CPU µs/request | req/s per round | errors | RSS before / after |\n\
         | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"
    )
    .unwrap();
    let mut med = BTreeMap::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let rs = &results[name];
        let rps = median(rs.iter().map(|r| r.0.rps).collect());
        med.insert(*name, rps);
        writeln!(
            out,
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.1} | {} | {} | {} / {} |",
            rps,
            median(rs.iter().map(|r| r.0.p50_ms).collect()),
            median(rs.iter().map(|r| r.0.p99_ms).collect()),
            median(rs.iter().map(|r| r.1).collect()),
            rs.iter()
                .map(|r| format!("{:.0}", r.0.rps))
                .collect::<Vec<_>>()
                .join(", "),
            rs.iter().map(|r| r.0.errors).sum::<u64>(),
            mib(rss_before[i]),
            mib(rss_after[i]),
        )
        .unwrap();
    }
    writeln!(
        out,
        "\n**Ratio 100 Upstreams / 1 Upstream (median req/s): {:.3}.** Load average \
         {load_before} before the rounds, {load_after} after; after each run (1 Upstream runs, then 100 Upstreams runs): {}.\n",
        med["100 Upstreams"] / med["1 Upstream"],
        results
            .values()
            .flat_map(|v| v.iter().map(|r| r.2.split(' ').next().unwrap_or("").to_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    report(&out);
}

// ----------------------------------------------------------- 4. reconnect

/// Reconnect-to-routed after an API server outage: the LB in-process with
/// one Upstream over a slice that alternates between two backends. Each
/// round kills the fake API server (listener and connections), waits
/// `OUTAGE_SECONDS`, starts it again on the same port with its state, writes
/// the slice change right away, and measures from that write to the first
/// request through the proxy answered by the new backend (one request per
/// millisecond on one keep-alive connection). What it measures is how long
/// the watches take to notice that the server is back: their back-off.
async fn reconnect() {
    let outage = Duration::from_secs(knob("OUTAGE_SECONDS", 10));
    let rounds = knob("RECONNECT_ROUNDS", 5) as usize;
    let b = backends_on_one_port(&["pod-a", "pod-b"]);
    let port = b[0].addr.port();
    let ips = ["127.0.0.11", "127.0.0.12"];
    let names = ["pod-a", "pod-b"];
    let mut api = FakeApi::start();
    api.put_upstream("backend", json!({"service": "backend"}));
    let put = |api: &FakeApi, k: usize| {
        api.put_slice(slice(
            "backend-abcde",
            "backend",
            "http",
            port,
            &[(ips[k], true, true, false, names[k])],
        ));
    };
    put(&api, 0);
    let lb = start_lb_in_process(&api);
    wait_until("readiness", || lb.running.ready.get()).await;
    let mut conn = Conn::open(lb.addr).await.unwrap();
    until_answer(&mut conn, "pod-a", get_host("test")).await;

    let load_before = load_avg();
    let mut samples = Vec::new();
    let mut relists = Vec::new();
    for round in 0..rounds {
        let k = (round + 1) % 2;
        note(&format!(
            "reconnect: round {}/{rounds}: API server down for {outage:?}",
            round + 1
        ));
        api.kill();
        tokio::time::sleep(outage).await;
        let (lists, watches) = (api.list_requests(), api.watch_requests());
        api.restart();
        put(&api, k);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(120);
        loop {
            let (status, body) = conn.get("/host").await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            if body.trim() == names[k] {
                break;
            }
            assert!(Instant::now() < deadline, "{} never answered", names[k]);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed());
        relists.push((api.list_requests() - lists, api.watch_requests() - watches));
        // Back to a steady state before the next outage.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let load_after = load_avg();
    let mut out = String::new();
    writeln!(
        out,
        "##### Reconnect after a {}-second API server outage ({rounds} rounds)\n\n\
         | measured at | outages | min | p50 | p90 | p99 | max | mean |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{}\n\n\
         Per round: {}. Lists / watches served per round until routed: {}. \
         Load average {load_before} before, {load_after} after.\n",
        outage.as_secs(),
        summary_row(
            "change written after restart → first request answered by the new backend",
            &samples
        ),
        samples
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", "),
        relists
            .iter()
            .map(|(l, w)| format!("{l}/{w}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
    .unwrap();
    report(&out);
}

// ------------------------------------------------ 5. Gateway API propagation

/// A Service `name` in NS with one port `http` (8080).
fn gw_service(name: &str) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"ports": [{"name": "http", "port": 8080}]}})
}

/// HTTPRoute `name` on Gateway `gw` for `host`, with `rules` prefixes all
/// to Service `svc`.
fn gw_route(name: &str, host: &str, prefixes: &[String], svc: &str) -> Value {
    let rules: Vec<Value> = prefixes
        .iter()
        .map(|p| {
            json!({"matches": [{"path": {"type": "PathPrefix", "value": p}}],
                   "backendRefs": [{"name": svc, "port": 8080}]})
        })
        .collect();
    json!({"metadata": {"name": name},
           "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host], "rules": rules}})
}

/// Route or endpoint change to routed, in Gateway API mode (in-process LB):
/// the measured HTTPRoute alone, then next to 1,000 HTTPRoutes × 5 rules
/// (100 Services, 1,000 endpoints). Two kinds of change, alternating:
/// the measured Service's EndpointSlice moving between two pods, and the
/// measured HTTPRoute's backendRef moving between two Services.
async fn gateway_propagation() {
    for extra in [false, true] {
        run_gateway_propagation(extra).await;
    }
}

async fn run_gateway_propagation(extra: bool) {
    use common::fake_api::Kind;
    let changes = knob("CHANGES", 100) as usize;
    let gap = Duration::from_millis(knob("GAP_MS", 50));
    let b = backends_on_one_port(&["pod-a", "pod-b"]);
    let port = b[0].addr.port();
    let api = FakeApi::start_gateway();
    api.put(Kind::Namespace, json!({"metadata": {"name": NS}}));
    api.put(
        Kind::GatewayClass,
        json!({"metadata": {"name": "roundhouse"}, "spec": {"controllerName": "roundhouse.dev/gateway-controller"}}),
    );
    api.put(
        Kind::Gateway,
        json!({"metadata": {"name": "gw"}, "spec": {"gatewayClassName": "roundhouse",
               "listeners": [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}),
    );
    for svc in ["backend", "backend-a", "backend-b"] {
        api.put(Kind::Service, gw_service(svc));
    }
    let pod = |svc: &str, k: usize| {
        let (ip, name) = [("127.0.0.11", "pod-a"), ("127.0.0.12", "pod-b")][k];
        slice(
            &format!("{svc}-slice"),
            svc,
            "http",
            port,
            &[(ip, true, true, false, name)],
        )
    };
    api.put_slice(pod("backend", 0));
    api.put_slice(pod("backend-a", 0));
    api.put_slice(pod("backend-b", 1));
    let measured = |svc: &str| gw_route("measured", "test", &["/".to_owned()], svc);
    api.put(Kind::HttpRoute, measured("backend"));
    if extra {
        for i in 0..100 {
            api.put(Kind::Service, gw_service(&format!("svc-{i}")));
            api.put_slice(scale_slice(i, 0));
        }
        for i in 0..1000 {
            let prefixes: Vec<String> = (0..5).map(|r| format!("/r{r}")).collect();
            api.put(
                Kind::HttpRoute,
                gw_route(
                    &format!("route-{i}"),
                    &format!("r{i}.example"),
                    &prefixes,
                    &format!("svc-{}", i % 100),
                ),
            );
        }
    }
    let kubeconfig = api.kubeconfig();
    let lb = TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                Box::new(lb::discovery::k8s::gateway::GatewayDiscovery::new(
                    client,
                    NS,
                    lb::discovery::k8s::gateway::GatewayConfig {
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
    wait_until("readiness", || lb.running.ready.get()).await;
    let mut conn = Conn::open(lb.addr).await.unwrap();
    until_answer(&mut conn, "pod-a", get_host("test")).await;
    if extra {
        // Let the first status writes (1,000 routes) and their echoes pass.
        let deadline = Instant::now() + Duration::from_secs(120);
        while api
            .get(Kind::HttpRoute, NS, "route-999")
            .is_none_or(|r| r["status"].is_null())
        {
            assert!(Instant::now() < deadline, "statuses never written");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let load_before = load_avg();
    note(&format!("gateway propagation: {changes} endpoint changes"));
    let names = ["pod-a", "pod-b"];
    let mut endpoint_level = Vec::new();
    for i in 0..changes {
        let k = (i + 1) % 2;
        tokio::time::sleep(gap).await;
        api.put_slice(pod("backend", k));
        let t0 = Instant::now();
        until_answer(&mut conn, names[k], get_host("test")).await;
        endpoint_level.push(t0.elapsed());
    }
    if changes % 2 == 1 {
        api.put_slice(pod("backend", 0));
        until_answer(&mut conn, "pod-a", get_host("test")).await;
    }
    note(&format!("gateway propagation: {changes} route changes"));
    let mut route_level = Vec::new();
    for i in 0..changes {
        let k = (i + 1) % 2;
        tokio::time::sleep(gap).await;
        api.put(Kind::HttpRoute, measured(["backend-a", "backend-b"][k]));
        let t0 = Instant::now();
        until_answer(&mut conn, names[k], get_host("test")).await;
        route_level.push(t0.elapsed());
    }
    let load_after = load_avg();
    let over = |v: &[Duration]| v.iter().filter(|d| **d > Duration::from_millis(10)).count();
    let mut out = String::new();
    writeln!(
        out,
        "#### Gateway API propagation (in-process LB, {changes} alternating changes each, {} ms apart){}\n",
        gap.as_millis(),
        if extra {
            ", next to 1,000 HTTPRoutes × 5 rules (100 Services, 1,000 endpoints)"
        } else {
            ", 1 HTTPRoute"
        }
    )
    .unwrap();
    writeln!(out, "{SUMMARY_HEAD}").unwrap();
    writeln!(
        out,
        "{}",
        summary_row(
            "endpoint change → first request answered by the new pod",
            &endpoint_level
        )
    )
    .unwrap();
    writeln!(
        out,
        "{}",
        summary_row(
            "HTTPRoute backendRef change → first request answered by the other Service",
            &route_level
        )
    )
    .unwrap();
    writeln!(
        out,
        "\nChanges over 10 ms: {} (endpoint), {} (route). Load average {load_before} before, \
         {load_after} after.\n",
        over(&endpoint_level),
        over(&route_level),
    )
    .unwrap();
    report(&out);
}

/// The benchmarks, by name, in the order they run.
const BENCHMARKS: [&str; 5] = ["propagation", "scale", "hot_path", "reconnect", "gateway"];

/// Runs the benchmarks named on the command line (all of them when none
/// is), one after another, each on a fresh two-thread runtime as the
/// in-process LB's tests use. `cargo bench` adds `--bench`; flags are
/// ignored.
fn main() {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for name in &named {
        assert!(
            BENCHMARKS.contains(&name.as_str()),
            "unknown benchmark {name:?}: one of {BENCHMARKS:?}"
        );
    }
    for name in BENCHMARKS {
        if !named.is_empty() && !named.iter().any(|n| n == name) {
            continue;
        }
        note(&format!("benchmark {name}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            match name {
                "propagation" => propagation().await,
                "scale" => scale().await,
                "hot_path" => hot_path().await,
                "gateway" => gateway_propagation().await,
                _ => reconnect().await,
            }
        });
    }
}
