"""What `kubectl apply -f manifests/` and `helm install/upgrade/uninstall` do to a
cluster, with the real clients: kubectl (the binary on PATH) and Helm's own
engine (libhelm_sdkpy.so), against the stateful API stub of cluster_stub.py.

Shown here: the order kubectl creates objects in and that a re-apply creates
nothing; Helm's answer on a missing namespace (the README's old command); the
chart after manifests/ in the same namespace (refused, then --take-ownership);
the chart in two namespaces (the cluster-wide nodePort, and the way round it);
upgrade; uninstall and what stays: the CRD and the Upstream the lb created.
Not shown (a real cluster only): scheduling, admission (Pod Security), the
pods running, the lb writing statuses. kubectl runs with --validate=false:
the stub serves no OpenAPI document; scripts/k8s/validate.sh validates the
schemas with kubernetes-validate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

import k8slib
from cluster_stub import ClusterStub

# Installed by scripts/k8s/install-tools.sh; a missing one fails (never a skip).
import helm_sdkpy  # noqa: E402
CHART = str(k8slib.CHART)
UPSTREAMS = ("roundhouse.dev", "upstreams")


@pytest.fixture()
def cluster(tmp_path):
    with ClusterStub() as stub:
        stub.kubeconfig_path = stub.kubeconfig(tmp_path)
        stub.home = str(tmp_path)
        yield stub


def kubectl(cluster, *args) -> subprocess.CompletedProcess:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl is not installed (scripts/ci/install.sh installs it)")
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig_path, HOME=cluster.home)
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)


def helm(cluster, action: str, namespace: str, *args, **kwargs):
    """Run one Helm action; return (result, None) or (None, error text)."""
    cfg = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=cluster.kubeconfig_path)
    kwargs.setdefault("timeout", 60)
    if action in ("Install", "Upgrade", "Uninstall"):
        kwargs.setdefault("wait", False)
    try:
        return asyncio.run(getattr(helm_sdkpy, action)(cfg).run(*args, **kwargs)), None
    except helm_sdkpy.HelmError as e:
        return None, str(e)


def create_namespace(cluster, name: str):
    r = kubectl(cluster, "create", "namespace", name)
    assert r.returncode == 0, r.stderr


def apply_manifests(cluster):
    r = kubectl(cluster, "apply", "--validate=false", "-f", str(k8slib.MANIFESTS))
    assert r.returncode == 0, r.stderr
    return r


def lb_creates_default_upstream(cluster, namespace: str):
    """What the lb does at start (ensure_default): create Upstream "backend", no owner."""
    p = subprocess.run(
        [shutil.which("kubectl"), "-n", namespace, "apply", "--validate=false", "-f", "-"],
        input="apiVersion: roundhouse.dev/v1alpha1\nkind: Upstream\nmetadata:\n  name: backend\n"
              "spec:\n  service: backend\n  port: http\n",
        env=dict(os.environ, KUBECONFIG=cluster.kubeconfig_path, HOME=cluster.home),
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_kubectl_apply_manifests_creates_namespace_first_and_reapplies_cleanly(cluster, manifests):
    out = apply_manifests(cluster).stdout
    posts = [path.partition("?")[0] for method, path, _ in cluster.requests if method == "POST"]
    assert posts[0] == "/api/v1/namespaces", posts[:3]
    assert out.splitlines()[0] == "namespace/roundhouse created"
    for obj in manifests:
        ns = obj["metadata"].get("namespace")
        assert any(k.endswith(f"/{ns or ''}/{obj['metadata']['name']}") for k in cluster.objects), obj["kind"]
    before = len([1 for m, _p, _b in cluster.requests if m == "POST"])
    again = apply_manifests(cluster).stdout
    assert "created" not in again
    assert len([1 for m, _p, _b in cluster.requests if m == "POST"]) == before
    assert cluster.node_ports() == {30080: "/services/roundhouse/lb"}


def test_manifests_upstreams_apply_after_the_crd(cluster, manifest_upstreams):
    # docs/kubernetes.md: `kubectl apply -f manifests/` skips the folder
    # manifests/upstreams/, applied second once the CRD is established.
    apply_manifests(cluster)
    assert cluster.names(UPSTREAMS[1], "roundhouse", UPSTREAMS[0]) == set()
    r = kubectl(cluster, "apply", "--validate=false", "-f", str(k8slib.MANIFEST_UPSTREAMS))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["upstream.roundhouse.dev/backend-grpc created"]
    want = {o["metadata"]["name"] for o in manifest_upstreams}
    assert cluster.names(UPSTREAMS[1], "roundhouse", UPSTREAMS[0]) == want


def test_helm_install_needs_the_namespace(cluster):
    _, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART)
    assert 'namespaces "roundhouse" not found' in err
    # docs/kubernetes.md: the labelled namespace from manifests/ first.
    r = kubectl(cluster, "apply", "--validate=false", "-f", str(k8slib.MANIFESTS / "00-namespace.yaml"))
    assert r.returncode == 0, r.stderr
    rel, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART)
    assert err is None, err
    assert rel["info"]["status"] == "deployed"
    assert "./test.sh" in rel["info"]["notes"] and "nodePort=null" in rel["info"]["notes"]
    ns = cluster.get("namespaces", None, "roundhouse")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_chart_after_manifests_is_refused_then_takes_ownership(cluster):
    apply_manifests(cluster)
    _, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART)
    assert "exists and cannot be imported into the current release" in err, err
    assert "invalid ownership metadata" in err
    rel, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART, take_ownership=True)
    assert err is None, err
    assert rel["info"]["status"] == "deployed"
    lb = cluster.get("deployments", "roundhouse", "lb", group="apps")
    assert lb["metadata"]["annotations"]["meta.helm.sh/release-name"] == "roundhouse"
    assert lb["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_chart_in_two_namespaces_needs_another_node_port(cluster):
    for ns in ("roundhouse", "second"):
        create_namespace(cluster, ns)
    first, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART)
    assert err is None, err
    _, err = helm(cluster, "Install", "second", "roundhouse", CHART)
    assert "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated" in err
    # A failed install leaves a failed release behind (Helm's rule): remove it first.
    _, err = helm(cluster, "Uninstall", "second", "roundhouse")
    assert err is None, err
    rel, err = helm(cluster, "Install", "second", "roundhouse", CHART,
                    values={"lb": {"service": {"nodePort": None}}})
    assert err is None, err
    assert rel["info"]["status"] == "deployed"
    assert "port-forward svc/lb" in rel["info"]["notes"]
    ports = cluster.node_ports()
    assert ports[30080] == "/services/roundhouse/lb"
    assert sorted(ports.values()) == ["/services/roundhouse/lb", "/services/second/lb"]
    # crds/ went in once; the second install found the CRD and skipped it.
    crd_posts = [p for m, p, _ in cluster.requests if m == "POST" and "customresourcedefinitions" in p]
    assert len(crd_posts) >= 2
    assert cluster.names("customresourcedefinitions", "", "apiextensions.k8s.io") == {"upstreams.roundhouse.dev"}
    assert cluster.names("deployments", "second", "apps") == {"backend", "lb"}


def test_upgrade_then_uninstall_keeps_crd_and_the_lbs_upstream(cluster):
    create_namespace(cluster, "roundhouse")
    values = {"upstreams": [{"name": "api", "spec": {"service": "backend", "match": {"pathPrefix": "/api"}}}]}
    rel, err = helm(cluster, "Install", "roundhouse", "roundhouse", CHART, values=values)
    assert err is None, err
    lb_creates_default_upstream(cluster, "roundhouse")
    assert cluster.names(UPSTREAMS[1], "roundhouse", UPSTREAMS[0]) == {"api", "backend", "backend-grpc"}

    rel, err = helm(cluster, "Upgrade", "roundhouse", "roundhouse", CHART,
                    values={**values, "lb": {"replicaCount": 3}})
    assert err is None, err
    assert rel["version"] == 2 and rel["info"]["status"] == "deployed"
    assert cluster.get("deployments", "roundhouse", "lb", group="apps")["spec"]["replicas"] == 3
    touched = [(m, p) for m, p, _ in cluster.requests
               if "customresourcedefinitions" in p and m in ("PUT", "PATCH", "DELETE")]
    assert touched == [], "Helm must never upgrade crds/"

    _, err = helm(cluster, "Uninstall", "roundhouse", "roundhouse")
    assert err is None, err
    assert cluster.names("deployments", "roundhouse", "apps") == set()
    assert cluster.names("services", "roundhouse") == set()
    # What stays: the CRD (crds/ is never deleted) and the Upstream the lb
    # created (not part of the release); the chart's own Upstreams (backend-grpc
    # and "api" from the values) are gone.
    assert cluster.names("customresourcedefinitions", "", "apiextensions.k8s.io") == {"upstreams.roundhouse.dev"}
    assert cluster.names(UPSTREAMS[1], "roundhouse", UPSTREAMS[0]) == {"backend"}
    r = kubectl(cluster, "delete", "namespace", "roundhouse")
    assert r.returncode == 0, r.stderr
    assert cluster.names(UPSTREAMS[1], "roundhouse", UPSTREAMS[0]) == set()
