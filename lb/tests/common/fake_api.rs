//! An in-process fake Kubernetes API server: enough of list/watch for kube's
//! watcher (resourceVersion, label and field selectors, chunked watch
//! events, bookmarks, `410 Gone` for compacted versions, dropped
//! connections), for namespaced kinds in one namespace or all of them and
//! for cluster-scoped kinds (GatewayClass, Namespace), plus get/create of
//! objects and the status subresource: GET, and PATCH as server-side apply
//! or JSON merge patch (a merge patch carrying `metadata.resourceVersion`
//! is refused with 409 when the object has moved on, as the API server
//! does), recording what was written. It
//! runs on its own thread so it can be killed outright and restarted on the
//! same port with its state intact (like an API server restart in front of
//! etcd).
//!
//! Like a real API server it prunes Upstream fields that the CRD's schema
//! does not know (the schema is `lb crd`'s, replaceable to play an older
//! CRD), does not bump the resourceVersion or send an event for a write that
//! changes nothing, and gives each new object a later `creationTimestamp`.
//! It can also be told to say no: fail status writes of chosen objects with
//! an API error or by never answering ([`Fault`]), reject server-side apply
//! on the status subresource (415, as a server without it does), or answer
//! creates slowly.
//!
//! Every request is recorded as an [`Access`] (verb, API group, resource,
//! subresource) with its namespace (none for a cluster-wide request). When
//! a `FakeApi` is dropped it checks that the RBAC it was started with
//! grants everything it served: by default the Role in
//! `manifests/10-rbac.yaml`; [`FakeApi::start_gateway`] checks against the
//! ClusterRole and Role of `manifests/gateway-api/`. So every scenario that
//! uses it is also an RBAC test.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};

/// The namespace the fake serves.
pub const NS: &str = "roundhouse";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Slice,
    Upstream,
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    Namespace,
    Secret,
    Service,
    Ingress,
    IngressClass,
    Event,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::Slice,
        Kind::Upstream,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
        Kind::Namespace,
        Kind::Secret,
        Kind::Service,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Event,
    ];
    fn api_version(self) -> &'static str {
        match self {
            Kind::Slice => "discovery.k8s.io/v1",
            Kind::Upstream => "roundhouse.dev/v1alpha1",
            Kind::ReferenceGrant => "gateway.networking.k8s.io/v1beta1",
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => {
                "gateway.networking.k8s.io/v1"
            }
            Kind::Namespace | Kind::Secret | Kind::Service => "v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Slice => "EndpointSlice",
            Kind::Upstream => "Upstream",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Event => "Event",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::Slice => "endpointslices",
            Kind::Upstream => "upstreams",
            Kind::GatewayClass => "gatewayclasses",
            Kind::Gateway => "gateways",
            Kind::HttpRoute => "httproutes",
            Kind::GrpcRoute => "grpcroutes",
            Kind::ReferenceGrant => "referencegrants",
            Kind::Namespace => "namespaces",
            Kind::Secret => "secrets",
            Kind::Service => "services",
            Kind::Ingress => "ingresses",
            Kind::IngressClass => "ingressclasses",
            Kind::Event => "events",
        }
    }
    fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::GatewayClass | Kind::Namespace | Kind::IngressClass
        )
    }
    /// The kind served at `group`/`version`/`plural`.
    fn at(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let (g, v) = match k.api_version().split_once('/') {
                Some((g, v)) => (g, v),
                None => ("", k.api_version()),
            };
            g == group && v == version && k.plural() == plural
        })
    }
    /// The kind of an object (by its `apiVersion` and `kind`).
    pub fn of(object: &Value) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            object["kind"].as_str() == Some(k.kind())
                && object["apiVersion"].as_str().is_none_or(|v| {
                    v == k.api_version()
                        || (*k == Kind::ReferenceGrant && v == "gateway.networking.k8s.io/v1")
                })
        })
    }
}

/// An object's key: kind, namespace (`""` for cluster-scoped kinds), name.
type Key = (Kind, String, String);

/// One kind of API request, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// Plural resource name (or the path of a non-resource URL).
    pub resource: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
}

