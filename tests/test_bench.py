"""The benchmarks in bench/ keep up with the package: every ``from slidemap... import name`` they hold resolves,
and every script's ``--help`` runs.

Benchmarks are not run by the tests (they take minutes and their figures depend on the machine), so an API
change used to break them silently; these checks are cheap and catch a renamed or removed name at once. Imports
inside functions and inside code strings run in a child process (bench_predict's CHILD) are checked too.
bench/keras_unet.py imports keras and tensorflow only inside its functions, after parsing its arguments, so its
``--help`` runs without them; its keras/tensorflow imports are not checked (only slidemap's are).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs whole commands and grids: `pytest -m 'not slow'` leaves it out

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _trees(source: str) -> list[ast.AST]:
    """The module's syntax tree, plus that of every string constant that is itself code importing slidemap."""
    tree = ast.parse(source)
    trees: list[ast.AST] = [tree]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value \
                and "slidemap" in node.value:
            try:
                trees.append(ast.parse(node.value))
            except SyntaxError:  # a docstring or message that mentions slidemap, not code
                pass
    return trees


def _imports() -> list[tuple[str, str, str | None]]:
    """(script, module, name) of every slidemap import in bench/ (name None for ``import slidemap.x``)."""
    found = set()
    for path in SCRIPTS:
        for tree in _trees(path.read_text()):
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and node.module.split(".")[0] == "slidemap":
                    found.update((path.name, node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.update((path.name, alias.name, None) for alias in node.names
                                 if alias.name.split(".")[0] == "slidemap")
    return sorted(found, key=lambda t: (t[0], t[1], t[2] or ""))


IMPORTS = _imports()


def _has_main(path: Path) -> bool:
    text = path.read_text()
    return "argparse" in text and "__main__" in text


def test_the_benches_are_found():
    assert {"bench_train.py", "bench_predict.py", "bench_precision.py", "bench_prepare_sample.py"} <= \
        {p.name for p in SCRIPTS}
    assert len(IMPORTS) > 20  # the scan sees the imports (at module level, in functions, in CHILD)
    assert ("bench_predict.py", "slidemap.stages.predict", "PredictOptions") in IMPORTS  # from CHILD


@pytest.mark.parametrize(("script", "module", "name"), IMPORTS,
                         ids=[f"{s}:{m}.{n or ''}" for s, m, n in IMPORTS])
def test_slidemap_import_resolves(script, module, name):
    mod = importlib.import_module(module)
    if name is None or hasattr(mod, name):
        return
    try:  # `from package import submodule`
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        pytest.fail(f"bench/{script}: `from {module} import {name}`: {module} has no {name}")


def test_common_imports_resolve(monkeypatch):
    """``from common import ...`` (bench/common.py, the benches' shared helpers) names what common defines."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, common)  # its dataclasses look their module up there
    spec.loader.exec_module(common)
    for path in SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "common":
                missing = [a.name for a in node.names if not hasattr(common, a.name)]
                assert not missing, f"bench/{path.name}: common has no {', '.join(missing)}"


@pytest.mark.parametrize("script", [p for p in SCRIPTS if _has_main(p)], ids=lambda p: p.name)
def test_help_runs(script):
    proc = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
