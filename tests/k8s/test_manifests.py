"""Policy tests on manifests/ (and, where it applies, on the chart renders)."""

import pytest

import k8slib

LB_LABELS = {"app.kubernetes.io/name": "lb", "app.kubernetes.io/part-of": "roundhouse"}
BACKEND_LABELS = {"app.kubernetes.io/name": "backend", "app.kubernetes.io/part-of": "roundhouse"}


def by_key(objects):
    return {k8slib.key(o): o for o in objects}


def all_pod_specs(manifests, rendered_default, rendered_custom):
    sources = [("manifests", manifests),
               ("chart(default)", rendered_default["objects"] + rendered_default["hooks"]),
               ("chart(custom)", rendered_custom["objects"] + rendered_custom["hooks"])]
    for src, objs in sources:
        for name, spec in k8slib.pod_specs(objs):
            yield f"{src}:{name}", spec


def test_files_apply_in_order_namespace_first():
    files = k8slib.manifest_files()
    assert [p.name for p in files] == sorted(p.name for p in files)
    first = k8slib.load_yaml_docs(files[0])
    assert first[0]["kind"] == "Namespace" and first[0]["metadata"]["name"] == "roundhouse"
    assert not list(k8slib.MANIFESTS.glob("kustomization.y*ml"))


def test_namespace_enforces_restricted(manifests):
    ns = by_key(manifests)[("Namespace", "roundhouse")]
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_every_namespaced_object_is_in_roundhouse(manifests):
    for obj in manifests:
        if obj["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue
        assert obj["metadata"].get("namespace") == "roundhouse", k8slib.key(obj)


def test_no_upstream_instance_in_manifests(manifests):
    # Applying a CRD and an instance in one kubectl apply fails on a fresh cluster.
    assert not [o for o in manifests if o["kind"] == "Upstream"]


def test_upstreams_folder_holds_only_upstreams(manifest_upstreams):
    # manifests/upstreams/ is applied second, once the CRD is established
    # (kubectl apply -f manifests/ skips folders); the other folders are the
    # opt-in modes: manifests/ingress/ (Ingress mode, test_ingress.py) is
    # applied instead of it, manifests/gateway-api/ (Gateway API mode,
    # test_gateway_api.py) after manifests/.
    assert sorted(p.name for p in k8slib.MANIFESTS.iterdir() if p.is_dir()) == ["gateway-api", "ingress", "upstreams"]
    assert [p for p in k8slib.MANIFEST_UPSTREAMS.iterdir() if p.is_dir()] == []
    assert manifest_upstreams
    for obj in manifest_upstreams:
        assert obj["apiVersion"] == "roundhouse.dev/v1alpha1" and obj["kind"] == "Upstream"
        assert obj["metadata"]["namespace"] == "roundhouse"
        assert k8slib.upstream_errors(obj) == [], obj["metadata"]["name"]


def test_grpc_upstream_selects_the_h2c_port(manifests, manifest_upstreams):
    ups = by_key(manifest_upstreams)[("Upstream", "backend-grpc")]["spec"]
    assert ups == {"service": "backend", "port": "grpc",
                   "match": {"pathPrefix": "/roundhouse.v1.Hosts/"}, "protocol": "h2c"}
    objs = by_key(manifests)
    svc = objs[("Service", ups["service"])]["spec"]
    ports = {p["name"]: p for p in svc["ports"]}
    # The lb resolves spec.port against the EndpointSlices, whose ports carry
    # the Service port's name and appProtocol but the target port's number:
    # both ports are 5000 there, so the Upstream must name its port.
    assert ports[ups["port"]]["appProtocol"] == "kubernetes.io/h2c"
    assert {p["targetPort"] for p in svc["ports"]} == {"http"}
    # The default Upstream the lb creates names the http port, so a second
    # port does not make it ambiguous (InvalidSpec).
    args = objs[("Deployment", "lb")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--service-port") + 1] == "http"
    assert ports["http"]["appProtocol"] == "http"


def test_crd_is_the_upstream_crd(manifests):
    crds = [o for o in manifests if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 1
    spec = crds[0]["spec"]
    assert crds[0]["metadata"]["name"] == "upstreams.roundhouse.dev"
    assert spec["group"] == "roundhouse.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Upstream" and "ups" in spec["names"]["shortNames"]
    v = k8slib.crd_version("v1alpha1")
    assert v["served"] and v["storage"] and "status" in v.get("subresources", {})


def test_chart_crd_is_identical_to_manifests_crd():
    chart_crds = k8slib.load_yaml_docs(k8slib.CHART / "crds" / "upstreams.yaml")
    assert chart_crds == [k8slib.crd()]


def test_pods_meet_restricted_profile(manifests, rendered_default, rendered_custom):
    seen = 0
    for name, spec in all_pod_specs(manifests, rendered_default, rendered_custom):
        seen += 1
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for vol in spec.get("volumes", []):
            assert "hostPath" not in vol, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser")) == 65532, where
            assert sc.get("runAsGroup", psc.get("runAsGroup")) == 65532, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", where
            assert "ports" not in c or all("hostPort" not in p for p in c["ports"]), where
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), where
    assert seen >= 5  # 2 manifests + 2 default + hook + ...


def test_service_account_tokens_only_on_lb(manifests):
    for name, spec in k8slib.pod_specs(manifests):
        expected = name == "Deployment/lb"
        assert spec.get("automountServiceAccountToken") is expected, name
    for sa in (o for o in manifests if o["kind"] == "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]
    deps = by_key(manifests)
    assert deps[("Deployment", "lb")]["spec"]["template"]["spec"]["serviceAccountName"] == "lb"


def test_no_cluster_scoped_rbac(manifests, rendered_default, rendered_custom):
    for objs in (manifests, rendered_default["objects"], rendered_custom["objects"]):
        kinds = {o["kind"] for o in objs}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_role_is_narrow(manifests):
    # That the rules equal exactly what the code calls is checked against what
    # the lb called in the fake API server by lb/tests/manifests.rs.
    roles = [o for o in manifests if o["kind"] == "Role"]
    assert len(roles) == 1 and roles[0]["metadata"]["name"] == "lb"
    got = {}
    for rule in roles[0]["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                got.setdefault((g, r), set()).update(rule["verbs"])
    assert "*" not in {v for verbs in got.values() for v in verbs}
    rb = by_key(manifests)[("RoleBinding", "lb")]
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lb"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "lb", "namespace": "roundhouse"}]


def test_networkpolicy_admits_only_lb_to_backend(manifests):
    pols = [o for o in manifests if o["kind"] == "NetworkPolicy"]
    assert len(pols) == 1
    spec = pols[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": BACKEND_LABELS}
    assert spec["policyTypes"] == ["Ingress"]
    assert len(spec["ingress"]) == 1
    rule = spec["ingress"][0]
    assert rule["from"] == [{"podSelector": {"matchLabels": LB_LABELS}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    # Policies see pod ports: 5000 is the container port both Service ports target.
    objs = by_key(manifests)
    container = objs[("Deployment", "backend")]["spec"]["template"]["spec"]["containers"][0]
    targets = {p["targetPort"] for p in objs[("Service", "backend")]["spec"]["ports"]}
    assert {p["containerPort"] for p in container["ports"] if p["name"] in targets} == {5000}
    # The selected pods are the backend pods and the admitted ones the lb pods.
    objs = by_key(manifests)
    backend_pods = objs[("Deployment", "backend")]["spec"]["template"]["metadata"]["labels"]
    lb_pods = objs[("Deployment", "lb")]["spec"]["template"]["metadata"]["labels"]
    assert BACKEND_LABELS.items() <= backend_pods.items()
    assert LB_LABELS.items() <= lb_pods.items()
    assert not LB_LABELS.items() <= backend_pods.items()


def test_backend_service_is_cluster_ip(manifests):
    svc = by_key(manifests)[("Service", "backend")]["spec"]
    assert svc.get("type", "ClusterIP") == "ClusterIP"
    assert svc["selector"] == BACKEND_LABELS
    assert [(p["name"], p["port"], p["targetPort"], p["appProtocol"]) for p in svc["ports"]] == [
        ("http", 5000, "http", "http"), ("grpc", 5001, "http", "kubernetes.io/h2c")]
    assert all("nodePort" not in p for p in svc["ports"])
    assert not svc.get("externalIPs")


def test_lb_service_nodeport_with_client_ip_affinity(manifests):
    svc = by_key(manifests)[("Service", "lb")]["spec"]
    assert svc["type"] == "NodePort"
    assert svc["sessionAffinity"] == "ClientIP"
    assert svc["selector"] == LB_LABELS
    assert [(p["name"], p["port"], p["nodePort"]) for p in svc["ports"]] == [("http", 8080, 30080)]


def test_deployments_contract(manifests):
    objs = by_key(manifests)
    backend = objs[("Deployment", "backend")]["spec"]
    lb = objs[("Deployment", "lb")]["spec"]
    assert backend["replicas"] == 2 and lb["replicas"] == 2

    b = backend["template"]["spec"]
    bc = b["containers"][0]
    assert bc["image"] == "roundhouse/backend:0.1.0" and bc["imagePullPolicy"] == "Never"
    assert bc["args"] == ["--listen", "0.0.0.0:5000", "--drain-seconds", "5"]
    assert bc["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    assert bc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert b["terminationGracePeriodSeconds"] > 5
    term = b["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": BACKEND_LABELS}

    l_ = lb["template"]["spec"]
    lc = l_["containers"][0]
    assert lc["image"] == "roundhouse/lb:0.1.0" and lc["imagePullPolicy"] == "Never"
    assert lc["args"] == ["serve", "--kubernetes", "--default-upstream", "backend",
                          "--service", "backend", "--service-port", "http"]
    env = {e["name"]: e for e in lc["env"]}
    assert env["LB_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["LB_LISTEN"]["value"] == "0.0.0.0:8080"
    assert env["LB_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090"
    assert env["LB_LOG_FORMAT"]["value"] == "json"
    assert {(p["name"], p["containerPort"]) for p in lc["ports"]} == {("http", 8080), ("admin", 9090)}
    assert lc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert lc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_pod_disruption_budgets(manifests):
    objs = by_key(manifests)
    for name, labels in (("backend", BACKEND_LABELS), ("lb", LB_LABELS)):
        pdb = objs[("PodDisruptionBudget", name)]["spec"]
        assert pdb["minAvailable"] == 1
        assert pdb["selector"] == {"matchLabels": labels}


@pytest.mark.parametrize("component", ["backend", "lb"])
def test_recommended_labels(manifests, component):
    for obj in manifests:
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") != component:
            continue
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "roundhouse"
        assert labels["app.kubernetes.io/component"]
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["metadata"]["labels"]
            assert pod["app.kubernetes.io/name"] == component
            assert pod["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod.items()


def test_docs_show_the_grpc_port_and_upstream_as_deployed(manifests, manifest_upstreams):
    import re

    import yaml

    text = k8slib.DOCS.read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    svc = by_key(manifests)[("Service", "backend")]["spec"]
    assert {"ports": svc["ports"]} in blocks
    ups = by_key(manifest_upstreams)[("Upstream", "backend-grpc")]
    shown = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "Upstream"
             and b["metadata"]["name"] == "backend-grpc"]
    assert [(b["metadata"]["namespace"], b["spec"]) for b in shown] == [
        (ups["metadata"]["namespace"], ups["spec"])]
