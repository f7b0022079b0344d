"""Render the chart with Helm's own engine (libhelm_sdkpy.so via cffi), offline.

helm-sdkpy exposes lint/install/upgrade but no `helm template`. So we run a
real `helm install` (client-side apply, no wait) against a throw-away, in-memory
Kubernetes API stub on 127.0.0.1: Helm discovers the API, installs crds/,
renders templates with the given values, validates values.schema.json and
POSTs every object. The stub records the objects exactly as Helm sent them;
those are the rendered manifests. The release manifest and hooks returned by
the install are used for the test hook, which an install does not create.
Nothing leaves the machine: the stub listens on loopback only and stops after
each render.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "roundhouse"

# (group, version) -> [(resource, kind, namespaced)]
RESOURCES = {
    ("", "v1"): [
        ("namespaces", "Namespace", False),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("pods", "Pod", True),
    ],
    ("apps", "v1"): [("deployments", "Deployment", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    ("networking.k8s.io", "v1"): [
        ("networkpolicies", "NetworkPolicy", True),
        ("ingresses", "Ingress", True),
        ("ingressclasses", "IngressClass", False),
    ],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    ("discovery.k8s.io", "v1"): [("endpointslices", "EndpointSlice", True)],
    ("apiextensions.k8s.io", "v1"): [
        ("customresourcedefinitions", "CustomResourceDefinition", False)
    ],
    ("roundhouse.dev", "v1alpha1"): [("upstreams", "Upstream", True)],
    # A cluster with the Gateway API CRDs (standard channel) installed, for
    # the chart's Gateway API mode.
    ("gateway.networking.k8s.io", "v1"): [
        ("gatewayclasses", "GatewayClass", False),
        ("gateways", "Gateway", True),
        ("httproutes", "HTTPRoute", True),
        ("grpcroutes", "GRPCRoute", True),
    ],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(group: str, version: str) -> dict:
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": [
            {"name": r, "singularName": k.lower(), "namespaced": ns, "kind": k, "verbs": VERBS}
            for r, k, ns in RESOURCES[(group, version)]
        ],
    }


class _Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, dict] = {}
        self.created: list[dict] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, msg: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": msg, "reason": reason, "code": code})

    def _route(self):
        path, _, query = self.path.partition("?")
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            group, rest = "", parts[1:]
        elif parts[:1] == ["apis"]:
            group, rest = parts[1], parts[2:]
        else:
            return None
        if not rest:
            return None
        version, rest = rest[0], rest[1:]
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None
        resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        return group, version, ns, resource, name, sub, params

    def _read(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # Only Helm's own release Secret travels as protobuf; keep a stub of it.
            m = re.search(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+\.v[0-9]+", raw)
            return {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": m.group(0).decode() if m else "unknown",
                                 "labels": {"owner": "helm"}}}
        try:
            return json.loads(raw)
        except ValueError:
            return yaml.safe_load(raw) or {}

    @staticmethod
    def _key(group, version, ns, resource, name):
        return f"{group}/{resource}/{ns or ''}/{name}"

    def do_GET(self):  # noqa: N802
        path = self.path.partition("?")[0].rstrip("/")
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [
                                        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if path == "/apis":
            groups = {}
            for g, v in RESOURCES:
                if g:
                    gv = {"groupVersion": f"{g}/{v}", "version": v}
                    groups.setdefault(g, {"name": g, "versions": [gv], "preferredVersion": gv})
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                    "groups": list(groups.values())})
        if path == "/api/v1":
            return self._send(200, _resource_list("", "v1"))
        m = re.fullmatch(r"/apis/([^/]+)/([^/]+)", path)
        if m and (m.group(1), m.group(2)) in RESOURCES:
            return self._send(200, _resource_list(m.group(1), m.group(2)))
        r = self._route()
        if r is None:
            return self._status(404, "NotFound", f"no route {path}")
        group, version, ns, resource, name, _sub, params = r
        with self.server.lock:
            if name:
                obj = self.server.objects.get(self._key(group, version, ns, resource, name))
                if obj is None:
                    return self._status(404, "NotFound", f'{resource} "{name}" not found')
                return self._send(200, obj)
            want = {}
            sel = params.get("labelSelector", "")
            for term in filter(None, re.split(r",|%2C", sel)):
                k, _, v = term.replace("%3D", "=").partition("=")
                want[k] = v
            prefix = f"{group}/{resource}/{ns or ''}/"
            items = [o for k, o in self.server.objects.items() if k.startswith(prefix)
                     and all(o["metadata"].get("labels", {}).get(a) == b for a, b in want.items())]
        return self._send(200, {"kind": "List", "apiVersion": "v1",
                                "metadata": {"resourceVersion": "1"}, "items": items})

    def _store(self, code: int):
        r = self._route()
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, _sub, _params = r
        obj = self._read()
        meta = obj.setdefault("metadata", {})
        name = name or meta.get("name")
        key = self._key(group, version, ns, resource, name)
        with self.server.lock:
            if self.command == "POST" and key in self.server.objects:
                return self._status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            if self.command == "POST":
                self.server.created.append(copy.deepcopy(obj))
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(len(self.server.created) + 1)
            meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
            if ns:
                meta.setdefault("namespace", ns)
            if obj.get("kind") == "CustomResourceDefinition":
                obj["status"] = {"conditions": [
                    {"type": "Established", "status": "True"},
                    {"type": "NamesAccepted", "status": "True"}],
                    "acceptedNames": obj.get("spec", {}).get("names", {})}
            self.server.objects[key] = obj
        return self._send(code, obj)

    def do_POST(self):  # noqa: N802
        self._store(201)

    def do_PUT(self):  # noqa: N802
        self._store(200)

    def do_PATCH(self):  # noqa: N802
        r = self._route()
        self._read()
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, _sub, _params = r
        obj = self.server.objects.get(self._key(group, version, ns, resource, name))
        if obj is None:
            return self._status(404, "NotFound", f'{resource} "{name}" not found')
        return self._send(200, obj)

    def do_DELETE(self):  # noqa: N802
        r = self._route()
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, _sub, _params = r
        with self.server.lock:
            obj = self.server.objects.pop(self._key(group, version, ns, resource, name), None)
        if obj is None:
            return self._status(404, "NotFound", f'{resource} "{name}" not found')
        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def _kubeconfig(url: str, directory: str) -> str:
    path = os.path.join(directory, "kubeconfig")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": url}}],
            "users": [{"name": "stub", "user": {"token": "offline-stub"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub",
                                                      "namespace": "roundhouse"}}],
        }, fh)
    return path


def load_values(values_file: str | os.PathLike | None) -> dict | None:
    if not values_file:
        return None
    with open(values_file, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def render(values_file=None, release: str = "roundhouse", namespace: str = "roundhouse",
           chart: os.PathLike | str = CHART) -> dict:
    """Install the chart into a stub API server; return what Helm produced.

    Returns {"objects": [...objects POSTed, CRDs first...], "crds": [...],
    "templates": [...non-CRD objects...], "hooks": [...hook manifests...],
    "release": <install result>}.
    """
    import helm_sdkpy  # imported lazily: the .so is large

    values = load_values(values_file)
    server = _Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = helm_sdkpy.Configuration(
                namespace=namespace,
                kubeconfig=_kubeconfig(f"http://127.0.0.1:{server.server_address[1]}", tmp))
            result = asyncio.run(helm_sdkpy.Install(cfg).run(
                release, str(chart), values=values, wait=False, timeout=60))
    finally:
        server.shutdown()
        server.server_close()
    objects = [o for o in server.created
               if not (o.get("kind") == "Secret" and o["metadata"].get("labels", {}).get("owner") == "helm")]
    hooks = []
    for hook in (result.get("hooks") or []) if isinstance(result, dict) else []:
        manifest = hook.get("manifest") if isinstance(hook, dict) else None
        if manifest:
            hooks.extend(d for d in yaml.safe_load_all(manifest) if d)
    return {
        "objects": objects,
        "crds": [o for o in objects if o.get("kind") == "CustomResourceDefinition"],
        "templates": [o for o in objects if o.get("kind") != "CustomResourceDefinition"],
        "hooks": hooks,
        "release": result,
    }


if __name__ == "__main__":
    import sys

    out = render(sys.argv[1] if len(sys.argv) > 1 else None)
    rel = out.pop("release")
    print(json.dumps({k: v for k, v in out.items()}, indent=1)[:4000])
    print(sorted(rel.keys()) if isinstance(rel, dict) else type(rel))
