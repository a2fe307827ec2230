"""The package holds its lint and type checks: ruff (with docstrings and annotations) and mypy stay clean.

Both run as the CI runs them, from the repository root with pyproject.toml's configuration; mypy keeps its
cache in ``.mypy_cache`` there, so a second run takes seconds. They are skipped, saying why, where ruff or
mypy is not installed (both are in the ``[test]`` extra).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (f"{module} {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout}\n{done.stderr}")


def test_ruff_is_clean():
    _check("ruff", "check", "slidemap", "tests", "bench")


def test_mypy_is_clean():
    _check("mypy", "slidemap")
