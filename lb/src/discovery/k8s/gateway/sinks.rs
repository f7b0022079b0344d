//! Where the Gateway API statuses go: one [`Sink`] per kind for the
//! generic status writer ([`super::super::status`]).
//!
//! - GatewayClass and Gateway statuses are roundhouse's alone (the class
//!   names our controller): server-side apply of the whole status with our
//!   field manager, like the Upstream's ([`ApplySink`]).
//! - Route statuses are shared: `status.parents` holds one entry per parent
//!   and controller, and other controllers write theirs into the same list
//!   (an atomic list for server-side apply). So [`RouteSink`] reads the
//!   object, replaces only our controller's entries for the parents we
//!   handle (and drops ours for parents no longer in the spec), and writes
//!   the list back with a JSON merge patch that carries the
//!   `resourceVersion` it read: a concurrent write of another controller
//!   makes it fail with 409, which the writer retries after reading again.

use std::fmt::Debug;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::gateway_api::{
    CONTROLLER_NAME, GRPCRoute, Gateway, GatewayClass, GatewayClassStatus, GatewayStatus,
    HTTPRoute, ParentReference, RouteParentStatus, RouteStatus,
};
use super::super::status::{FIELD_MANAGER, Method, Sink};

/// The API of the object with store key `key` (`namespace/name`, or a
/// cluster-scoped `name`) and its name.
fn api_for<K>(client: &Client, key: &str) -> (Api<K>, String)
where
    K: Resource<DynamicType = ()>,
    K::Scope: ScopeApi,
{
    match key.split_once('/') {
        Some((ns, name)) => (K::Scope::api(client, Some(ns)), name.to_owned()),
        None => (K::Scope::api(client, None), key.to_owned()),
    }
}

/// How to build an `Api` for a resource scope.
pub trait ScopeApi {
    /// The API for `namespace` (namespaced kinds) or the cluster.
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: &Client,
        ns: Option<&str>,
    ) -> Api<K>;
}

impl ScopeApi for k8s_openapi::NamespaceResourceScope {
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: &Client,
        ns: Option<&str>,
    ) -> Api<K> {
        Api::namespaced(client.clone(), ns.unwrap_or("default"))
    }
}

impl ScopeApi for k8s_openapi::ClusterResourceScope {
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: &Client,
        _: Option<&str>,
    ) -> Api<K> {
        Api::all(client.clone())
    }
}

/// Writes a whole status with server-side apply (or a merge patch when
/// the server does not take apply on the status subresource).
pub struct ApplySink<K, S> {
    client: Client,
    resource: &'static str,
    _kind: PhantomData<fn() -> (K, S)>,
}

impl<K, S> ApplySink<K, S> {
    /// A sink writing through `client`; `resource` names the kind in logs.
    pub fn new(client: Client, resource: &'static str) -> Self {
        Self {
            client,
            resource,
            _kind: PhantomData,
        }
    }
}

impl<K, S> Sink<S> for ApplySink<K, S>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    K::Scope: ScopeApi,
    S: Serialize + Send + 'static,
{
    fn resource(&self) -> &'static str {
        self.resource
    }

    fn write(
        &self,
        name: String,
        status: S,
        method: Method,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        let (api, name) = api_for::<K>(&self.client, &name);
        Box::pin(async move {
            match method {
                Method::Apply => {
                    let patch = serde_json::json!({
                        "apiVersion": K::api_version(&()),
                        "kind": K::kind(&()),
                        "status": status,
                    });
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch_status(&name, &params, &Patch::Apply(&patch))
                        .await?;
                }
                Method::Merge => {
                    let patch = serde_json::json!({ "status": status });
                    let params = PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    };
                    api.patch_status(&name, &params, &Patch::Merge(&patch))
                        .await?;
                }
            }
            Ok(())
        })
    }
}

/// The GatewayClass status sink.
pub type ClassSink = ApplySink<GatewayClass, GatewayClassStatus>;
/// The Gateway status sink.
pub type GatewaySink = ApplySink<Gateway, GatewayStatus>;

