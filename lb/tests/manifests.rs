//! The deployment files agree with the code: the CRD files are exactly
//! `lb crd`'s output, and the Role grants exactly the API calls the
//! controller makes — as observed by the fake API server, not as listed by
//! hand.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::fake_api::{Access, FakeApi, Fault, granted_by_role, manifest_grants, roles_in, slice};
use common::*;
use futures::FutureExt;
use lb::discovery::Discovery;
use lb::discovery::k8s::{DefaultUpstream, KubernetesDiscovery};
use lb::selection::Policy;
use serde_json::json;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn crd_files_are_the_generated_crd() {
    let generated = lb::crd::crd_yaml();
    for path in [
        "manifests/01-crd.yaml",
        "helm/roundhouse/crds/upstreams.yaml",
    ] {
        assert!(
            read(path) == generated,
            "{path} differs from `lb crd`; regenerate: cargo run -q -p lb -- crd > {path}"
        );
    }
}

/// The chart's Role, with its template actions replaced: the rules are
/// plain YAML in the template, only names and labels are templated.
fn chart_grants() -> BTreeSet<Access> {
    let text = read("helm/roundhouse/templates/rbac.yaml");
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(i) = rest.find("{{") {
                out.push_str(&rest[..i]);
                out.push_str("templated");
                rest = rest[i..].find("}}").map_or("", |j| &rest[i + j + 2..]);
            }
            out.push_str(rest);
            out + "\n"
        })
        .collect();
    let roles = roles_in(&plain);
    assert_eq!(roles.len(), 1, "one Role in the chart");
    assert_eq!(roles[0]["kind"], "Role", "no cluster-wide RBAC");
    granted_by_role(&roles[0])
}

/// The Role grants exactly what the lb asked the API server for: a scenario
/// that takes every path the code has (start-up with the default Upstream
/// absent, watches, a watch that fails and starts over, status writes, a
/// status write rejected by the server) against the fake API server, which
/// records each (verb, resource, subresource) it serves. Every other
/// Kubernetes scenario checks, when its fake is dropped, that what it served
/// is granted; this one checks that nothing more is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_exactly_what_the_lb_calls() {
    let granted = manifest_grants();
    assert_eq!(
        granted,
        chart_grants(),
        "manifests/ and the chart grant the same"
    );
    let text = read("manifests/10-rbac.yaml");
    for doc in roles_in(&text) {
        assert_ne!(doc["kind"], "ClusterRole", "no cluster-wide RBAC");
    }

    let b = backends_on_one_port(&["a"]);
    let api = FakeApi::start();
    api.put_slice(slice(
        "backend-1",
        "backend",
        "http",
        b[0].addr.port(),
        &[("127.0.0.11", true, true, false, "a")],
    ));
    api.put_upstream(
        "rejected",
        json!({"service": "backend", "match": {"pathPrefix": "/r"}}),
    );
    api.fail_status("rejected", Fault::invalid("denied"), None);
    let kubeconfig = api.kubeconfig();
    let lb = TestLb::start_source(
        move || {
            async move {
                let client = FakeApi::client(&kubeconfig).await;
                let d = DefaultUpstream::new("backend", "backend", Some("http")).unwrap();
                Box::new(KubernetesDiscovery::new(client, "roundhouse", Some(d)))
                    as Box<dyn Discovery>
            }
            .boxed()
        },
        test_proxy_config(),
        Policy::default(),
    );
    wait_until("default Upstream created and its status written", || {
        !api.status_writes("backend").is_empty() && api.status_attempts("rejected") > 0
    })
    .await;
    let lists = api.list_requests();
    api.drop_watches();
    api.compact();
    wait_until("re-list", || api.list_requests() > lists).await;
    drop(lb);

    let served = api.served();
    let show = |s: &BTreeSet<Access>| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        show(&served),
        show(&granted),
        "what the lb called (left) and what manifests/10-rbac.yaml grants (right)"
    );
}
