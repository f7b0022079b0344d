//! The conformance-equivalent harness: a fake cluster (the fake API server
//! with the objects the upstream suite's base manifests describe, written
//! here), echo backends on 127.0.0.1 standing in for the pods, and the real
//! `lb` binary in Gateway API mode, one process per Gateway under test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestBackend;
use crate::common::fake_api::{FakeApi, Kind};

/// The namespaces of the suite.
pub const INFRA: &str = "gateway-conformance-infra";
pub const APP: &str = "gateway-conformance-app-backend";
pub const WEB: &str = "gateway-conformance-web-backend";
/// The GatewayClass the tests use.
pub const CLASS: &str = "roundhouse";
/// How long a condition or response may take to appear.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A backend pod: an echo server that answers every request with JSON
/// describing it (as the upstream suite's echo server does).
pub fn echo(namespace: &str, pod: &str) -> TestBackend {
    let (ns, name) = (namespace.to_owned(), pod.to_owned());
    TestBackend::with_service(pod, move |req: Request<hyper::body::Incoming>| {
        let (ns, name) = (ns.clone(), name.clone());
        async move {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let host = req
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default();
            let body = json!({
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "host": host,
                "method": req.method().as_str(),
                "headers": headers,
                "namespace": ns,
                "pod": name,
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        }
    })
}

/// A Service with `pods` echo pods behind it: the Service object, one
/// EndpointSlice per pod (each pod listens on its own port), the pods.
pub struct Svc {
    pub pods: Vec<TestBackend>,
}

/// The fake cluster.
pub struct Cluster {
    pub api: FakeApi,
    pub services: Vec<Svc>,
    kubeconfig: PathBuf,
    /// The certificates of the Secrets made (a TLS client's roots).
    roots: std::sync::Mutex<Vec<Vec<u8>>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// The base: namespaces, the GatewayClass, the four base Gateways,
    /// the backend Services and their pods, the TLS Secrets.
    pub fn base() -> Cluster {
        let api = FakeApi::start_gateway();
        let path = std::env::temp_dir().join(format!(
            "rh-gw-kubeconfig-{}-{}",
            std::process::id(),
            api.addr.port()
        ));
        std::fs::write(&path, api.kubeconfig()).unwrap();
        let mut c = Cluster {
            api,
            services: Vec::new(),
            kubeconfig: path,
            roots: std::sync::Mutex::new(Vec::new()),
        };
        for (ns, role) in [(INFRA, "infra"), (APP, "backend"), (WEB, "backend")] {
            c.api.put(
                Kind::Namespace,
                json!({"metadata": {"name": ns, "labels": {
                    "gateway-conformance": role, "kubernetes.io/metadata.name": ns}}}),
            );
        }
        c.api.put(
            Kind::GatewayClass,
            json!({"metadata": {"name": CLASS},
                   "spec": {"controllerName": "roundhouse.dev/gateway-controller"}}),
        );
        c.apply(BASE_GATEWAYS);
        for (ns, name, pods) in [
            (INFRA, "infra-backend-v1", 2),
            (INFRA, "infra-backend-v2", 2),
            (INFRA, "infra-backend-v3", 1),
            (APP, "app-backend-v1", 2),
            (APP, "app-backend-v2", 2),
            (WEB, "web-backend", 2),
        ] {
            c.service(ns, name, pods);
        }
        c.secret(
            INFRA,
            "tls-validity-checks-certificate",
            &[
                "*.wildcard.org",
                "example.org",
                "second-example.org",
                "unknown-example.org",
                "secure.test.com",
            ],
        );
        c.secret(WEB, "certificate", &["example.org", "*.example.org"]);
        c
    }

    /// A Service `name` (port 8080, named `http`) with `pods` echo pods.
    pub fn service(&mut self, ns: &str, name: &str, pods: usize) {
        self.api.put(
            Kind::Service,
            json!({"metadata": {"name": name, "namespace": ns},
                   "spec": {"selector": {"app": name},
                            "ports": [{"name": "http", "port": 8080, "targetPort": 3000, "protocol": "TCP"}]}}),
        );
        let pods: Vec<TestBackend> = (0..pods)
            .map(|i| echo(ns, &format!("{name}-{i}")))
            .collect();
        for (i, p) in pods.iter().enumerate() {
            self.api.put(
                Kind::Slice,
                json!({
                    "metadata": {"name": format!("{name}-{i}"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": p.addr.port(), "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["127.0.0.1"],
                                   "conditions": {"ready": true, "serving": true, "terminating": false},
                                   "targetRef": {"kind": "Pod", "name": format!("{name}-{i}"), "namespace": ns}}],
                }),
            );
        }
        self.services.push(Svc { pods });
    }

    /// A `kubernetes.io/tls` Secret with a self-signed certificate for `names`.
    pub fn secret(&self, ns: &str, name: &str, names: &[&str]) {
        let (pair, der) = crate::common::cert(name, names);
        self.roots.lock().unwrap().push(der);
        self.api.put(
            Kind::Secret,
            json!({"metadata": {"name": name, "namespace": ns},
                   "type": "kubernetes.io/tls",
                   "data": {"tls.crt": b64(&pair.chain_pem), "tls.key": b64(&pair.key_pem)}}),
        );
    }

    /// Puts the objects of a YAML stream (`{GATEWAY_CLASS_NAME}` is ours).
    pub fn apply(&self, yaml: &str) {
        self.api
            .put_yaml(&yaml.replace("{GATEWAY_CLASS_NAME}", CLASS));
    }

    /// An object's status, as stored.
    pub fn status(&self, kind: Kind, ns: &str, name: &str) -> Value {
        self.api
            .get(kind, ns, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Starts an LB programming `gateways` (`namespace/name`).
    pub fn lb(&self, gateways: &[&str]) -> Lb {
        self.lb_with(gateways, &[])
    }

    /// Same, with extra flags. The ports are picked free and then bound by
    /// the lb; another process may take one in between, so an lb that exits
    /// before its admin port answers is started again on new ports.
    pub fn lb_with(&self, gateways: &[&str], extra: &[&str]) -> Lb {
        for _ in 0..10 {
            let mut lb = self.spawn_lb(gateways, extra);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = lb.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect_timeout(&lb.admin, Duration::from_millis(200))
                    .is_ok()
                {
                    return lb;
                }
                assert!(
                    Instant::now() < deadline,
                    "lb never listened: {}",
                    lb.log.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("lb could not start in 10 tries");
    }

    fn spawn_lb(&self, gateways: &[&str], extra: &[&str]) -> Lb {
        let (plain, tls, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb"));
        cmd.args(["serve", "--kubernetes", "--gateway-api", "--workers", "1"])
            .args(["--listen", &format!("127.0.0.1:{plain}")])
            .args(["--tls-listen", &format!("127.0.0.1:{tls}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--gateway-address", "127.0.0.1"])
            .args(["--namespace", "roundhouse"]);
        for g in gateways {
            cmd.args(["--gateway", g]);
        }
        cmd.args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "lb=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("lb starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Lb {
            child,
            log,
            plain: ([127, 0, 0, 1], plain).into(),
            tls: ([127, 0, 0, 1], tls).into(),
            admin: ([127, 0, 0, 1], admin).into(),
        }
    }

    /// Waits until `cond` holds for the status of an object.
    pub async fn wait_status(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.status(kind, ns, name);
            if cond(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} {ns}/{name}: {what}; status now: {s:#}",
                kind_name(kind)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Gateway => "Gateway",
        Kind::GatewayClass => "GatewayClass",
        Kind::HttpRoute => "HTTPRoute",
        Kind::GrpcRoute => "GRPCRoute",
        _ => "object",
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The base Gateways (written here after the upstream base manifests'
/// description: their names, listeners and allowedRoutes).
pub const BASE_GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-namespaces, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: backend-namespaces, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {gateway-conformance: backend}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace-with-https-listener, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: "{GATEWAY_CLASS_NAME}"
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
  - name: https-with-hostname
    port: 443
    hostname: second-example.org
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
  - name: https-with-wildcard-hostname
    port: 443
    hostname: "*.wildcard.org"
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
  - name: https-with-hostname-matching-wildcard
    port: 443
    hostname: fourth-example.wildcard.org
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
"#;

/// A running `lb` process.
pub struct Lb {
    child: Child,
    /// What it wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
}

impl Lb {
    /// The status code of its `/readyz`.
    pub async fn readyz(&self) -> u16 {
        send(self.admin, &Req::get("admin", "/readyz"))
            .await
            .map(|a| a.status)
            .unwrap_or(0)
    }

    /// Its stderr lines containing `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The echo's JSON (`Null` if the body is not JSON).
    pub fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// The pod that answered.
    pub fn pod(&self) -> String {
        self.echo()["pod"].as_str().unwrap_or("").to_owned()
    }
    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// A header the backend saw (its values joined with `,`).
    pub fn seen(&self, name: &str) -> Option<String> {
        let values = self.echo()["headers"][name.to_ascii_lowercase()]
            .as_array()?
            .clone();
        Some(
            values
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

/// One request: method, host, path and extra headers.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: &'static str,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn get(host: &str, path: &str) -> Req {
        Req {
            method: "GET",
            host: host.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// Sends `req` over a new connection to `addr` (Connection: close) and
/// reads the whole answer.
pub async fn send(addr: SocketAddr, req: &Req) -> std::io::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        req.method, req.path, req.host
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(std::io::Error::other(format!(
                "bad answer: {:?}",
                String::from_utf8_lossy(raw)
            )));
        }
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[n..])
    } else {
        raw[n..].to_vec()
    };
    Ok(Answer {
        status: r.code.unwrap_or(0),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
}

/// What a request must give.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub status: u16,
    /// The pod name's prefix (the Service), when a backend must answer.
    pub backend: Option<&'static str>,
    /// Its namespace.
    pub namespace: Option<&'static str>,
    /// The path the backend must see.
    pub path: Option<&'static str>,
    /// The host the backend must see.
    pub host: Option<&'static str>,
}

impl Expect {
    pub fn backend(ns: &'static str, svc: &'static str) -> Expect {
        Expect {
            status: 200,
            backend: Some(svc),
            namespace: Some(ns),
            ..Expect::default()
        }
    }
    pub fn status(status: u16) -> Expect {
        Expect {
            status,
            ..Expect::default()
        }
    }
    fn check(&self, a: &Answer) -> Result<(), String> {
        if a.status != self.status {
            return Err(format!("status {} (want {})", a.status, self.status));
        }
        let e = a.echo();
        if let Some(b) = self.backend
            && !a.pod().starts_with(&format!("{b}-"))
        {
            return Err(format!("pod {:?} (want {b}-*)", a.pod()));
        }
        if let Some(ns) = self.namespace
            && e["namespace"] != ns
        {
            return Err(format!("namespace {} (want {ns})", e["namespace"]));
        }
        if let Some(p) = self.path
            && e["path"] != p
        {
            return Err(format!("path {} (want {p})", e["path"]));
        }
        if let Some(h) = self.host
            && e["host"] != h
        {
            return Err(format!("host {} (want {h})", e["host"]));
        }
        Ok(())
    }
}

/// Sends `req` until the answer is what `expect` says, then requires the
/// same answer three times in a row (the upstream suite's "eventually
/// consistent" rule). Returns the last answer.
pub async fn expect(addr: SocketAddr, req: &Req, want: &Expect) -> Answer {
    let deadline = Instant::now() + PATIENCE;
    let mut streak = 0;
    loop {
        let got = send(addr, req).await;
        let verdict = match &got {
            Ok(a) => want.check(a),
            Err(e) => Err(e.to_string()),
        };
        match verdict {
            Ok(()) => {
                streak += 1;
                if streak == 3 {
                    return got.unwrap();
                }
            }
            Err(why) => {
                streak = 0;
                assert!(
                    Instant::now() < deadline,
                    "{req:?}: {why}; last answer: {got:?}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// The condition `type_` of a condition list.
pub fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

/// Whether `conditions` has `type_` with `status` (and `reason`, unless empty).
pub fn has(conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(conditions, type_)
        .is_some_and(|c| c["status"] == status && (reason.is_empty() || c["reason"] == reason))
}

/// Our controller's entry for the parent Gateway `gw` in a route status.
pub fn parent<'a>(status: &'a Value, gw: &str) -> Option<&'a Value> {
    status["parents"].as_array()?.iter().find(|p| {
        p["controllerName"] == "roundhouse.dev/gateway-controller" && p["parentRef"]["name"] == gw
    })
}

/// Whether the route's entry for `gw` has the condition.
pub fn route_has(status: &Value, gw: &str, type_: &str, st: &str, reason: &str) -> bool {
    parent(status, gw).is_some_and(|p| has(&p["conditions"], type_, st, reason))
}

/// Whether every condition of every parent entry and of a Gateway's status
/// names the object's current generation.
pub fn latest(status: &Value, generation: i64) -> bool {
    let all = |conds: &Value| {
        conds.as_array().is_some_and(|c| {
            !c.is_empty() && c.iter().all(|c| c["observedGeneration"] == generation)
        })
    };
    if let Some(parents) = status["parents"].as_array() {
        return !parents.is_empty() && parents.iter().all(|p| all(&p["conditions"]));
    }
    all(&status["conditions"])
}

/// A Gateway listener status by name.
pub fn listener<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
}

impl Cluster {
    /// Sends `req` over TLS to `addr` with SNI `sni`, trusting the
    /// certificates of the cluster's Secrets.
    pub async fn send_tls(
        &self,
        addr: SocketAddr,
        sni: &str,
        req: &Req,
    ) -> std::io::Result<Answer> {
        let roots = self.roots.lock().unwrap().clone();
        send_tls(
            &crate::common::tls_client(&roots, &[b"http/1.1"]),
            addr,
            sni,
            req,
        )
        .await
    }
}

async fn send_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
    req: &Req,
) -> std::io::Result<Answer> {
    let mut s = crate::common::tls_connect(connector, addr, sni).await?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        req.method, req.path, req.host
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    parse(&raw)
}

/// The status code of an answer, as `http` sees it.
pub fn code(a: &Answer) -> StatusCode {
    StatusCode::from_u16(a.status).unwrap()
}
