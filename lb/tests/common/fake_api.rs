//! An in-process fake Kubernetes API server: enough of list/watch for kube's
//! watcher (resourceVersion, label selectors, chunked watch events,
//! bookmarks, `410 Gone` for compacted versions, dropped connections) plus
//! get/create of Upstreams and the status subresource PATCH, recording what
//! was written. It runs on its own thread so it can be killed outright and
//! restarted on the same port with its state intact (like an API server
//! restart in front of etcd).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};

/// The namespace the fake serves.
pub const NS: &str = "roundhouse";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Slice,
    Upstream,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Slice => "discovery.k8s.io/v1",
            Kind::Upstream => "roundhouse.dev/v1alpha1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Slice => "EndpointSlice",
            Kind::Upstream => "Upstream",
        }
    }
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    type_: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
pub struct Inner {
    rv: u64,
    /// Watches asking for an older version get 410 Gone.
    compacted: u64,
    objects: BTreeMap<(Kind, String), Value>,
    history: Vec<Change>,
    /// Every status PATCH body, by Upstream name, in order.
    pub status_writes: Vec<(String, Value)>,
    /// Upstreams created through the API (POST).
    pub creates: Vec<String>,
    /// Watch requests served (method path?query).
    pub watch_requests: usize,
    /// List requests served.
    pub list_requests: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    drop_watches: broadcast::Sender<()>,
    bookmark_every: Duration,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

fn selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &obj["metadata"]["labels"];
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim()),
        None => labels.get(term.trim()).is_some(),
    })
}

impl Shared {
    fn commit(&self, kind: Kind, type_: &'static str, mut object: Value) -> Value {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.kind());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["namespace"] = json!(NS);
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        if type_ == "DELETED" {
            inner.objects.remove(&(kind, name));
        } else {
            inner.objects.insert((kind, name), object.clone());
        }
        let change = Change {
            rv,
            kind,
            type_,
            object: object.clone(),
        };
        inner.history.push(change.clone());
        // Send under the lock so watchers see changes in order.
        let _ = self.changes.send(change);
        object
    }
}