impl Access {
    pub fn new(verb: &str, group: &str, resource: &str, subresource: Option<&str>) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.map(str::to_owned),
        }
    }

    /// The access a request is, by Kubernetes' rules for resource URLs:
    /// `/api/v1/…` (core) or `/apis/GROUP/VERSION/…`, optionally
    /// `namespaces/NS/`, then `RESOURCE[/NAME[/SUBRESOURCE]]`.
    fn of(method: &Method, uri: &Uri) -> Self {
        let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        let rest: Option<(&str, &[&str])> = match segs.as_slice() {
            ["api", _version, rest @ ..] => Some(("", rest)),
            ["apis", group, _version, rest @ ..] => Some((group, rest)),
            _ => None,
        };
        let watching = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let Some((group, rest)) = rest else {
            return Self::new(&method.as_str().to_lowercase(), "", uri.path(), None);
        };
        let rest = match rest {
            ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
            other => other,
        };
        let (resource, name, sub) = match rest {
            [r] => (*r, None, None),
            [r, n] => (*r, Some(*n), None),
            [r, n, s, ..] => (*r, Some(*n), Some(*s)),
            [] => ("", None, None),
        };
        let verb = match (method.as_str(), name.is_some()) {
            ("GET", _) if watching => "watch",
            ("GET", true) => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (m, _) => return Self::new(&m.to_lowercase(), group, resource, sub),
        };
        Self::new(verb, group, resource, sub)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group} {}", self.verb, self.resource)?;
        if let Some(s) = &self.subresource {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Everything a Role document grants, one [`Access`] per verb and resource.
pub fn granted_by_role(role: &serde_yaml::Value) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .map(|x| x.as_str().expect("RBAC lists hold strings").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for rule in role["rules"].as_sequence().expect("a Role has rules") {
        for group in strings(&rule["apiGroups"]) {
            for res in strings(&rule["resources"]) {
                let (resource, sub) = match res.split_once('/') {
                    Some((r, s)) => (r.to_owned(), Some(s)),
                    None => (res.clone(), None),
                };
                for verb in strings(&rule["verbs"]) {
                    out.insert(Access::new(&verb, &group, &resource, sub));
                }
            }
        }
    }
    out
}

/// The Role documents of a YAML stream (several `---` documents).
pub fn roles_in(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| v["kind"] == "Role" || v["kind"] == "ClusterRole")
        .collect()
}

/// What `manifests/10-rbac.yaml` grants the lb.
pub fn manifest_grants() -> BTreeSet<Access> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/10-rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let roles = roles_in(&text);
    assert_eq!(roles.len(), 1, "one Role in {path}");
    granted_by_role(&roles[0])
}

/// How the fake answers the status writes of one Upstream.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An API error (`Status` object) with this code, reason and message.
    Api {
        code: u16,
        reason: &'static str,
        message: String,
    },
    /// No answer at all: the request hangs until the client gives up.
    Hang,
}

