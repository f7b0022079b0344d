"""The chart, rendered by Helm's own engine (see helm_render.py), against manifests/.

Drift rule: with default values, release "roundhouse" in namespace
"roundhouse", the chart renders exactly the objects of manifests/ and
manifests/upstreams/ except the Namespace (created with the release
namespace, see docs/kubernetes.md): same kinds and names, identical
spec/rules/roleRef/subjects/annotations, and the same labels plus only the
bookkeeping labels Helm adds.
"""

import copy

import k8slib

# Added by Helm's kube client at create time (ownership), not by the templates.
HELM_OWNERSHIP_ANNOTATIONS = {"meta.helm.sh/release-name", "meta.helm.sh/release-namespace"}
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
NOT_IN_CHART_TEMPLATES = {"Namespace", "CustomResourceDefinition"}
COMPARED_FIELDS = ("spec", "rules", "roleRef", "subjects", "automountServiceAccountToken", "data")


def by_key(objects):
    return {k8slib.key(o): o for o in objects}


def test_default_render_matches_manifests_object_set(manifests, manifest_upstreams,
                                                     rendered_default):
    want = {k8slib.key(o) for o in manifests + manifest_upstreams
            if o["kind"] not in NOT_IN_CHART_TEMPLATES}
    got = {k8slib.key(o) for o in rendered_default["templates"]}
    assert got == want


def test_default_render_has_no_drift(manifests, manifest_upstreams, rendered_default):
    chart = by_key(rendered_default["templates"])
    for obj in manifests + manifest_upstreams:
        if obj["kind"] in NOT_IN_CHART_TEMPLATES:
            continue
        k = k8slib.key(obj)
        r = chart[k]
        assert r["apiVersion"] == obj["apiVersion"], k
        assert r["metadata"].get("namespace") == obj["metadata"]["namespace"], k
        for field in COMPARED_FIELDS:
            assert r.get(field) == obj.get(field), f"{k} .{field} differs"
        r_ann = {a: v for a, v in (r["metadata"].get("annotations") or {}).items()
                 if a not in HELM_OWNERSHIP_ANNOTATIONS}
        assert r_ann == (obj["metadata"].get("annotations") or {}), k
        m_labels, r_labels = obj["metadata"]["labels"], r["metadata"]["labels"]
        extra = set(r_labels) - set(m_labels)
        assert extra <= HELM_ONLY_LABELS, f"{k}: unexpected chart labels {extra}"
        assert {lk: r_labels.get(lk) for lk in m_labels} == m_labels, k
        assert r_labels["app.kubernetes.io/instance"] == k8slib.RELEASE


def test_chart_crd_is_installed_verbatim(rendered_default):
    assert rendered_default["crds"] == [k8slib.crd()]


def test_default_render_has_only_the_grpc_upstream(rendered_default):
    # The lb creates "backend" itself; the chart adds backend-grpc (the same
    # object as manifests/upstreams/backend-grpc.yaml, compared above).
    ups = [o for o in rendered_default["objects"] if o["kind"] == "Upstream"]
    assert [o["metadata"]["name"] for o in ups] == ["backend-grpc"]
    assert ups[0]["spec"]["port"] == "grpc" and ups[0]["spec"]["protocol"] == "h2c"


def test_helm_test_hooks_run_lb_check_and_lb_check_grpc(rendered_default, rendered_custom):
    for rendered, replicas, requests in ((rendered_default, 2, 100), (rendered_custom, 3, 99)):
        hooks = {h["metadata"]["name"]: h for h in rendered["hooks"]}
        assert set(hooks) == {"lb-test-split", "lb-test-grpc-split"}
        args = {
            "lb-test-split": ["check", "http://lb:8080/host", "--requests", str(requests),
                              "--expect-backends", str(replicas)],
            # With --grpc the URL names the server only; the method is
            # roundhouse.v1.Hosts/Get, which the Upstream backend-grpc routes.
            "lb-test-grpc-split": ["check", "http://lb:8080", "--grpc", "--requests",
                                   str(requests), "--expect-backends", str(replicas)],
        }
        for name, pod in hooks.items():
            assert pod["kind"] == "Pod"
            assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
            spec = pod["spec"]
            assert spec["restartPolicy"] == "Never"
            assert spec["automountServiceAccountToken"] is False
            c = spec["containers"][0]
            assert c["image"] == "roundhouse/lb:0.1.0"
            assert c["args"] == args[name], name
        # Same pod apart from its name, comment-free annotations and command.
        a, b = (copy.deepcopy(hooks[n]) for n in ("lb-test-split", "lb-test-grpc-split"))
        for pod in (a, b):
            del pod["metadata"]["name"]
            pod["metadata"]["annotations"].pop("checkov.io/skip5")
            pod["spec"]["containers"][0].pop("args")
        assert a == b


