"""manifests/gateway-api/: the Gateway API mode's objects agree with manifests/."""

from __future__ import annotations

import copy

import k8slib

GATEWAY_API = k8slib.MANIFESTS / "gateway-api"


def objects(path):
    return [d for p in sorted(path.glob("*.yaml")) for d in k8slib.load_yaml_docs(p)]


def test_the_lb_deployment_differs_from_manifests_only_in_its_args():
    """30-lb.yaml replaces the lb Deployment of manifests/30-lb.yaml when
    applied after it: the same object but for the mode's arguments (and the
    checkov note that says why it mounts a token)."""
    default = next(d for d in k8slib.manifest_objects() if k8slib.key(d) == ("Deployment", "lb"))
    gateway = next(d for d in objects(GATEWAY_API) if k8slib.key(d) == ("Deployment", "lb"))
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["serve", "--kubernetes", "--gateway-api"]
    assert "--gateway" in args and "--gateway-service" in args
    a, b = copy.deepcopy(default), copy.deepcopy(gateway)
    for obj in (a, b):
        obj["spec"]["template"]["spec"]["containers"][0].pop("args")
        obj["metadata"]["annotations"].pop("checkov.io/skip3")
    assert a == b


def test_rbac_is_one_cluster_role_bound_to_the_lb_service_account():
    docs = objects(GATEWAY_API)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lb", "namespace": k8slib.NAMESPACE}]
    # Read-only but for status: no create, update or delete anywhere.
    verbs = {v for rule in roles[0]["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch", "patch"}
    for rule in roles[0]["rules"]:
        if "patch" in rule["verbs"]:
            assert all(r.endswith("/status") for r in rule["resources"])


def test_gateway_route_and_class_fit_together():
    docs = objects(GATEWAY_API)
    cls = next(d for d in docs if d["kind"] == "GatewayClass")
    gw = next(d for d in docs if d["kind"] == "Gateway")
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    assert cls["spec"]["controllerName"] == "roundhouse.dev/gateway-controller"
    assert gw["spec"]["gatewayClassName"] == cls["metadata"]["name"]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--gateway") + 1] == f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"
    assert route["spec"]["parentRefs"][0]["name"] == gw["metadata"]["name"]
    backend = next(d for d in k8slib.manifest_objects() if k8slib.key(d) == ("Service", "backend"))
    ports = {p["port"] for p in backend["spec"]["ports"]}
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] in ports


def test_chart_gateway_api_mode_renders_the_manifests_objects():
    """helm/roundhouse with gatewayApi.enabled renders what manifests/gateway-api/
    holds: the lb arguments, the GatewayClass, the Gateway, the HTTPRoute (plus
    a GRPCRoute), and the same ClusterRole rules; the default render has none
    of it."""
    import helm_render

    rendered = helm_render.render(k8slib.CHART / "ci" / "values-gateway-api.yaml")
    objs = rendered["objects"] if isinstance(rendered, dict) else rendered
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    lb = next(o for o in by_kind["Deployment"] if o["metadata"]["name"] == "lb")
    args = lb["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["serve", "--kubernetes", "--gateway-api", "--gateway", "roundhouse/roundhouse",
                    "--gateway-service", "lb"]
    manifests = objects(GATEWAY_API)
    for kind in ("GatewayClass", "Gateway", "HTTPRoute"):
        want = next(d for d in manifests if d["kind"] == kind)
        got = next(d for d in by_kind[kind])
        assert got["spec"] == want["spec"], kind
    assert [g["spec"]["rules"][0]["matches"][0]["method"]["service"] for g in by_kind["GRPCRoute"]] == [
        "roundhouse.v1.Hosts"]
    role = next(d for d in manifests if d["kind"] == "ClusterRole")
    assert by_kind["ClusterRole"][0]["rules"] == role["rules"]
    assert "Upstream" not in by_kind, "Upstreams are not read in this mode"
