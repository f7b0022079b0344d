//! Where Ingress statuses go: `ingresses/status` of the Ingress's
//! namespace, through the generic status writer (one queue entry per
//! Ingress, back-off, `roundhouse-lb` as the field manager of a
//! server-side apply, a JSON merge patch where the server refuses apply).

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::{Ingress, IngressStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::discovery::k8s::status::{FIELD_MANAGER, Method, Sink};

/// Writes Ingress statuses; objects are keyed `namespace/name`.
#[derive(Clone)]
pub struct IngressSink {
    client: Client,
}

impl IngressSink {
    /// A sink using `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Sink<IngressStatus> for IngressSink {
    fn resource(&self) -> &'static str {
        "ingresses"
    }

    fn write(
        &self,
        key: String,
        status: IngressStatus,
        method: Method,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        let client = self.client.clone();
        Box::pin(async move {
            let (ns, name) = key.split_once('/').unwrap_or(("", key.as_str()));
            let api: Api<Ingress> = Api::namespaced(client, ns);
            match method {
                Method::Apply => {
                    let patch = serde_json::json!({
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "Ingress",
                        "status": status,
                    });
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch_status(name, &params, &Patch::Apply(&patch))
                        .await?;
                }
                Method::Merge => {
                    let patch = serde_json::json!({ "status": status });
                    let params = PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    };
                    api.patch_status(name, &params, &Patch::Merge(&patch))
                        .await?;
                }
            }
            Ok(())
        })
    }
}
