//! The Ingress corpus: Ingress objects written the way clusters use them,
//! each with the requests that must reach which backend with which
//! headers, through the real `lb` binary in Ingress mode (`lb serve
//! --kubernetes --ingress`, the API server from `KUBECONFIG`), the fake API
//! server (tests/common/fake_api.rs, which also checks at the end that the
//! lb made only the calls manifests/ingress/20-rbac.yaml grants) and real
//! backends in echo mode (`backend --echo`: every answer describes the
//! request it received).
//!
//! One case per file in `lb/tests/ingress-corpus/` (YAML), one test per
//! case (`corpus!` below; `every_corpus_file_has_a_test` keeps the two
//! lists equal). A case:
//!
//! ```yaml
//! about: what it models, and what ingress-nginx documents for it
//! pods: {ns/service: 2, ns/slow: {replicas: 1, delay_ms: 1500}}
//! secrets: {ns/name: [host, …]}      # kubernetes.io/tls Secrets, self-signed
//! steps:
//! - apply: |                          # objects as `kubectl apply` takes them
//!     apiVersion: v1
//!     kind: Service …
//!   files: [manifests/…]              # repository files (their Services,
//!   replace: [[from, to]]             #   Ingresses, IngressClasses), edited,
//!   only: [Service]                   #   these kinds only
//!   events: [{ingress: ns/name, reason: UnsupportedAnnotation, note: auth-url}]
//!   metrics: ['a /metrics line contains this']
//!   requests:
//!   - url: http://host/path?query     # https: the TLS listener, SNI = host
//!     method: GET
//!     headers: {Name: value}
//!     from: 127.0.0.2                 # the client's address
//!     body: 100                       # bytes (default: none, except `hyper`)
//!     via: [fast, hyper, h2c]         # default; https: [https, h2]
//!     expect: {status: 200, backend: ns/service, path: /seen?query,
//!              host: …, protocol: HTTP/1.1, headers: {name: value | null},
//!              response: {name: value | null}, response_like: {name: regex},
//!              body_contains: …}
//!   - url: …                          # or: the split of `repeat` requests
//!     repeat: 100                     #   over one connection per `via`,
//!     split: {pod: 40, other-pod: 60} #   by pod (or status), exactly
//!   - url: …                          # or: cookie affinity
//!     sticky: {backend: ns/service, cookie: route, set_cookie: regex}
//! ```
//!
//! Pods are named `service-0`, `service-1`, …; each is one echo server on
//! its own port, listed by one EndpointSlice of its Service (ports named as
//! the Service's). The IngressClass `roundhouse` is the repository's
//! (manifests/ingress/10-ingressclass.yaml). The first step's objects are
//! in place before the lb starts; after a later step the harness waits for
//! the lb's next routing table (its `discovery_updates` counter). Every
//! step's `events` is the whole list of Events expected on Ingresses so
//! far. The lb watches each kind on its own, so an Ingress applied in a
//! later step together with its new Service may be seen first (and
//! reported as naming a missing Service, as it would be in a cluster):
//! cases give Services in the first step.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::fake_api::{FakeApi, Kind};
use common::{HANG, TestBackend, wait_until};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ADDRESS: &str = "10.0.0.7";

