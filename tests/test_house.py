"""The house rules: imports run one way through the layers, no import loops, no module over 600 lines.

Layers, top to bottom (a module may import its own layer and the ones below, never one above):
cli -> experiments / demo -> stages -> nn / sources -> figures -> raster -> formats -> progress -> errors / version.
Every import counts, the ones inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slidemap"
LAYERS = [("slidemap.cli",), ("slidemap.experiments", "slidemap.demo"), ("slidemap.stages",),
          ("slidemap.nn", "slidemap.sources"), ("slidemap.figures",), ("slidemap.raster",), ("slidemap.formats",),
          ("slidemap.progress",), ("slidemap.errors", "slidemap.version", "slidemap.runtime")]


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def imports(path: Path, module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                found.add(".".join([*base, node.module or ""]).strip("."))
            elif node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("slidemap")}


def test_imports_run_one_way_through_the_layers():
    wrong = []
    for module, path in modules().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for target in imports(path, module):
            theirs = layer_of(target)
            if theirs is not None and theirs < mine:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "slidemap" and m != "slidemap.__main__" and layer_of(m) is None]
    assert not unplaced, unplaced


def test_no_module_over_600_lines():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert not big, big


def test_no_import_loops_between_modules():
    mods = modules()
    graph = {m: {t for t in imports(p, m) if t in mods and t != m and not m.startswith(t + ".")}
             for m, p in mods.items()}
    seen, stack, loops = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            loops.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in graph[m]:
            if not t.startswith(m + "."):  # a package re-exporting its children is not a loop
                visit(t)
        stack.pop()

    for m in sorted(mods):
        visit(m)
    assert not loops, loops[:3]


def test_no_module_imports_the_root_package():
    """``slidemap/__init__`` sits above every layer: a module that takes a name from it pulls the whole root in."""
    wrong = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "slidemap":
                wrong.append(f"{module}: from slidemap import {', '.join(a.name for a in node.names)}")
    assert not wrong, wrong


def test_version_is_a_leaf_and_import_adds_no_hook():
    import subprocess
    import sys

    assert not imports(PACKAGE / "version.py", "slidemap.version")
    code = ("import sys; before = list(sys.meta_path); import slidemap; "
            "assert sys.meta_path == before, sys.meta_path; print(slidemap.__version__, slidemap.UserError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from importlib.metadata import version

    assert out == [version("slidemap"), "UserError"]
