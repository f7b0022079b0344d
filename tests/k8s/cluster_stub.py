"""A stateful, in-memory Kubernetes API stub on 127.0.0.1, for running the real
`helm` engine (libhelm_sdkpy.so) and the real `kubectl` against it offline.

It extends the render stub of helm_render.py with the API server rules that
decide what `kubectl apply -f manifests/` and `helm install/upgrade/uninstall`
do to a cluster, and nothing more:

- a namespaced object can only be created in an existing Namespace
  (`namespaces "x" not found`, as the API server answers);
- an Upstream can only be created once its CRD exists;
- a Service's nodePort is allocated cluster-wide: a second Service asking for
  the same one gets the API server's 422 "provided port is already allocated";
  a NodePort Service without one gets a free port from 30000-32767;
- Helm's release Secrets (sent as protobuf) are kept with their data, so
  `helm list/upgrade/uninstall` find their releases;
- deleting a Namespace deletes what is in it; deleting a CRD deletes its
  objects.

It is no API server: no controllers, no admission, no defaulting, PATCH bodies
are recorded (and merged shallowly), not applied the strategic-merge way. What
it records is what the clients sent.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import yaml

import helm_render

NODE_PORT_RANGE = range(30000, 32768)


# --- the protobuf that client-go uses for core types -------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    out: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.setdefault(num, []).append(val)
    return out


def _map(entries: list[bytes]) -> dict[str, bytes]:
    m = {}
    for e in entries:
        f = _fields(e)
        m[f.get(1, [b""])[0].decode()] = f.get(2, [b""])[0]
    return m


def decode_secret(body: bytes) -> dict:
    """A protobuf-encoded v1 Secret (k8s envelope) as its JSON form."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    raw = _fields(body[4:])[2][0]
    secret = _fields(raw)
    meta = _fields(secret.get(1, [b""])[0])
    out = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": meta.get(1, [b""])[0].decode(),
            "labels": {k: v.decode() for k, v in _map(meta.get(11, [])).items()},
        },
        "data": {k: base64.b64encode(v).decode() for k, v in _map(secret.get(2, [])).items()},
        "type": secret.get(3, [b"Opaque"])[0].decode(),
    }
    if 3 in meta:
        out["metadata"]["namespace"] = meta[3][0].decode()
    return out


