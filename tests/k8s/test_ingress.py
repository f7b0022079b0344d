"""Ingress mode: manifests/ingress/ and the chart's ingress.* values.

The files agree with the code (the controller name, the annotations used),
with each other (the chart renders manifests/ingress/), and with the default
deployment they are applied over (the lb Deployment differs only where the
mode needs it).
"""

from __future__ import annotations

import re

import pytest

import k8slib

INGRESS = k8slib.MANIFESTS / "ingress"
EXAMPLES = INGRESS / "examples"
INGRESS_VALUES = k8slib.CHART / "ci" / "values-ingress.yaml"
SOURCE = k8slib.ROOT / "lb" / "src" / "discovery" / "k8s" / "ingress"
PREFIX = "nginx.ingress.kubernetes.io/"


def objects(folder) -> list[dict]:
    return [d for p in sorted(folder.glob("*.yaml")) for d in k8slib.load_yaml_docs(p)]


def by_key(objs: list[dict]) -> dict:
    return {k8slib.key(o): o for o in objs}


def controller_name() -> str:
    text = (SOURCE / "class.rs").read_text()
    return re.search(r'pub const CONTROLLER: &str = "([^"]+)";', text).group(1)


def supported_annotations() -> set[str]:
    text = (SOURCE / "annotations.rs").read_text()
    block = re.search(r"pub const SUPPORTED: &\[&str\] = &\[(.*?)\];", text, re.S).group(1)
    return set(re.findall(r'"([a-z-]+)"', block))


@pytest.fixture(scope="session")
def ingress_manifests():
    return objects(INGRESS)


@pytest.fixture(scope="session")
def ingress_examples():
    return objects(EXAMPLES)


@pytest.fixture(scope="session")
def rendered_ingress():
    import helm_render

    return helm_render.render(INGRESS_VALUES, release=k8slib.RELEASE, namespace=k8slib.NAMESPACE)


def test_the_class_names_our_controller(ingress_manifests):
    classes = [o for o in ingress_manifests if o["kind"] == "IngressClass"]
    assert [c["metadata"]["name"] for c in classes] == ["roundhouse"]
    assert classes[0]["spec"]["controller"] == controller_name() == "roundhouse.dev/ingress-controller"
    assert "annotations" not in classes[0]["metadata"], "not the default class unless the user says so"


def test_every_ingress_uses_our_class_and_supported_annotations(ingress_manifests, ingress_examples):
    ingresses = [o for o in ingress_manifests + ingress_examples if o["kind"] == "Ingress"]
    assert {i["metadata"]["name"] for i in ingresses} == {"backend", "backend-canary"}
    supported = supported_annotations()
    for i in ingresses:
        assert i["spec"]["ingressClassName"] == "roundhouse"
        assert i["metadata"]["namespace"] == k8slib.NAMESPACE
        for name in i["metadata"].get("annotations", {}):
            assert name.startswith(PREFIX) and name[len(PREFIX):] in supported, name