#[derive(serde::Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn list_or_watch(shared: Shared, kind: Kind, q: ListQuery) -> Response {
    let watching = matches!(q.watch.as_deref(), Some("true") | Some("1"));
    if !watching {
        let inner = &mut *shared.inner.lock().unwrap();
        inner.list_requests += 1;
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((k, _), o)| *k == kind && selector_matches(q.label_selector.as_deref(), o))
            .map(|(_, o)| o.clone())
            .collect();
        return json_response(
            StatusCode::OK,
            json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind()),
                   "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = q
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (backlog, mut changes, gone, current) = {
        let inner = &mut *shared.inner.lock().unwrap();
        inner.watch_requests += 1;
        let gone = from < inner.compacted;
        let backlog: Vec<Change> = inner
            .history
            .iter()
            .filter(|c| c.rv > from && c.kind == kind)
            .cloned()
            .collect();
        (backlog, shared.changes.subscribe(), gone, inner.rv)
    };
    let mut drop_rx = shared.drop_watches.subscribe();
    let selector = q.label_selector.clone();
    let bookmarks = q.allow_watch_bookmarks.unwrap_or(false);
    let every = shared.bookmark_every;
    let timeout = Duration::from_secs(q.timeout_seconds.unwrap_or(300));
    tokio::spawn(async move {
        let line = |type_: &str, object: &Value| {
            Bytes::from(format!("{}\n", json!({"type": type_, "object": object})))
        };
        if gone {
            let _ = tx
                .send(line(
                    "ERROR",
                    &status_error(410, "Expired", "too old resource version"),
                ))
                .await;
            return;
        }
        let mut last = current.max(from);
        for c in backlog {
            if selector_matches(selector.as_deref(), &c.object)
                && tx.send(line(c.type_, &c.object)).await.is_err()
            {
                return;
            }
            last = last.max(c.rv);
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = drop_rx.recv() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"apiVersion": kind.api_version(), "kind": kind.kind(),
                                    "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                c = changes.recv() => match c {
                    Ok(c) => {
                        if c.rv <= last { continue; }
                        last = c.rv;
                        if c.kind == kind && selector_matches(selector.as_deref(), &c.object)
                            && tx.send(line(c.type_, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            get(
                |State(s): State<Shared>, Query(q): Query<ListQuery>| async move {
                    list_or_watch(s, Kind::Slice, q).await
                },
            ),
        )
        .route(
            "/apis/roundhouse.dev/v1alpha1/namespaces/{ns}/upstreams",
            get(
                |State(s): State<Shared>, Query(q): Query<ListQuery>| async move {
                    list_or_watch(s, Kind::Upstream, q).await
                },
            )
            .post(|State(s): State<Shared>, body: Bytes| async move {
                let obj: Value = serde_json::from_slice(&body).unwrap();
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if s.inner
                    .lock()
                    .unwrap()
                    .objects
                    .contains_key(&(Kind::Upstream, name.clone()))
                {
                    return json_response(
                        StatusCode::CONFLICT,
                        status_error(409, "AlreadyExists", "already exists"),
                    );
                }
                let mut obj = obj;
                obj["metadata"]["generation"] = json!(1);
                obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                s.inner.lock().unwrap().creates.push(name);
                let created = s.commit(Kind::Upstream, "ADDED", obj);
                json_response(StatusCode::CREATED, created)
            }),
        )
        .route(
            "/apis/roundhouse.dev/v1alpha1/namespaces/{ns}/upstreams/{name}",
            get(
                |State(s): State<Shared>, Path((_ns, name)): Path<(String, String)>| async move {
                    let obj = s
                        .inner
                        .lock()
                        .unwrap()
                        .objects
                        .get(&(Kind::Upstream, name))
                        .cloned();
                    match obj {
                        Some(o) => json_response(StatusCode::OK, o),
                        None => json_response(
                            StatusCode::NOT_FOUND,
                            status_error(404, "NotFound", "not found"),
                        ),
                    }
                },
            ),
        )
        .route(
            "/apis/roundhouse.dev/v1alpha1/namespaces/{ns}/upstreams/{name}/status",
            patch(
                |State(s): State<Shared>,
                 Path((_ns, name)): Path<(String, String)>,
                 body: Bytes| async move {
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    let current = s
                        .inner
                        .lock()
                        .unwrap()
                        .objects
                        .get(&(Kind::Upstream, name.clone()))
                        .cloned();
                    let Some(mut obj) = current else {
                        return json_response(
                            StatusCode::NOT_FOUND,
                            status_error(404, "NotFound", "not found"),
                        );
                    };
                    s.inner
                        .lock()
                        .unwrap()
                        .status_writes
                        .push((name, patch.clone()));
                    obj["status"] = patch["status"].clone();
                    let updated = s.commit(Kind::Upstream, "MODIFIED", obj);
                    json_response(StatusCode::OK, updated)
                },
            ),
        )
        .with_state(shared)
}

fn serve_thread(
    addr: SocketAddr,
    shared: Shared,
) -> (SocketAddr, oneshot::Sender<()>, thread::JoinHandle<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_reuse_address(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.listen(128).unwrap();
            s.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(s.into()).unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            tokio::select! {
                _ = axum::serve(listener, router(shared)) => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime closes every connection at once.
        rt.shutdown_background();
    });
    (addr_rx.recv().unwrap(), stop_tx, thread)
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let (changes, _) = broadcast::channel(4096);
        let (drop_watches, _) = broadcast::channel(16);
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner::default())),
            changes,
            drop_watches,
            bookmark_every: Duration::from_millis(200),
        };
        let (addr, stop, thread) = serve_thread("127.0.0.1:0".parse().unwrap(), shared.clone());
        FakeApi {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Kills the server: listener and every connection close at once.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts it again on the same port, with the same objects.
    pub fn restart(&mut self) {
        self.kill();
        let (addr, stop, thread) = serve_thread(self.addr, self.shared.clone());
        assert_eq!(addr, self.addr);
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    /// Ends every open watch (the clients reconnect from their last version).
    pub fn drop_watches(&self) {
        let _ = self.shared.drop_watches.send(());
    }

    /// Forgets history: any watch from a version before now gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.compacted = inner.rv + 1;
        inner.history.clear();
    }

    pub fn put_slice(&self, slice: Value) {
        let name = slice["metadata"]["name"].as_str().unwrap().to_owned();
        let exists = self
            .shared
            .inner
            .lock()
            .unwrap()
            .objects
            .contains_key(&(Kind::Slice, name));
        self.shared.commit(
            Kind::Slice,
            if exists { "MODIFIED" } else { "ADDED" },
            slice,
        );
    }

    pub fn delete_slice(&self, name: &str) {
        let obj = self
            .shared
            .inner
            .lock()
            .unwrap()
            .objects
            .get(&(Kind::Slice, name.to_owned()))
            .cloned();
        if let Some(obj) = obj {
            self.shared.commit(Kind::Slice, "DELETED", obj);
        }
    }

    /// Creates or replaces an Upstream (bumping its generation).
    pub fn put_upstream(&self, name: &str, spec: Value) {
        let old = self
            .shared
            .inner
            .lock()
            .unwrap()
            .objects
            .get(&(Kind::Upstream, name.to_owned()))
            .cloned();
        let (type_, generation, status) = match &old {
            Some(o) => (
                "MODIFIED",
                o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                o["status"].clone(),
            ),
            None => ("ADDED", 1, Value::Null),
        };
        let mut obj = json!({"metadata": {"name": name, "generation": generation,
                             "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec});
        if !status.is_null() {
            obj["status"] = status;
        }
        self.shared.commit(Kind::Upstream, type_, obj);
    }

    pub fn upstream(&self, name: &str) -> Option<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .objects
            .get(&(Kind::Upstream, name.to_owned()))
            .cloned()
    }

    pub fn status_writes(&self, name: &str) -> Vec<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .status_writes
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn creates(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().creates.clone()
    }

    pub fn list_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().list_requests
    }

    pub fn watch_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().watch_requests
    }

    /// A kubeconfig pointing at this server, namespace `roundhouse`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NS}\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        )
    }

    /// A kube Client built from `kubeconfig()` (call inside a runtime).
    pub async fn client(kubeconfig: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An EndpointSlice for `service` with one port and `(ip, ready, serving, terminating, pod)` endpoints.
pub fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(&str, bool, bool, bool, &str)],
) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready, serving, terminating, pod)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": NS},
        })).collect::<Vec<_>>(),
    })
}