impl Fault {
    /// 422 Invalid, as a validating admission webhook or schema check says it.
    pub fn invalid(message: &str) -> Fault {
        Fault::Api {
            code: 422,
            reason: "Invalid",
            message: message.to_owned(),
        }
    }
    /// 409 Conflict.
    pub fn conflict() -> Fault {
        Fault::Api {
            code: 409,
            reason: "Conflict",
            message: "Operation cannot be fulfilled: the object has been modified".to_owned(),
        }
    }
    /// 500 InternalError.
    pub fn internal() -> Fault {
        Fault::Api {
            code: 500,
            reason: "InternalError",
            message: "Internal error occurred: etcdserver: request timed out".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    /// Watches asking for an older version get 410 Gone.
    compacted: u64,
    /// Objects created so far (each gets a later creationTimestamp).
    created: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Every status PATCH body that was accepted, by Upstream name, in order.
    status_writes: Vec<(String, Value)>,
    /// Every status PATCH received (accepted or not), by Upstream name.
    status_attempts: Vec<String>,
    /// Faults for status writes: (fault, remaining times; `None` = forever).
    faults: HashMap<String, (Fault, Option<usize>)>,
    /// Answer 415 to server-side apply on the status subresource.
    reject_status_apply: bool,
    /// Upstream creates that had to wait for [`FakeApi::release_creates`].
    held_creates: usize,
    /// The Upstream schema used for pruning (`openAPIV3Schema`).
    upstream_schema: Value,
    /// Upstreams created through the API (POST).
    creates: Vec<String>,
    /// Watch requests served.
    watch_requests: usize,
    /// List requests served.
    list_requests: usize,
    /// Every kind of request served.
    served: BTreeSet<Access>,
    /// The same with the namespace it was made in (`None`: cluster-wide).
    served_in: BTreeSet<(Access, Option<String>)>,
    /// Every status write accepted: (kind, namespace/name, body).
    status_log: Vec<(Kind, String, Value)>,
    /// API groups answered 404, as a server without their CRDs does.
    hidden_groups: BTreeSet<String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    drop_watches: broadcast::Sender<()>,
    bookmark_every: Duration,
    /// Whether Upstream creates are answered (false: they wait).
    creates_open: Arc<watch::Sender<bool>>,
}

/// Which RBAC a scenario's requests are checked against when the fake is
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rbac {
    /// The Role of `manifests/10-rbac.yaml` (namespace [`NS`]).
    Upstreams,
    /// The ClusterRole and the Role (namespace [`NS`]) of
    /// `manifests/gateway-api/20-rbac.yaml`.
    GatewayApi,
    /// The ClusterRole of `manifests/ingress/20-rbac.yaml`.
    Ingress,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    rbac: Rbac,
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

/// `metadata.name=`, `metadata.namespace=` and `type=` (Secrets) field
/// selectors, `,`-separated (others match nothing).
fn fields_match(selector: Option<&str>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
        Some(("metadata.namespace", v)) => obj["metadata"]["namespace"].as_str() == Some(v),
        Some(("type", v)) => obj["type"].as_str() == Some(v),
        _ => false,
    })
}

/// Drops the fields `schema` does not declare, as the API server prunes a
/// custom resource against its structural schema.
fn prune(value: &mut Value, schema: &Value) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                if !preserve {
                    map.retain(|k, _| props.contains_key(k));
                }
                for (k, v) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(v, s);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for v in map.values_mut() {
                    prune(v, &schema["additionalProperties"]);
                }
            } else if schema["type"] == "object" && !preserve {
                map.clear();
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for v in items {
                prune(v, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The `openAPIV3Schema` of the CRD that `lb crd` prints.
pub fn crd_schema() -> Value {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(lb::crd::Upstream::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

impl Shared {
    /// Stores a write, unless it changes nothing (then, like the API server,
    /// no new resourceVersion and no event). Returns the stored object.
    fn commit(&self, kind: Kind, type_: &'static str, mut object: Value) -> Value {
        let mut inner = self.inner.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.kind());
        let ns = if kind.namespaced() {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(NS)
                .to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        if kind == Kind::Upstream && type_ != "DELETED" {
            let keep = (
                object["apiVersion"].take(),
                object["kind"].take(),
                object["metadata"].take(),
            );
            prune(&mut object, &inner.upstream_schema);
            object["apiVersion"] = keep.0;
            object["kind"] = keep.1;
            object["metadata"] = keep.2;
        }
        let key = (kind, ns.clone(), name);
        let current = inner.objects.get(&key);
        if type_ == "MODIFIED"
            && let Some(current) = current
        {
            let mut same = object.clone();
            same["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            if &same == current {
                return current.clone();
            }
        }
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if type_ == "ADDED" {
            inner.created += 1;
            let t = k8s_openapi::jiff::Timestamp::from_second(
                1_767_225_600 + i64::try_from(inner.created).unwrap(),
            )
            .unwrap();
            if object["metadata"]["creationTimestamp"].is_null() {
                object["metadata"]["creationTimestamp"] = json!(t.to_string());
            }
        }
        if type_ == "DELETED" {
            inner.objects.remove(&key);
        } else {
            inner.objects.insert(key, object.clone());
        }
        let change = Change {
            rv,
            kind,
            namespace: ns,
            type_,
            object: object.clone(),
        };
        inner.history.push(change.clone());
        // Send under the lock so watchers see changes in order.
        let _ = self.changes.send(change);
        object
    }

    fn object_in(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { ns } else { "" };
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        self.object_in(kind, NS, name)
    }
}

#[derive(serde::Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
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

fn error_response(code: u16, reason: &str, message: &str) -> Response {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        status_error(code, reason, message),
    )
}

/// Whether a change or object is in the scope of a list or watch: its kind,
/// the namespace asked for (`None`: all), the selectors.
fn in_scope(
    kind: Kind,
    ns: Option<&str>,
    q: &ListQuery,
    k: Kind,
    obj_ns: &str,
    obj: &Value,
) -> bool {
    k == kind
        && ns.is_none_or(|ns| ns == obj_ns)
        && selector_matches(q.label_selector.as_deref(), obj)
        && fields_match(q.field_selector.as_deref(), obj)
}

async fn list_or_watch(shared: Shared, kind: Kind, ns: Option<String>, q: ListQuery) -> Response {
    let watching = matches!(q.watch.as_deref(), Some("true") | Some("1"));
    if !watching {
        let inner = &mut *shared.inner.lock().unwrap();
        inner.list_requests += 1;
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((k, n, _), o)| in_scope(kind, ns.as_deref(), &q, *k, n, o))
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
            if in_scope(kind, ns.as_deref(), &q, c.kind, &c.namespace, &c.object)
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
                        if in_scope(kind, ns.as_deref(), &q, c.kind, &c.namespace, &c.object)
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

async fn create(s: Shared, kind: Kind, ns: Option<String>, body: Bytes) -> Response {
    let obj: Value = serde_json::from_slice(&body).unwrap();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut open = s.creates_open.subscribe();
    // Only Upstream creates are held: Ingress mode's Events go through.
    if kind == Kind::Upstream && !*open.borrow_and_update() {
        s.inner.lock().unwrap().held_creates += 1;
        let _ = open.wait_for(|open| *open).await;
    }
    let ns = ns.unwrap_or_default();
    if s.object_in(kind, &ns, &name).is_some() {
        return error_response(409, "AlreadyExists", "already exists");
    }
    let mut obj = obj;
    obj["metadata"]["generation"] = json!(1);
    if kind.namespaced() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    s.inner.lock().unwrap().creates.push(name);
    let created = s.commit(kind, "ADDED", obj);
    json_response(StatusCode::CREATED, created)
}

async fn patch_status(
    s: Shared,
    kind: Kind,
    ns: String,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = {
        let inner = &mut *s.inner.lock().unwrap();
        inner.status_attempts.push(name.clone());
        match inner.faults.get_mut(&name) {
            Some((fault, times)) => {
                let fault = fault.clone();
                match times {
                    Some(0) => None,
                    Some(n) => {
                        *n -= 1;
                        Some(fault)
                    }
                    None => Some(fault),
                }
            }
            None => None,
        }
    };
    match fault {
        Some(Fault::Api {
            code,
            reason,
            message,
        }) => return error_response(code, reason, &message),
        Some(Fault::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(400, "BadRequest", &e.to_string()),
    };
    let Some(mut obj) = s.object_in(kind, &ns, &name) else {
        return error_response(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", kind.plural()),
        );
    };
    let unsupported = || {
        error_response(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json \
                 (got {content_type})"
            ),
        )
    };
    match content_type.as_str() {
        "application/apply-patch+yaml" => {
            if s.inner.lock().unwrap().reject_status_apply {
                return unsupported();
            }
            // One field manager owns the whole status: apply replaces it.
            obj["status"] = patch["status"].clone();
        }
        "application/merge-patch+json" => {
            // A resourceVersion in the patch is a precondition.
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                return error_response(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                         modified; please apply your changes to the latest version and try again",
                        kind.plural()
                    ),
                );
            }
            if let Some(status) = patch.get("status") {
                merge_patch(&mut obj["status"], status);
            }
        }
        _ => return unsupported(),
    }
    {
        let inner = &mut *s.inner.lock().unwrap();
        inner.status_writes.push((name.clone(), patch.clone()));
        inner
            .status_log
            .push((kind, format!("{ns}/{name}"), patch.clone()));
    }
    let updated = s.commit(kind, "MODIFIED", obj);
    json_response(StatusCode::OK, updated)
}

/// A resource request: kind, namespace, name, subresource.
struct Target {
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some((*ns).to_owned()), more),
        other => (None, other),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some((*n).to_owned()), None),
        [r, n, s] => (*r, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return None,
    };
    Some(Target {
        kind: Kind::at(group, version, resource)?,
        ns,
        name,
        sub,
    })
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let not_found = || {
        error_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let Some(t) = target(req.uri().path()) else {
        return not_found();
    };
    let group = t.kind.api_version().rsplit_once('/').map_or("", |(g, _)| g);
    if s.inner.lock().unwrap().hidden_groups.contains(group) {
        return not_found();
    }
    let method = req.method().clone();
    let q: ListQuery = req
        .uri()
        .query()
        .and_then(serde_urlencoded_like)
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    match (method, t.name, t.sub.as_deref()) {
        (Method::GET, None, None) => list_or_watch(s, t.kind, t.ns, q).await,
        (Method::POST, None, None) => create(s, t.kind, t.ns, body).await,
        (Method::GET, Some(name), None | Some("status")) => {
            match s.object_in(t.kind, t.ns.as_deref().unwrap_or(""), &name) {
                Some(o) => json_response(StatusCode::OK, o),
                None => error_response(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", t.kind.plural()),
                ),
            }
        }
        (Method::PATCH, Some(name), Some("status")) => {
            patch_status(s, t.kind, t.ns.unwrap_or_default(), name, headers, body).await
        }
        _ => not_found(),
    }
}

/// Parses a query string into [`ListQuery`] (percent-decoded).
fn serde_urlencoded_like(q: &str) -> Option<ListQuery> {
    let mut map = serde_json::Map::new();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let value = match k {
            "allowWatchBookmarks" => json!(v == "true"),
            "timeoutSeconds" => json!(v.parse::<u64>().ok()?),
            _ => json!(v),
        };
        map.insert(k.to_owned(), value);
    }
    serde_json::from_value(Value::Object(map)).ok()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn record_access(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let access = Access::of(req.method(), req.uri());
    let ns = target(req.uri().path()).and_then(|t| {
        // A namespace object is cluster-scoped even though its URL names it.
        (t.kind != Kind::Namespace).then_some(t.ns).flatten()
    });
    {
        let inner = &mut *s.inner.lock().unwrap();
        inner.served.insert(access.clone());
        inner.served_in.insert((access, ns));
    }
    next.run(req).await
}

fn router(shared: Shared) -> Router {
    Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_access,
        ))
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
        Self::start_with(Rbac::Upstreams)
    }

    /// A fake whose requests are checked against the Gateway API mode's
    /// RBAC (`manifests/gateway-api/20-rbac.yaml`) when it is dropped.
    pub fn start_gateway() -> FakeApi {
        Self::start_with(Rbac::GatewayApi)
    }

    /// A fake whose requests are checked against the Ingress mode's RBAC
    /// (`manifests/ingress/20-rbac.yaml`) when it is dropped.
    pub fn start_ingress() -> FakeApi {
        Self::start_with(Rbac::Ingress)
    }

    fn start_with(rbac: Rbac) -> FakeApi {
        let (changes, _) = broadcast::channel(4096);
        let (drop_watches, _) = broadcast::channel(16);
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                upstream_schema: crd_schema(),
                ..Inner::default()
            })),
            changes,
            drop_watches,
            bookmark_every: Duration::from_millis(200),
            creates_open: Arc::new(watch::channel(true).0),
        };
        let (addr, stop, thread) = serve_thread("127.0.0.1:0".parse().unwrap(), shared.clone());
        FakeApi {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
            rbac,
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

    /// Status writes of `name` fail with `fault`, `times` times (`None`:
    /// until [`FakeApi::clear_fault`]).
    pub fn fail_status(&self, name: &str, fault: Fault, times: Option<usize>) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .faults
            .insert(name.to_owned(), (fault, times));
    }

    /// Status writes of `name` succeed again.
    pub fn clear_fault(&self, name: &str) {
        self.shared.inner.lock().unwrap().faults.remove(name);
    }

    /// Answer server-side apply on the status subresource with 415.
    pub fn reject_status_apply(&self, reject: bool) {
        self.shared.inner.lock().unwrap().reject_status_apply = reject;
    }

    /// Answer every request for `group` with 404, as an API server does
    /// while the group's CRDs are not installed (`false`: serve it again).
    pub fn hide_group(&self, group: &str, hidden: bool) {
        let mut inner = self.shared.inner.lock().unwrap();
        if hidden {
            inner.hidden_groups.insert(group.to_owned());
        } else {
            inner.hidden_groups.remove(group);
        }
    }

    /// From now on, Upstream creates wait, unanswered and not stored,
    /// until [`FakeApi::release_creates`].
    pub fn hold_creates(&self) {
        self.shared.creates_open.send_replace(false);
    }

    /// Answers the held Upstream creates and every later one.
    pub fn release_creates(&self) {
        self.shared.creates_open.send_replace(true);
    }

    /// How many Upstream creates have had to wait (see
    /// [`FakeApi::hold_creates`]).
    pub fn held_creates(&self) -> usize {
        self.shared.inner.lock().unwrap().held_creates
    }

    /// The schema Upstreams are pruned against (default: [`crd_schema`]).
    pub fn set_upstream_schema(&self, schema: Value) {
        self.shared.inner.lock().unwrap().upstream_schema = schema;
    }

    pub fn put_slice(&self, slice: Value) {
        self.put(Kind::Slice, slice);
    }

    pub fn delete_slice(&self, name: &str) {
        if let Some(obj) = self.shared.object(Kind::Slice, name) {
            self.shared.commit(Kind::Slice, "DELETED", obj);
        }
    }

    /// Creates or replaces an object of `kind` (its namespace from its
    /// metadata, default [`NS`]): a changed spec bumps the generation; the
    /// status the server has is kept unless the object brings one.
    pub fn put(&self, kind: Kind, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(NS)
            .to_owned();
        let old = self.shared.object_in(kind, &ns, &name);
        let type_ = match &old {
            Some(o) => {
                let labels = obj["metadata"]["labels"].clone();
                let annotations = obj["metadata"]["annotations"].clone();
                obj["metadata"] = o["metadata"].clone();
                obj["metadata"]["labels"] = labels;
                obj["metadata"]["annotations"] = annotations;
                let spec_changed = o["spec"] != obj["spec"];
                let generation = o["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] = json!(if spec_changed {
                    generation + 1
                } else {
                    generation
                });
                if obj["status"].is_null() && !o["status"].is_null() {
                    obj["status"] = o["status"].clone();
                }
                "MODIFIED"
            }
            None => {
                obj["metadata"]["generation"] = json!(1);
                "ADDED"
            }
        };
        self.shared.commit(kind, type_, obj)
    }

    /// Puts every object of a multi-document YAML stream (kinds by their
    /// `apiVersion`/`kind`).
    pub fn put_yaml(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value =
                serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            if v.is_null() {
                continue;
            }
            let kind = Kind::of(&v).unwrap_or_else(|| panic!("a kind the fake serves: {v}"));
            self.put(kind, v);
        }
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) {
        if let Some(obj) = self.shared.object_in(kind, ns, name) {
            self.shared.commit(kind, "DELETED", obj);
        }
    }

    /// Every stored object of `kind` (all namespaces).
    pub fn all(&self, kind: Kind) -> Vec<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// An object as stored (`ns` ignored for cluster-scoped kinds).
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.shared.object_in(kind, ns, name)
    }

    /// Every accepted status write of an object (`namespace/name`; a
    /// cluster-scoped object: `/name`).
    pub fn status_log(&self, kind: Kind, key: &str) -> Vec<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .status_log
            .iter()
            .filter(|(k, n, _)| *k == kind && n == key)
            .map(|(_, _, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an Upstream (bumping its generation).
    pub fn put_upstream(&self, name: &str, spec: Value) {
        let old = self.shared.object(Kind::Upstream, name);
        let mut obj = json!({"metadata": {"name": name}, "spec": spec});
        let type_ = match &old {
            Some(o) => {
                obj["metadata"] = o["metadata"].clone();
                obj["metadata"]["generation"] =
                    json!(o["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                if !o["status"].is_null() {
                    obj["status"] = o["status"].clone();
                }
                "MODIFIED"
            }
            None => {
                obj["metadata"]["generation"] = json!(1);
                "ADDED"
            }
        };
        self.shared.commit(Kind::Upstream, type_, obj);
    }

    /// Deletes an Upstream.
    pub fn delete_upstream(&self, name: &str) {
        if let Some(obj) = self.shared.object(Kind::Upstream, name) {
            self.shared.commit(Kind::Upstream, "DELETED", obj);
        }
    }

    pub fn upstream(&self, name: &str) -> Option<Value> {
        self.shared.object(Kind::Upstream, name)
    }

    /// The accepted status PATCH bodies of `name`, in order.
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

    /// How many status PATCHes of `name` arrived, accepted or not.
    pub fn status_attempts(&self, name: &str) -> usize {
        self.shared
            .inner
            .lock()
            .unwrap()
            .status_attempts
            .iter()
            .filter(|n| *n == name)
            .count()
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

    /// Every kind of request served so far.
    pub fn served(&self) -> BTreeSet<Access> {
        self.shared.inner.lock().unwrap().served.clone()
    }

    /// Every kind of request served so far, with the namespace it was made
    /// in (`None`: cluster-wide).
    pub fn served_in(&self) -> BTreeSet<(Access, Option<String>)> {
        self.shared.inner.lock().unwrap().served_in.clone()
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

/// What the Gateway API mode's RBAC grants: (ClusterRole grants, Role
/// grants in [`NS`]).
pub fn gateway_grants() -> (BTreeSet<Access>, BTreeSet<Access>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/gateway-api/20-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut cluster = BTreeSet::new();
    let mut namespaced = BTreeSet::new();
    for role in roles_in(&text) {
        if role["kind"] == "ClusterRole" {
            cluster.extend(granted_by_role(&role));
        } else {
            assert_eq!(
                role["metadata"]["namespace"], NS,
                "{path}: the Role's namespace"
            );
            namespaced.extend(granted_by_role(&role));
        }
    }
    (cluster, namespaced)
}

/// What the Ingress mode's ClusterRole grants (cluster-wide).
pub fn ingress_grants() -> BTreeSet<Access> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/ingress/20-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let roles = roles_in(&text);
    assert_eq!(roles.len(), 1, "one ClusterRole in {path}");
    assert_eq!(roles[0]["kind"], "ClusterRole", "{path}");
    granted_by_role(&roles[0])
}

/// The requests in `served` that `rbac` does not grant.
pub fn not_granted(rbac: Rbac, served: &BTreeSet<(Access, Option<String>)>) -> Vec<String> {
    match rbac {
        Rbac::Upstreams => {
            let granted = manifest_grants();
            served
                .iter()
                .filter(|(a, _)| !granted.contains(a))
                .map(|(a, _)| a.to_string())
                .collect()
        }
        Rbac::GatewayApi => {
            let (cluster, namespaced) = gateway_grants();
            served
                .iter()
                .filter(|(a, ns)| {
                    !(cluster.contains(a) || (ns.as_deref() == Some(NS) && namespaced.contains(a)))
                })
                .map(|(a, ns)| match ns {
                    Some(ns) => format!("{a} in {ns}"),
                    None => format!("{a} cluster-wide"),
                })
                .collect()
        }
        Rbac::Ingress => {
            let granted = ingress_grants();
            served
                .iter()
                .filter(|(a, _)| !granted.contains(a))
                .map(|(a, _)| a.to_string())
                .collect()
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.kill();
        // Every scenario is an RBAC check: the code called nothing that the
        // RBAC of its mode does not grant.
        if !thread::panicking() {
            let missing = not_granted(self.rbac, &self.served_in());
            assert!(
                missing.is_empty(),
                "the lb made API calls that its RBAC ({:?}) does not grant: {missing:?}",
                self.rbac
            );
        }
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