def test_ingress_backends_name_ports_the_services_have(manifests, ingress_manifests, ingress_examples):
    services = {
        o["metadata"]["name"]: {p["name"] for p in o["spec"]["ports"]}
        for o in manifests + ingress_examples
        if o["kind"] == "Service"
    }
    for i in (o for o in ingress_manifests + ingress_examples if o["kind"] == "Ingress"):
        for rule in i["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                svc = path["backend"]["service"]
                assert svc["port"]["name"] in services[svc["name"]], (i["metadata"]["name"], svc)


def test_the_canary_is_the_main_path_with_an_exact_weight(ingress_manifests, ingress_examples):
    main = by_key(ingress_manifests)[("Ingress", "backend")]
    canary = by_key(ingress_examples)[("Ingress", "backend-canary")]
    ann = canary["metadata"]["annotations"]
    assert ann[PREFIX + "canary"] == "true"
    assert 0 < int(ann[PREFIX + "canary-weight"]) < 100
    main_paths = {(p["path"], p["pathType"]) for p in main["spec"]["rules"][0]["http"]["paths"]}
    for p in canary["spec"]["rules"][0]["http"]["paths"]:
        assert (p["path"], p["pathType"]) in main_paths, "a canary joins a main path"
    dep = by_key(ingress_examples)[("Deployment", "backend-canary")]
    assert dep["spec"]["replicas"] == 1
    pol = by_key(ingress_examples)[("NetworkPolicy", "backend-canary")]
    assert pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "backend-canary"


def test_the_lb_deployment_differs_from_the_default_only_where_the_mode_needs(manifests, ingress_manifests):
    base = by_key(manifests)[("Deployment", "lb")]
    mode = by_key(ingress_manifests)[("Deployment", "lb")]
    base_c = base["spec"]["template"]["spec"]["containers"][0]
    mode_c = mode["spec"]["template"]["spec"]["containers"][0]
    assert mode_c["args"] == ["serve", "--kubernetes", "--ingress", "--ingress-service", "lb"]
    assert {"name": "LB_TLS_LISTEN", "value": "0.0.0.0:8443"} in mode_c["env"]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in mode_c["ports"]
    strip = lambda c: {k: v for k, v in c.items() if k not in ("args", "env", "ports")}  # noqa: E731
    assert strip(base_c) == strip(mode_c)
    assert [e for e in mode_c["env"] if e["name"] != "LB_TLS_LISTEN"] == base_c["env"]
    assert [p for p in mode_c["ports"] if p["name"] != "https"] == base_c["ports"]
    for part in ("replicas", "selector", "strategy"):
        assert base["spec"][part] == mode["spec"][part]
    base_pod = dict(base["spec"]["template"]["spec"], containers=None)
    mode_pod = dict(mode["spec"]["template"]["spec"], containers=None)
    assert base_pod == mode_pod


def test_the_cluster_role_binds_the_lb_service_account(ingress_manifests):
    binding = by_key(ingress_manifests)[("ClusterRoleBinding", "roundhouse-lb-ingress")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "roundhouse-lb-ingress",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lb", "namespace": k8slib.NAMESPACE}]
    role = by_key(ingress_manifests)[("ClusterRole", "roundhouse-lb-ingress")]
    verbs = {v for r in role["rules"] for v in r["verbs"]}
    assert verbs <= {"list", "watch", "patch", "create"}, "never get every Secret by name, never delete"
    for r in role["rules"]:
        if "patch" in r["verbs"]:
            assert r["resources"] == ["ingresses/status"]
        if "create" in r["verbs"]:
            assert r == {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}


def test_pods_of_the_mode_meet_the_restricted_profile(ingress_manifests, ingress_examples):
    for label, spec in k8slib.pod_specs(ingress_manifests + ingress_examples):
        assert spec["securityContext"]["runAsNonRoot"] is True, label
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc["capabilities"]["drop"] == ["ALL"], label
            assert sc["readOnlyRootFilesystem"] is True, label


def test_the_chart_renders_the_ingress_manifests(ingress_manifests, rendered_ingress):
    rendered = by_key(rendered_ingress["templates"])
    for kind, name in [
        ("IngressClass", "roundhouse"),
        ("ClusterRole", "roundhouse-lb-ingress"),
        ("ClusterRoleBinding", "roundhouse-lb-ingress"),
        ("Ingress", "backend"),
    ]:
        want = by_key(ingress_manifests)[(kind, name)]
        got = rendered[(kind, name)]
        for part in ("spec", "rules", "roleRef", "subjects"):
            assert got.get(part) == want.get(part), (kind, name, part)
    lb = rendered[("Deployment", "lb")]["spec"]["template"]["spec"]["containers"][0]
    want = by_key(ingress_manifests)[("Deployment", "lb")]["spec"]["template"]["spec"]["containers"][0]
    assert lb["args"] == want["args"]
    assert {"name": "LB_TLS_LISTEN", "value": "0.0.0.0:8443"} in lb["env"]
    assert any(p["name"] == "https" and p["containerPort"] == 8443 for p in lb["ports"])
    kinds = {k for k, _ in rendered}
    assert "Role" not in kinds and "Upstream" not in kinds, "no Upstream RBAC or objects in Ingress mode"


def test_the_default_render_has_no_ingress_mode(rendered_default):
    kinds = {o["kind"] for o in rendered_default["templates"]}
    assert not kinds & {"IngressClass", "Ingress", "ClusterRole", "ClusterRoleBinding"}


def test_the_chart_refuses_ingress_and_gateway_api_modes_together(tmp_path):
    # The lb has one route source: --ingress and --gateway-api exclude each
    # other, and so do the chart's values.
    import helm_render

    values = tmp_path / "both-modes.yaml"
    values.write_text("ingress:\n  enabled: true\ngatewayApi:\n  enabled: true\n")
    with pytest.raises(Exception, match="one route source"):
        helm_render.render(values, release=k8slib.RELEASE, namespace=k8slib.NAMESPACE)