def test_custom_values_render(rendered_custom):
    objs = by_key(rendered_custom["templates"])
    backend = objs[("Deployment", "backend")]["spec"]
    assert backend["replicas"] == 3
    assert backend["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    bc = backend["template"]["spec"]["containers"][0]
    assert bc["args"] == ["--listen", "0.0.0.0:5000", "--drain-seconds", "10"]
    assert {e["name"]: e.get("value") for e in bc["env"]}["BACKEND_LOG_FORMAT"] == "human"
    assert objs[("Deployment", "lb")]["spec"]["replicas"] == 1
    svc = objs[("Service", "lb")]["spec"]
    assert svc["type"] == "ClusterIP" and svc["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in svc
    assert all("nodePort" not in p for p in svc["ports"])
    assert ("NetworkPolicy", "backend") not in objs
    assert ("PodDisruptionBudget", "lb") not in objs
    assert objs[("PodDisruptionBudget", "backend")]["spec"]["minAvailable"] == 2
    ups = {o["metadata"]["name"]: o for o in rendered_custom["objects"] if o["kind"] == "Upstream"}
    assert set(ups) == {"api", "numeric-port", "backend-grpc"}
    assert ups["api"]["apiVersion"] == "roundhouse.dev/v1alpha1"
    assert ups["api"]["metadata"]["namespace"] == k8slib.NAMESPACE
    assert ups["numeric-port"]["spec"]["port"] == 5000


def test_rendered_upstreams_match_crd_schema(rendered_custom):
    for obj in rendered_custom["objects"]:
        if obj["kind"] == "Upstream":
            assert k8slib.upstream_errors(obj) == [], obj["metadata"]["name"]


def test_values_schema_rejects_bad_values():
    import jsonschema
    import json
    import yaml

    schema = json.loads((k8slib.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((k8slib.CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    bad = copy.deepcopy(values)
    bad["lb"]["service"]["type"] = "Ingress"
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
    bad = copy.deepcopy(values)
    bad["upstreams"] = [{"spec": {"service": "backend"}}]  # no name
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
    for secrets in (["Web_TLS"], ["web-tls", "web-tls"], [""], "web-tls"):
        bad = copy.deepcopy(values)
        bad["tls"]["secrets"] = secrets  # not a Secret name, twice, empty, not a list
        assert not jsonschema.Draft7Validator(schema).is_valid(bad), secrets
    bad = copy.deepcopy(values)
    del bad["tls"]
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)
    good = copy.deepcopy(values)
    good["tls"]["secrets"] = ["web-tls", "api.example.test"]
    jsonschema.validate(good, schema)


TLS_SECRETS_RULE = {"apiGroups": [""], "resources": ["secrets"],
                    "verbs": ["get", "list", "watch"]}


def lb_parts(rendered):
    objs = by_key(rendered["templates"])
    container = objs[("Deployment", "lb")]["spec"]["template"]["spec"]["containers"][0]
    return objs[("Role", "lb")]["rules"], container, objs[("Service", "lb")]["spec"]["ports"]


def test_default_render_has_no_tls(manifests, rendered_default):
    rules, c, svc_ports = lb_parts(rendered_default)
    assert not [r for r in rules if "secrets" in r["resources"]]
    assert not [r for o in manifests if o["kind"] == "Role" for r in o["rules"]
                if "secrets" in r["resources"]]
    assert "--tls-secret" not in c["args"]
    assert "LB_TLS_LISTEN" not in {e["name"] for e in c["env"]}
    assert [p["name"] for p in c["ports"]] == ["http", "admin"]
    assert [p["name"] for p in svc_ports] == ["http"]


def test_tls_secrets_render_args_ports_and_one_narrow_rule(rendered_default, rendered_custom):
    names = k8slib.load_yaml_docs(k8slib.CUSTOM_VALUES)[0]["tls"]["secrets"]
    assert len(names) >= 2  # the flag is repeatable: one --tls-secret per name
    rules, c, svc_ports = lb_parts(rendered_custom)
    default_rules, default_c, _ = lb_parts(rendered_default)
    # One rule more than the default Role: get/list/watch on exactly these
    # Secrets. The lb gets each by name and lists/watches it with
    # fieldSelector metadata.name=NAME, which resourceNames authorizes.
    assert rules[:-1] == default_rules
    assert rules[-1] == {**TLS_SECRETS_RULE, "resourceNames": names}
    assert c["args"] == default_c["args"] + [a for n in names for a in ("--tls-secret", n)]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LB_TLS_LISTEN"] == "0.0.0.0:8443"
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in c["ports"]
    https = [p for p in svc_ports if p["name"] == "https"]
    assert https == [{"name": "https", "port": 8443, "targetPort": "https", "protocol": "TCP",
                      "appProtocol": "https"}]


def test_chart_role_template_rules_are_the_manifests_rules(manifests):
    """What lb/tests/manifests.rs (chart_grants) reads from templates/rbac.yaml:
    the lines that do not start with a template action, actions replaced.
    Those must stay the manifests' rules; the optional Secret rule comes from
    a helper included on a line of its own."""
    import yaml

    lines = []
    for line in (k8slib.CHART / "templates" / "rbac.yaml").read_text().splitlines():
        if line.lstrip().startswith("{{"):
            continue
        while "{{" in line:
            i = line.index("{{")
            j = line.find("}}", i)
            line = line[:i] + "templated" + (line[j + 2:] if j >= 0 else "")
        lines.append(line)
    roles = [d for d in yaml.safe_load_all("\n".join(lines)) if d and d.get("kind") == "Role"]
    assert len(roles) == 1
    want = [o for o in manifests if o["kind"] == "Role"][0]["rules"]
    assert roles[0]["rules"] == want


def json_patch_add(doc, ops):
    """RFC 6902, the "add" operations that docs/kubernetes.md uses."""
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = op["path"].lstrip("/").split("/")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        else:
            node[last] = copy.deepcopy(op["value"])
    return doc


def test_docs_manifests_tls_patches_make_what_the_chart_renders(manifests, tmp_path):
    """The kubectl patches of docs/kubernetes.md ("TLS from a kubernetes.io/tls
    Secret") turn the manifests' objects into the chart's with tls.secrets set."""
    import json
    import re
    import shlex

    import helm_render

    text = k8slib.DOCS.read_text(encoding="utf-8")
    patches = {}
    for line in text.splitlines():
        if line.startswith("kubectl -n roundhouse patch "):
            argv = shlex.split(line)
            kind, name = argv[4], argv[5]
            assert argv[6] == "--type=json" and argv[7] == "-p", line
            patches[(kind, name)] = json.loads(argv[8])
    assert set(patches) == {("role", "lb"), ("deployment", "lb"), ("service", "lb")}
    secret = re.search(r"create secret tls (\S+) ", text).group(1)
    values = tmp_path / "tls.yaml"
    values.write_text(f"tls:\n  secrets: [{secret}]\n")
    chart = by_key(helm_render.render(values, release=k8slib.RELEASE,
                                      namespace=k8slib.NAMESPACE)["templates"])
    objs = by_key(manifests)
    for (kind, name), ops in patches.items():
        k = {"role": "Role", "deployment": "Deployment", "service": "Service"}[kind], name
        field = "rules" if kind == "role" else "spec"
        patched = json_patch_add({field: objs[k][field]}, ops)
        assert patched[field] == chart[k][field], k
    # The Role rule shown in the document is the one the chart renders.
    rule = {**TLS_SECRETS_RULE, "resourceNames": [secret]}
    assert chart[("Role", "lb")]["rules"][-1] == rule
    import yaml
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert [rule] in blocks