def _merge(base, patch):
    """JSON merge patch (RFC 7386); good enough to keep what Helm upgraded."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class ClusterStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []  # (method, path, body)
        self.lock = threading.Lock()
        self.version = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    # -- lifecycle --
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kubeconfig(self, directory: str | Path) -> str:
        return helm_render._kubeconfig(self.url, str(directory))

    # -- queries for the tests --
    def get(self, kind_resource: str, namespace: str | None, name: str, group: str = "") -> dict | None:
        return self.objects.get(f"{group}/{kind_resource}/{namespace or ''}/{name}")

    def names(self, resource: str, namespace: str | None = None, group: str = "") -> set[str]:
        prefix = f"{group}/{resource}/{namespace or ''}/" if namespace is not None else f"{group}/{resource}/"
        return {k.rsplit("/", 1)[1] for k in self.objects if k.startswith(prefix)}

    def node_ports(self) -> dict[int, str]:
        used = {}
        for k, o in self.objects.items():
            if k.startswith("/services/"):
                for p in o.get("spec", {}).get("ports", []):
                    if p.get("nodePort"):
                        used[p["nodePort"]] = k
        return used


class _Handler(helm_render._Handler):
    server: ClusterStub

    def do_GET(self):  # noqa: N802
        path = self.path.partition("?")[0].rstrip("/")
        if path in ("/version", "/api", "/apis", "/api/v1") or re.fullmatch(r"/apis/[^/]+/[^/]+", path):
            return super().do_GET()  # discovery
        r = self._route()
        if r is None or r[4]:  # one object by name
            return super().do_GET()
        group, version, ns, resource, _name, _sub, params = r
        want = {}
        for term in filter(None, re.split(r",|%2C", params.get("labelSelector", ""))):
            k, _, v = term.replace("%3D", "=").partition("=")
            want[k] = v
        prefix = f"{group}/{resource}/{ns or ''}/" if ns else f"{group}/{resource}/"
        kind = next((k for res, k, _n in helm_render.RESOURCES.get((group, version), []) if res == resource),
                    "")
        with self.server.lock:
            items = [copy.deepcopy(o) for k, o in self.server.objects.items() if k.startswith(prefix)
                     and all(o["metadata"].get("labels", {}).get(a) == b for a, b in want.items())]
            rv = str(self.server.version)
        return self._send(200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                                "metadata": {"resourceVersion": rv}, "items": items})

    def _read_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            return decode_secret(raw)
        try:
            return json.loads(raw)
        except ValueError:
            return yaml.safe_load(raw) or {}

    def _namespace_missing(self, ns: str | None) -> bool:
        return bool(ns) and f"/namespaces//{ns}" not in self.server.objects

    def _store(self, code: int):  # POST / PUT
        r = self._route()
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, sub, _params = r
        obj = self._read_any()
        self.server.requests.append((self.command, self.path, obj))
        meta = obj.setdefault("metadata", {})
        name = name or meta.get("name")
        key = self._key(group, version, ns, resource, name)
        with self.server.lock:
            if self._namespace_missing(ns):
                return self._status(404, "NotFound", f'namespaces "{ns}" not found')
            if group == "roundhouse.dev" and not any(
                    k.endswith("/upstreams.roundhouse.dev") for k in self.server.objects):
                return self._status(404, "NotFound", "the server could not find the requested resource")
            old = self.server.objects.get(key)
            if self.command == "POST" and old is not None:
                return self._status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            if self.command == "PUT" and old is None:
                return self._status(404, "NotFound", f'{resource} "{name}" not found')
            if resource == "services" and (err := self._allocate_node_ports(obj, key)):
                return self._status(422, "Invalid", f'Service "{name}" is invalid: {err}')
            self.server.version += 1
            meta["uid"] = (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
            meta["resourceVersion"] = str(self.server.version)
            meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
            if ns:
                meta["namespace"] = ns
            if obj.get("kind") == "CustomResourceDefinition":
                obj["status"] = {"conditions": [
                    {"type": "Established", "status": "True"},
                    {"type": "NamesAccepted", "status": "True"}],
                    "acceptedNames": obj.get("spec", {}).get("names", {})}
            self.server.objects[key] = obj
        return self._send(code, obj)

    def _allocate_node_ports(self, svc: dict, key: str) -> str | None:
        spec = svc.get("spec", {})
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            return None
        used = {p: k for p, k in self.server.node_ports().items() if k != key}
        for i, port in enumerate(spec.get("ports", [])):
            want = port.get("nodePort")
            if want:
                if want in used:
                    return (f"spec.ports[{i}].nodePort: Invalid value: {want}: "
                            "provided port is already allocated")
            else:
                port["nodePort"] = next(p for p in NODE_PORT_RANGE if p not in used)
            used[port["nodePort"]] = key
        return None

    def do_PATCH(self):  # noqa: N802
        r = self._route()
        body = self._read_any()
        self.server.requests.append(("PATCH", self.path, body))
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, _sub, _params = r
        key = self._key(group, version, ns, resource, name)
        with self.server.lock:
            obj = self.server.objects.get(key)
            ctype = self.headers.get("Content-Type") or ""
            if obj is None and "apply-patch" in ctype:  # server-side apply creates
                if self._namespace_missing(ns):
                    return self._status(404, "NotFound", f'namespaces "{ns}" not found')
                obj = {"metadata": {"name": name}}
            if obj is None:
                return self._status(404, "NotFound", f'{resource} "{name}" not found')
            merged = _merge(obj, body if isinstance(body, dict) else {})
            if resource == "services" and (err := self._allocate_node_ports(merged, key)):
                return self._status(422, "Invalid", f'Service "{name}" is invalid: {err}')
            self.server.version += 1
            merged.setdefault("metadata", {})["resourceVersion"] = str(self.server.version)
            if ns:
                merged["metadata"]["namespace"] = ns
            self.server.objects[key] = merged
        return self._send(200, merged)

    def do_DELETE(self):  # noqa: N802
        r = self._route()
        self.server.requests.append(("DELETE", self.path, None))
        if r is None:
            return self._status(404, "NotFound", self.path)
        group, version, ns, resource, name, _sub, _params = r
        key = self._key(group, version, ns, resource, name)
        with self.server.lock:
            obj = self.server.objects.pop(key, None)
            if obj is None:
                return self._status(404, "NotFound", f'{resource} "{name}" not found')
            if resource == "namespaces":
                for k in [k for k in self.server.objects if k.split("/")[2] == name]:
                    del self.server.objects[k]
            if resource == "customresourcedefinitions":
                plural, _, grp = name.partition(".")
                for k in [k for k in self.server.objects if k.startswith(f"{grp}/{plural}/")]:
                    del self.server.objects[k]
        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def load_manifests(paths) -> list[dict]:
    docs = []
    for p in paths:
        docs.extend(d for d in yaml.safe_load_all(Path(p).read_text()) if d)
    return docs