/// A route kind whose status is a [`RouteStatus`].
pub trait RouteObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + 'static
{
    /// Its parent references.
    fn parent_refs(&self) -> &[ParentReference];
    /// Its status.
    fn route_status(&self) -> Option<&RouteStatus>;
}

impl RouteObject for HTTPRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn route_status(&self) -> Option<&RouteStatus> {
        self.status.as_ref()
    }
}

impl RouteObject for GRPCRoute {
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn route_status(&self) -> Option<&RouteStatus> {
        self.status.as_ref()
    }
}

/// `current` with our entries replaced by `ours`: other controllers'
/// entries are kept as they are, and so are ours for parents that are in
/// the spec but not in `ours` (another roundhouse LB handles them).
pub fn merge_parents(
    current: &[RouteParentStatus],
    spec: &[ParentReference],
    ours: &[RouteParentStatus],
) -> Vec<RouteParentStatus> {
    let mut out: Vec<RouteParentStatus> = current
        .iter()
        .filter(|e| {
            e.controller_name != CONTROLLER_NAME
                || (spec.contains(&e.parent_ref)
                    && !ours.iter().any(|o| o.parent_ref == e.parent_ref))
        })
        .cloned()
        .collect();
    out.extend(ours.iter().cloned());
    out
}

/// Writes our entries of a route's `status.parents` (read, merge, write
/// with the version read).
pub struct RouteSink<K> {
    client: Client,
    resource: &'static str,
    _kind: PhantomData<fn() -> K>,
}

impl<K> RouteSink<K> {
    /// A sink writing through `client`.
    pub fn new(client: Client, resource: &'static str) -> Self {
        Self {
            client,
            resource,
            _kind: PhantomData,
        }
    }
}

impl<K: RouteObject> Sink<Vec<RouteParentStatus>> for RouteSink<K> {
    fn resource(&self) -> &'static str {
        self.resource
    }

    fn write(
        &self,
        key: String,
        ours: Vec<RouteParentStatus>,
        _method: Method,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        let (api, name) = api_for::<K>(&self.client, &key);
        Box::pin(async move {
            let object = api.get_status(&name).await?;
            let current = object
                .route_status()
                .map(|s| s.parents.as_slice())
                .unwrap_or_default();
            let parents = merge_parents(current, object.parent_refs(), &ours);
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": object.meta().resource_version },
                "status": { "parents": parents },
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            api.patch_status(&name, &params, &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gw: &str, controller: &str) -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: ParentReference {
                name: gw.into(),
                ..ParentReference::default()
            },
            controller_name: controller.into(),
            conditions: Vec::new(),
        }
    }

    fn parent(gw: &str) -> ParentReference {
        ParentReference {
            name: gw.into(),
            ..ParentReference::default()
        }
    }

    #[test]
    fn merging_keeps_other_controllers_and_other_lbs_entries() {
        let current = vec![
            entry("a", "example.com/other"),
            entry("a", CONTROLLER_NAME),
            entry("b", CONTROLLER_NAME),
            entry("gone", CONTROLLER_NAME),
            entry("gone", "example.com/other"),
        ];
        let spec = [parent("a"), parent("b")];
        let mut ours = entry("a", CONTROLLER_NAME);
        ours.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            message: String::new(),
            observed_generation: Some(2),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }];
        let merged = merge_parents(&current, &spec, std::slice::from_ref(&ours));
        let show: Vec<(String, String, usize)> = merged
            .iter()
            .map(|e| {
                (
                    e.parent_ref.name.clone(),
                    e.controller_name.clone(),
                    e.conditions.len(),
                )
            })
            .collect();
        assert_eq!(
            show,
            [
                ("a".into(), "example.com/other".into(), 0),
                ("b".into(), CONTROLLER_NAME.into(), 0),
                ("gone".into(), "example.com/other".into(), 0),
                ("a".into(), CONTROLLER_NAME.into(), 1),
            ],
            "other controllers' entries stay (even for parents gone from the spec); \
             ours for another LB's parent stay; our stale one goes; ours replaced"
        );
    }
}
