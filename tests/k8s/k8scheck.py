"""Command-line checks used by scripts/k8s/validate.sh.

  python tests/k8s/k8scheck.py lint [VALUES]        Helm lint (engine via libhelm_sdkpy.so)
  python tests/k8s/k8scheck.py render OUT [VALUES]  Helm render into OUT/{objects,upstreams}.yaml
  python tests/k8s/k8scheck.py upstreams            Upstream examples vs the CRD schema
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helm_render  # noqa: E402
import k8slib  # noqa: E402

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def coalesce(base, override):
    """Helm's values coalescing: maps merge, null deletes, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def lint(values_file: str | None) -> int:
    """helm lint CHART [-f VALUES].

    The library's lint entry point takes only a chart path, so a values file is
    applied the way Helm itself coalesces it: into a copy of the chart whose
    values.yaml is the coalesced result.
    """
    import helm_sdkpy

    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "roundhouse"
        shutil.copytree(k8slib.CHART, chart)
        if values_file:
            merged = coalesce(yaml.safe_load((chart / "values.yaml").read_text()) or {},
                              yaml.safe_load(Path(values_file).read_text()) or {})
            (chart / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
        cfg = helm_sdkpy.Configuration(namespace=k8slib.NAMESPACE)
        result = asyncio.run(helm_sdkpy.Lint(cfg).run(str(chart)))
    errors = 0
    for msg in result.get("Messages") or []:
        sev = SEVERITY.get(msg.get("Severity"), str(msg.get("Severity")))
        err = msg.get("Err")
        print(f"  [{sev}] {msg.get('Path')}{': ' + str(err) if err else ''}")
        errors += msg.get("Severity", 0) >= 3
    errors = max(errors, len(result.get("Errors") or []))
    print(f"  charts linted: {result.get('TotalChartsLinted')}, errors: {errors}")
    if errors:
        print("  (the library does not serialise error texts; run"
              " `python tests/k8s/k8scheck.py render /tmp/out [VALUES]` to see Helm's message)")
    return 1 if errors else 0


def render(out_dir: str, values_file: str | None) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = helm_render.render(values_file)
    builtin = [o for o in r["objects"] + r["hooks"] if o.get("kind") != "Upstream"]
    ups = [o for o in r["objects"] if o.get("kind") == "Upstream"]
    (out / "objects.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    (out / "upstreams.yaml").write_text(yaml.safe_dump_all(ups, sort_keys=False))
    for o in r["objects"] + r["hooks"]:
        print(f"  rendered {o['kind']}/{o['metadata']['name']}")
    return 0


def upstreams() -> int:
    failed = 0
    examples = k8slib.upstream_examples()
    rendered = helm_render.render(k8slib.CUSTOM_VALUES)["objects"]
    examples += [(f"rendered({k8slib.CUSTOM_VALUES.name}):{o['metadata']['name']}", o)
                 for o in rendered if o.get("kind") == "Upstream"]
    for name, obj in examples:
        errs = k8slib.upstream_errors(obj)
        print(f"  {'ok  ' if not errs else 'FAIL'} {name}")
        for e in errs:
            print(f"       {e}")
        failed += bool(errs)
    print(f"  {len(examples)} Upstream example(s), {failed} invalid")
    return 1 if failed or not examples else 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "lint":
        return lint(args[0] if args else None)
    if cmd == "render":
        return render(args[0], args[1] if len(args) > 1 else None)
    if cmd == "upstreams":
        return upstreams()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
