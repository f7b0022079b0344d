"""Shared helpers for the Kubernetes checks (pytest and scripts/k8s/validate.sh)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
# Upstream objects, applied after the CRD is established (not by
# `kubectl apply -f manifests/`, which does not descend into folders).
MANIFEST_UPSTREAMS = MANIFESTS / "upstreams"
CHART = ROOT / "helm" / "roundhouse"
CRD_FILE = MANIFESTS / "01-crd.yaml"
CUSTOM_VALUES = CHART / "ci" / "values-custom.yaml"
DOCS = ROOT / "docs" / "kubernetes.md"
NAMESPACE = "roundhouse"
RELEASE = "roundhouse"


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.iterdir() if p.suffix in (".yaml", ".yml"))


def manifest_objects() -> list[dict]:
    """What `kubectl apply -f manifests/` applies (the top-level files)."""
    return [d for p in manifest_files() for d in load_yaml_docs(p)]


def manifest_upstream_files() -> list[Path]:
    return sorted(p for p in MANIFEST_UPSTREAMS.iterdir() if p.suffix in (".yaml", ".yml"))


def manifest_upstreams() -> list[dict]:
    """What `kubectl apply -f manifests/upstreams/` applies, once the CRD is established."""
    return [d for p in manifest_upstream_files() for d in load_yaml_docs(p)]


def key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def pod_specs(objects: list[dict]):
    """Yield (label, podSpec) for every pod-bearing object."""
    for obj in objects:
        kind = obj.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{kind}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield (f"{kind}/{obj['metadata']['name']}",
                   obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif kind == "Pod":
            yield f"Pod/{obj['metadata']['name']}", obj["spec"]


# ---- CRD schema -> JSON Schema -------------------------------------------

def crd() -> dict:
    docs = [d for d in load_yaml_docs(CRD_FILE) if d.get("kind") == "CustomResourceDefinition"]
    assert len(docs) == 1, f"{CRD_FILE} must hold exactly one CRD"
    return docs[0]


def crd_version(version: str = "v1alpha1") -> dict:
    for v in crd()["spec"]["versions"]:
        if v["name"] == version:
            return v
    raise KeyError(version)


def openapi_to_jsonschema(node):
    """Translate a structural OpenAPI v3 schema (Kubernetes flavour) to JSON Schema.

    Handles `nullable`, `x-kubernetes-int-or-string` and
    `x-kubernetes-preserve-unknown-fields`; keeps every other keyword.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties", "definitions"):
            out[k] = {name: openapi_to_jsonschema(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not") and isinstance(v, dict):
            out[k] = openapi_to_jsonschema(v)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [openapi_to_jsonschema(s) for s in v]
        elif k.startswith("x-kubernetes-") or k == "nullable":
            continue
        else:
            out[k] = copy.deepcopy(v)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            t = out["type"]
            out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
        elif "anyOf" in out:
            out["anyOf"] = out["anyOf"] + [{"type": "null"}]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    # Structural schemas reject unknown fields (pruning); be strict like the
    # API server's field validation unless the schema preserves them.
    if (out.get("type") == "object" or "properties" in out) and "properties" in out \
            and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def upstream_jsonschema() -> dict:
    schema = openapi_to_jsonschema(crd_version()["schema"]["openAPIV3Schema"])
    # apiVersion/kind/metadata are validated by the API server itself.
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    schema["additionalProperties"] = False
    return schema


def upstream_validator():
    import jsonschema

    cls = jsonschema.validators.validator_for({})
    return cls(upstream_jsonschema(), format_checker=cls.FORMAT_CHECKER)


def upstream_errors(obj: dict) -> list[str]:
    errors = []
    if obj.get("apiVersion") != "roundhouse.dev/v1alpha1":
        errors.append(f"apiVersion {obj.get('apiVersion')!r} != roundhouse.dev/v1alpha1")
    if obj.get("kind") != "Upstream":
        errors.append(f"kind {obj.get('kind')!r} != Upstream")
    for e in upstream_validator().iter_errors(obj):
        errors.append(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
    return errors


def as_upstream(name: str, spec: dict) -> dict:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "Upstream",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def upstream_examples() -> list[tuple[str, dict]]:
    """Every Upstream example the repository ships (values files, docs, tests)."""
    found = []
    for values in [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]:
        data = load_yaml_docs(values)
        for i, item in enumerate((data[0] if data else {}).get("upstreams") or []):
            found.append((f"{values.relative_to(ROOT)}:upstreams[{i}]",
                          as_upstream(item.get("name", f"item{i}"), item.get("spec"))))
    if DOCS.exists():
        text = DOCS.read_text(encoding="utf-8")
        for n, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", text, re.S)):
            try:
                docs = [d for d in yaml.safe_load_all(block) if d]
            except yaml.YAMLError:
                continue
            for d in docs:
                if isinstance(d, dict) and d.get("kind") == "Upstream":
                    found.append((f"docs/kubernetes.md:block{n}", d))
                elif isinstance(d, dict) and isinstance(d.get("upstreams"), list):
                    for i, item in enumerate(d["upstreams"]):
                        found.append((f"docs/kubernetes.md:block{n}:upstreams[{i}]",
                                       as_upstream(item.get("name", f"item{i}"), item.get("spec"))))
    for path in manifest_upstream_files():
        for d in load_yaml_docs(path):
            found.append((str(path.relative_to(ROOT)), d))
    for path in sorted((ROOT / "tests" / "k8s" / "examples").glob("*.yaml")):
        for d in load_yaml_docs(path):
            if d.get("kind") == "Upstream":
                found.append((str(path.relative_to(ROOT)), d))
    return found
