#!/usr/bin/env python3
"""The lb crate's internal module graph, and a check that it has no cycle.

    scripts/module-graph.py            # prints every module's internal dependencies
    scripts/module-graph.py --check    # the same, exit 1 if there is a cycle
    scripts/module-graph.py --dot      # Graphviz

Each file under lb/src is a module (`proxy/fast/head.rs` is `proxy::fast::head`,
a `mod.rs` is its directory's module). A reference to another module is any
path through `crate::`, `super::` or `self::` (in `use` trees and in code), and
any `use` path that starts with one of the current module's child modules.
A path is resolved to the deepest module it names, so `crate::selection::Upstream`
is a dependency on `selection`, and `super::body::ReqBody` from `proxy::forward`
one on `proxy::body`.

The rule checked: among the children of any one module (the top-level modules
of the crate, or the files of one directory), the dependencies form a DAG. A
dependency on a module's own ancestor (a child using its parent's items) is
allowed, as the parent is the container that declares the child; everything
else is counted at the level where the two modules are siblings, so
`proxy::body -> proxy::pool -> proxy::body` is a cycle, and so is
`selection -> metrics -> selection` even when the uses sit deeper. Test
modules (`#[cfg(test)] mod ... { }`) are ignored: they may use anything.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "lb" / "src"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    """Removes comments, string/char literals and #[cfg(test)] modules."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i:]).group(0))
        else:
            out.append(c)
            i += 1
    code = "".join(out)
    # Drop #[cfg(test)] items that are modules with a body.
    result, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", code):
        if m.start() < pos:
            continue
        result.append(code[pos : m.start()])
        depth, k = 1, m.end()
        while k < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[k], 0)
            k += 1
        pos = k
    result.append(code[pos:])
    return "".join(result)


def use_paths(tree: str) -> list[list[str]]:
    """Expands a use tree (`a::{b, c::d as e, self}`) into paths."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def parse(s: str, prefix: list[str]) -> list[list[str]]:
        paths = []
        depth, start, items = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:k])
                start = k + 1
        items.append(s[start:])
        for item in items:
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                head_parts = [p for p in head.split("::") if p]
                paths += parse(rest[:-1], prefix + head_parts)
            else:
                parts = [p for p in item.split("::") if p]
                if parts == ["self"]:
                    paths.append(prefix)
                elif parts != ["*"]:
                    paths.append(prefix + parts)
                else:
                    paths.append(prefix)
        return paths

    return parse(tree, [])


def resolve(path: list[str], here: tuple[str, ...], modules: set, bare_ok: bool):
    """The deepest known module `path` names, or None if it is not internal."""
    if not path:
        return None
    segs = list(path)
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif bare_ok and here + (segs[0],) in modules:
        base = here
    else:
        return None
    mod = base
    for s in segs:
        if mod + (s,) in modules:
            mod = mod + (s,)
        else:
            break
    return mod


def graph() -> tuple[set, dict]:
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f) for f in files if f.name != "main.rs"}
    deps: dict[tuple, set] = defaultdict(set)
    for f in files:
        if f.name == "main.rs":
            continue  # the binary: may use anything
        here = module_of(f)
        code = strip(f.read_text())
        refs = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            for p in use_paths(m.group(1)):
                refs.append((p, True))
        no_use = re.sub(r"\buse\s+[^;]+;", "", code)
        for m in re.finditer(r"\b((?:crate|super|self)(?:::" + IDENT + r")+)", no_use):
            refs.append((m.group(1).split("::"), False))
        for p, bare in refs:
            target = resolve(p, here, modules, bare)
            if target is not None and target != here:
                deps[here].add(target)
    return modules, deps


def name(m: tuple) -> str:
    return "::".join(m) if m else "crate"


def sibling_edges(deps: dict) -> dict:
    """Edges between siblings: for a -> b, the children of their deepest
    common ancestor on each side; dependencies on an ancestor are dropped."""
    edges: dict[tuple, set] = defaultdict(set)
    for a, targets in deps.items():
        for b in targets:
            if a[: len(b)] == b:  # b is an ancestor of a
                continue
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k == len(a):  # a is an ancestor of b: a parent using its child
                continue
            edges[a[: k + 1]].add(b[: k + 1])
    return edges


def find_cycle(edges: dict):
    color: dict = {}
    stack: list = []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if color.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if color.get(m) is None:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(edges):
        if color.get(n) is None:
            c = visit(n)
            if c:
                return c
    return None


def main(argv: list[str]) -> int:
    modules, deps = graph()
    edges = sibling_edges(deps)
    if "--dot" in argv:
        print("digraph lb {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{name(a)}" -> "{name(b)}";')
        print("}")
    else:
        for m in sorted(modules):
            print(f"{name(m)} -> {', '.join(sorted(name(d) for d in deps.get(m, ()))) or '-'}")
    cycle = find_cycle(edges)
    if cycle:
        print("\ncycle: " + " -> ".join(name(m) for m in cycle), file=sys.stderr)
        for a, b in zip(cycle, cycle[1:]):
            why = sorted(name(x) + " -> " + name(y) for x in deps for y in deps[x]
                         if x[: len(a)] == a and y[: len(b)] == b)
            print(f"  {name(a)} -> {name(b)} because: {'; '.join(why)}", file=sys.stderr)
        return 1 if "--check" in argv else 0
    if "--check" in argv:
        print("\nno cycles between sibling modules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