// ---------------------------------------------------------------------------
// The case files
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case models (read by people; shown when it fails).
    about: String,
    #[serde(default)]
    pods: BTreeMap<String, Pods>,
    #[serde(default)]
    secrets: BTreeMap<String, Vec<String>>,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Pods {
    Replicas(usize),
    Slow { replicas: usize, delay_ms: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    apply: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    replace: Vec<(String, String)>,
    #[serde(default)]
    only: Option<Vec<String>>,
    #[serde(default)]
    events: Vec<EventExpect>,
    #[serde(default)]
    metrics: Vec<String>,
    #[serde(default)]
    requests: Vec<Check>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventExpect {
    ingress: String,
    reason: String,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Via {
    /// A bodiless HTTP/1.1 request: the fast path.
    Fast,
    /// HTTP/1.1 with a body: the hyper path.
    Hyper,
    /// HTTP/2 with prior knowledge on the plain listener.
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

impl Via {
    fn tls(self) -> bool {
        matches!(self, Via::Https | Via::H2)
    }

    fn h2(self) -> bool {
        matches!(self, Via::H2c | Via::H2)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    from: Option<IpAddr>,
    #[serde(default)]
    body: Option<usize>,
    #[serde(default)]
    via: Option<Vec<Via>>,
    #[serde(default)]
    grpc: bool,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    repeat: Option<usize>,
    #[serde(default)]
    split: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    sticky: Option<Sticky>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    body_bytes: Option<usize>,
    #[serde(default)]
    body_contains: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    response: BTreeMap<String, Option<String>>,
    #[serde(default)]
    response_like: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sticky {
    backend: String,
    cookie: String,
    set_cookie: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ingress-corpus")
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

// ---------------------------------------------------------------------------
// The world: fake API server, pods, the lb
// ---------------------------------------------------------------------------

/// The running `lb` process; killed when dropped.
struct Lb {
    child: std::process::Child,
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lb {
    /// Starts an lb in Ingress mode and waits until it is ready. The ports
    /// are picked free and then bound by the lb; another process may take
    /// one in between, so an lb that exits before it is ready is started
    /// again on new ports.
    async fn start(api: &FakeApi, case: &str) -> Lb {
        for _ in 0..10 {
            let mut lb = Lb::spawn(api, case);
            let deadline = tokio::time::Instant::now() + HANG;
            loop {
                if let Ok(Some(_)) = lb.child.try_wait() {
                    break;
                }
                if matches!(common::get_once(lb.admin, "/readyz").await, Ok((s, _)) if s == 200) {
                    return lb;
                }
                assert!(tokio::time::Instant::now() < deadline, "lb never ready");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        panic!("{case}: the lb could not start in 10 tries");
    }

    fn spawn(api: &FakeApi, case: &str) -> Lb {
        let dir = std::env::temp_dir().join(format!("rh-corpus-{case}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let (plain, tls, admin) = (addr(free_port()), addr(free_port()), addr(free_port()));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lb"));
        cmd.args(["serve", "--kubernetes", "--ingress", "--workers", "2"])
            .args(["--namespace", "roundhouse", "--ingress-address", ADDRESS])
            .args(["--listen", &plain.to_string()])
            .args(["--tls-listen", &tls.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOSTNAME", format!("lb-{case}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("LB_") {
                cmd.env_remove(k);
            }
        }
        Lb {
            child: cmd.spawn().unwrap(),
            plain,
            tls,
            admin,
            dir,
        }
    }

    /// The lb's count of routing tables applied.
    async fn updates(&self) -> u64 {
        let (_, text) = common::get_once(self.admin, "/metrics").await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("roundhouse_discovery_updates_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("roundhouse_discovery_updates_total in /metrics")
    }
}

/// The pods of the case (echo servers) by Service `ns/name`.
struct World {
    api: FakeApi,
    pods: BTreeMap<String, Vec<TestBackend>>,
    roots: Vec<Vec<u8>>,
    /// Kinds of every object applied, by `namespace/name`.
    ingresses: Vec<String>,
}

/// An echo server that waits `delay` before answering (HTTP/1.1 only).
fn slow_echo(name: &str, namespace: &str, delay: Duration) -> TestBackend {
    let state = backend::AppState::new(name).echoing(backend::Identity {
        namespace: namespace.to_owned(),
        pod: String::new(),
    });
    let app = backend::app(state);
    TestBackend::with_service(name, move |req| {
        let app = app.clone();
        async move {
            tokio::time::sleep(delay).await;
            let resp = app.oneshot(req.map(axum::body::Body::new)).await.unwrap();
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            Response::from_parts(parts, Full::new(bytes))
        }
    })
}

impl World {
    fn new(case: &Case) -> World {
        let api = FakeApi::start_ingress();
        api.put_yaml(&repo_file("manifests/ingress/10-ingressclass.yaml"));
        let mut pods = BTreeMap::new();
        for (svc, spec) in &case.pods {
            let (ns, name) = svc.split_once('/').expect("pods: namespace/service");
            let (replicas, delay) = match *spec {
                Pods::Replicas(n) => (n, None),
                Pods::Slow { replicas, delay_ms } => {
                    (replicas, Some(Duration::from_millis(delay_ms)))
                }
            };
            let list = (0..replicas)
                .map(|i| {
                    let pod = format!("{name}-{i}");
                    match delay {
                        None => TestBackend::echo(&pod, ns),
                        Some(d) => slow_echo(&pod, ns, d),
                    }
                })
                .collect();
            pods.insert(svc.clone(), list);
        }
        let mut roots = Vec::new();
        for (key, hosts) in &case.secrets {
            let (ns, name) = key.split_once('/').expect("secrets: namespace/name");
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let (pair, der) = common::cert(name, &hosts);
            let secret = k8s_openapi::api::core::v1::Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(
                    [("tls.crt", pair.chain_pem), ("tls.key", pair.key_pem)]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v)))
                        .collect(),
                ),
                ..Default::default()
            };
            api.put(Kind::Secret, serde_json::to_value(secret).unwrap());
            roots.push(der);
        }
        World {
            api,
            pods,
            roots,
            ingresses: Vec::new(),
        }
    }

    /// Applies a step's objects: Services get one EndpointSlice per pod.
    fn apply(&mut self, step: &Step) {
        let mut text = String::new();
        for f in &step.files {
            text.push_str(&repo_file(f));
            text.push_str("\n---\n");
        }
        for (from, to) in &step.replace {
            assert!(text.contains(from.as_str()), "replace: {from:?} not found");
            text = text.replace(from.as_str(), to);
        }
        if let Some(a) = &step.apply {
            text.push_str(a);
        }
        use serde::Deserialize as _;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value =
                serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            let kind_name = v["kind"].as_str().unwrap_or_default();
            if step
                .only
                .as_ref()
                .is_some_and(|only| !only.iter().any(|k| k == kind_name))
            {
                continue;
            }
            let kind = match v["kind"].as_str() {
                Some("Service") => Kind::Service,
                Some("Ingress") => Kind::Ingress,
                Some("IngressClass") => Kind::IngressClass,
                // Deployments, NetworkPolicies, … of repository files.
                _ => continue,
            };
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let name = v["metadata"]["name"].as_str().unwrap().to_owned();
            let mut v = v;
            v["metadata"]["namespace"] = json!(ns);
            if kind == Kind::Service {
                self.slices(&ns, &name, &v);
            }
            if kind == Kind::Ingress && !self.ingresses.contains(&format!("{ns}/{name}")) {
                self.ingresses.push(format!("{ns}/{name}"));
            }
            self.api.put(kind, v);
        }
    }

    /// One EndpointSlice per pod of Service `ns/name`, with the Service's
    /// ports (by name, `appProtocol` kept) on the pod's port.
    fn slices(&self, ns: &str, name: &str, service: &Value) {
        let Some(pods) = self.pods.get(&format!("{ns}/{name}")) else {
            return;
        };
        for (i, pod) in pods.iter().enumerate() {
            let ports: Vec<Value> = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let mut port = json!({"port": pod.addr.port(), "protocol": "TCP"});
                    if let Some(n) = p["name"].as_str() {
                        port["name"] = json!(n);
                    }
                    if let Some(a) = p["appProtocol"].as_str() {
                        port["appProtocol"] = json!(a);
                    }
                    port
                })
                .collect();
            self.api.put_slice(json!({
                "metadata": {
                    "name": format!("{name}-{i}"),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": [{
                    "addresses": [pod.addr.ip().to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {"kind": "Pod", "name": pod.name, "namespace": ns},
                }],
            }));
        }
    }

    /// Whether every Ingress applied that is ours has our address in its
    /// status.
    fn statuses_written(&self, ours: &[String]) -> bool {
        ours.iter().all(|key| {
            let (ns, name) = key.split_once('/').unwrap();
            self.api
                .get(Kind::Ingress, ns, name)
                .is_some_and(|o| o["status"]["loadBalancer"]["ingress"][0]["ip"] == ADDRESS)
        })
    }

    /// The Events on Ingresses: (namespace/name, reason, note).
    fn events(&self) -> Vec<(String, String, String)> {
        self.api
            .all(Kind::Event)
            .iter()
            .filter(|e| e["regarding"]["kind"] == "Ingress")
            .map(|e| {
                let r = &e["regarding"];
                (
                    format!(
                        "{}/{}",
                        r["namespace"].as_str().unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    ),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// The Ingresses among `keys` whose class is `roundhouse` (as stored).
fn ours(api: &FakeApi, keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| {
            let (ns, name) = k.split_once('/').unwrap();
            api.get(Kind::Ingress, ns, name)
                .is_some_and(|o| o["spec"]["ingressClassName"] == "roundhouse")
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn echo(&self) -> Option<backend::Echo> {
        serde_json::from_slice(&self.body).ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Who answered: the echo's pod, the name in a gRPC reply, or the status.
    fn label(&self, grpc: bool) -> String {
        if self.status != StatusCode::OK {
            return self.status.as_u16().to_string();
        }
        if grpc {
            return grpc_host(&self.body)
                .unwrap_or_else(|| format!("not a reply: {:?}", self.body));
        }
        match self.echo() {
            Some(e) => e.name,
            None => format!("not an echo: {}", self.text()),
        }
    }
}

/// The `host` of a `roundhouse.v1.GetResponse` in one gRPC message frame.
fn grpc_host(body: &[u8]) -> Option<String> {
    let msg = body.get(5..)?;
    let (&tag, rest) = msg.split_first()?;
    let (&len, rest) = rest.split_first()?;
    (tag == 0x0a && len < 0x80)
        .then(|| rest.get(..usize::from(len)))
        .flatten()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The Service (`namespace/name`) of a pod named `service-N`.
fn service_of(echo: &backend::Echo) -> String {
    let svc = echo
        .name
        .rsplit_once('-')
        .map_or(echo.name.as_str(), |(s, _)| s);
    format!("{}/{svc}", echo.namespace)
}

struct Target {
    authority: String,
    host: String,
    path_and_query: String,
    https: bool,
}

fn target(url: &str) -> Target {
    let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    let authority = uri
        .authority()
        .expect("an absolute URL")
        .as_str()
        .to_owned();
    Target {
        host: uri.host().unwrap().to_owned(),
        authority,
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        https: uri.scheme_str() == Some("https"),
    }
}

/// Waits until the TLS listener completes a handshake for `host` (with a
/// certificate the client trusts).
async fn certificate_served(lb: &Lb, roots: &[Vec<u8>], host: &str) {
    let connector = common::tls_client(roots, &[b"http/1.1"]);
    let deadline = tokio::time::Instant::now() + HANG;
    while common::tls_connect(&connector, lb.tls, host).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate for {host}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn open(lb: &Lb, roots: &[Vec<u8>], via: Via, host: &str, from: Option<IpAddr>) -> Sender {
    let to = if via.tls() { lb.tls } else { lb.plain };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = socket.connect(to).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    macro_rules! handshake {
        ($io:expr) => {
            if via.h2() {
                Sender::H2(common::h2_client($io).await)
            } else {
                let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Sender::H1(tx)
            }
        };
    }
    if !via.tls() {
        return handshake!(tcp);
    }
    let alpn: &[&[u8]] = if via.h2() { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = common::tls_client(roots, alpn);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let stream = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {host}: {e}"));
    handshake!(stream)
}

impl Sender {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        let resp = match self {
            Sender::H1(tx) => {
                tx.ready().await.unwrap();
                tx.send_request(req).await.unwrap()
            }
            Sender::H2(tx) => {
                tx.ready().await.unwrap();
                tx.send_request(req).await.unwrap()
            }
        };
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

fn request(check: &Check, via: Via, t: &Target, extra: &[(&str, String)]) -> Request<Full<Bytes>> {
    let method = match (&check.method, check.grpc) {
        (Some(m), _) => Method::from_bytes(m.as_bytes()).unwrap(),
        (None, true) => Method::POST,
        (None, false) => Method::GET,
    };
    let body = match (check.body, via, check.grpc) {
        (_, _, true) => Bytes::from_static(&[0, 0, 0, 0, 0]),
        (Some(n), _, _) => Bytes::from(vec![b'x'; n]),
        (None, Via::Hyper, _) => Bytes::from_static(b"some body"),
        (None, _, _) => Bytes::new(),
    };
    let mut b = if via.h2() {
        let scheme = if via.tls() { "https" } else { "http" };
        Request::builder().uri(format!("{scheme}://{}{}", t.authority, t.path_and_query))
    } else {
        Request::builder()
            .uri(&t.path_and_query)
            .header("host", &t.authority)
    }
    .method(method);
    if check.grpc {
        b = b
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    for (n, v) in &check.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    for (n, v) in extra {
        b = b.header(*n, v.as_str());
    }
    b.body(Full::new(body)).unwrap()
}

fn vias(check: &Check, t: &Target) -> Vec<Via> {
    match &check.via {
        Some(v) => v.clone(),
        None if t.https => vec![Via::Https, Via::H2],
        None if check.grpc => vec![Via::H2c],
        None => vec![Via::Fast, Via::Hyper, Via::H2c],
    }
}

/// The values of `name` in `headers`, joined by `, ` (None: absent).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<not text>"))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn check_answer(a: &Answer, e: &Expect, what: &str) {
    let status = e.status.unwrap_or(200);
    assert_eq!(
        a.status.as_u16(),
        status,
        "{what}: status; body {:?}",
        a.text()
    );
    for (name, want) in &e.response {
        assert_eq!(
            joined(&a.headers, name).as_ref(),
            want.as_ref(),
            "{what}: response header {name}"
        );
    }
    for (name, pattern) in &e.response_like {
        let re = regex::Regex::new(pattern).unwrap();
        let got = joined(&a.headers, name).unwrap_or_default();
        assert!(
            re.is_match(&got),
            "{what}: response header {name} {got:?} !~ {pattern}"
        );
    }
    if let Some(s) = &e.body_contains {
        assert!(a.text().contains(s.as_str()), "{what}: body {:?}", a.text());
    }
    let backend_side = e.backend.is_some()
        || e.path.is_some()
        || e.host.is_some()
        || e.protocol.is_some()
        || e.body_bytes.is_some()
        || !e.headers.is_empty();
    if !backend_side {
        return;
    }
    let echo = a
        .echo()
        .unwrap_or_else(|| panic!("{what}: not answered by a backend: {}", a.text()));
    if let Some(b) = &e.backend {
        assert_eq!(&service_of(&echo), b, "{what}: backend (pod {})", echo.name);
    }
    if let Some(p) = &e.path {
        assert_eq!(&echo.path, p, "{what}: path received");
    }
    if let Some(h) = &e.host {
        assert_eq!(&echo.host, h, "{what}: Host received");
    }
    if let Some(p) = &e.protocol {
        assert_eq!(&echo.protocol, p, "{what}: protocol received");
    }
    if let Some(n) = e.body_bytes {
        assert_eq!(echo.body_bytes, n, "{what}: body bytes received");
    }
    for (name, want) in &e.headers {
        let got = echo
            .headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.join(", "));
        assert_eq!(
            got.as_ref(),
            want.as_ref(),
            "{what}: header {name} received"
        );
    }
}

async fn run_check(w: &World, lb: &Lb, check: &Check, what: &str) {
    let t = target(&check.url);
    for via in vias(check, &t) {
        let what = format!("{what} ({via:?})");
        let mut conn = open(lb, &w.roots, via, &t.host, check.from).await;
        if let Some(e) = &check.expect {
            let a = conn.send(request(check, via, &t, &[])).await;
            check_answer(&a, e, &what);
        }
        if let Some(split) = &check.split {
            let n = check.repeat.expect("split needs repeat");
            let mut got: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..n {
                let a = conn.send(request(check, via, &t, &[])).await;
                *got.entry(a.label(check.grpc)).or_default() += 1;
            }
            assert_eq!(&got, split, "{what}: split of {n} requests");
        }
        if let Some(s) = &check.sticky {
            sticky(w, &mut conn, check, s, via, &t, &what).await;
        }
    }
}

/// Cookie affinity: the first request is placed by the rotation and gets
/// the cookie; with it, every request goes to the same pod without a new
/// cookie; without it the rotation goes on over every pod; a cookie naming
/// no endpoint is a new pick with a new cookie.
async fn sticky(
    w: &World,
    conn: &mut Sender,
    check: &Check,
    s: &Sticky,
    via: Via,
    t: &Target,
    what: &str,
) {
    let replicas = w.pods[&s.backend].len();
    let set_cookie = regex::Regex::new(&s.set_cookie).unwrap();
    let first = conn.send(request(check, via, t, &[])).await;
    assert_eq!(first.status, StatusCode::OK, "{what}: {}", first.text());
    let pod = first.label(false);
    let cookie = joined(&first.headers, "set-cookie")
        .unwrap_or_else(|| panic!("{what}: no Set-Cookie on the first answer"));
    assert!(
        set_cookie.is_match(&cookie),
        "{what}: Set-Cookie {cookie:?} !~ {}",
        s.set_cookie
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(
        pair.starts_with(&format!("{}=", s.cookie)),
        "{what}: {pair}"
    );
    for _ in 0..2 * replicas {
        let a = conn
            .send(request(
                check,
                via,
                t,
                &[("cookie", format!("other=1; {pair}"))],
            ))
            .await;
        assert_eq!(a.label(false), pod, "{what}: the cookie keeps the pod");
        assert_eq!(
            joined(&a.headers, "set-cookie"),
            None,
            "{what}: no new cookie"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..replicas {
        let a = conn.send(request(check, via, t, &[])).await;
        assert!(joined(&a.headers, "set-cookie").is_some(), "{what}");
        seen.insert(a.label(false));
    }
    assert_eq!(
        seen.len(),
        replicas,
        "{what}: without the cookie, the rotation: {seen:?}"
    );
    let stale = format!("{}=0000000000000000", s.cookie);
    let a = conn
        .send(request(check, via, t, &[("cookie", stale)]))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        joined(&a.headers, "set-cookie").is_some(),
        "{what}: a cookie naming no endpoint gets a new one"
    );
}

async fn check_events(w: &World, want: &[EventExpect], what: &str) {
    wait_until(&format!("{what}: {} Events", want.len()), || {
        w.events().len() >= want.len()
    })
    .await;
    let mut got = w.events();
    let mut missing = Vec::new();
    for e in want {
        let found = got.iter().position(|(ingress, reason, note)| {
            *ingress == e.ingress
                && *reason == e.reason
                && e.note.as_ref().is_none_or(|n| note.contains(n.as_str()))
        });
        match found {
            Some(i) => {
                got.remove(i);
            }
            None => missing.push(e),
        }
    }
    assert!(
        missing.is_empty() && got.is_empty(),
        "{what}: Events missing {missing:?}, unexpected {got:?}"
    );
}

async fn run(name: &str) {
    let file = corpus_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&file).unwrap();
    let case: Case = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(!case.about.trim().is_empty());
    let mut w = World::new(&case);
    let hosts: Vec<&String> = case.secrets.values().flatten().collect();
    let mut lb = None;
    for (i, step) in case.steps.iter().enumerate() {
        let what = format!("{name} step {}", i + 1);
        eprintln!("{what}");
        let lb = match &mut lb {
            None => {
                w.apply(step);
                let lb = lb.insert(Lb::start(&w.api, name).await);
                // The certificates follow the routing table by a moment.
                for host in &hosts {
                    certificate_served(lb, &w.roots, host).await;
                }
                lb
            }
            Some(lb) => {
                let before = lb.updates().await;
                w.apply(step);
                let ours = ours(&w.api, &w.ingresses);
                wait_until(&format!("{what}: statuses"), || w.statuses_written(&ours)).await;
                let deadline = tokio::time::Instant::now() + HANG;
                while lb.updates().await <= before {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{what}: no new routing table"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                lb
            }
        };
        let ours = ours(&w.api, &w.ingresses);
        wait_until(&format!("{what}: statuses"), || w.statuses_written(&ours)).await;
        for (j, check) in step.requests.iter().enumerate() {
            let what = format!("{what} request {} ({})", j + 1, check.url);
            eprintln!("{what}");
            run_check(&w, lb, check, &what).await;
        }
        check_events(&w, &step.events, &what).await;
        if !step.metrics.is_empty() {
            let (_, text) = common::get_once(lb.admin, "/metrics").await.unwrap();
            for line in &step.metrics {
                assert!(
                    text.lines().any(|l| l.contains(line.as_str())),
                    "{what}: no /metrics line with {line:?}"
                );
            }
        }
    }
    drop(lb);
}

macro_rules! corpus {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*

        /// Every file of the corpus has its test above, and every test its
        /// file.
        #[test]
        fn every_corpus_file_has_a_test() {
            let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let mut tests: Vec<String> = [$(stringify!($name)),*]
                .iter()
                .map(|n| format!("{n}.yaml"))
                .collect();
            tests.sort();
            assert_eq!(files, tests);
        }
    };
}

corpus!(
    example_swap,
    fanout,
    tls,
    canary,
    rewrite,
    affinity,
    allow_lists,
    cors,
    redirects,
    backends,
    unknown_annotations,
    classes_and_conflicts,
);
