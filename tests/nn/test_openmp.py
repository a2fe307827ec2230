"""OpenMP's short spin: set where slidemap's processes start, unless the user chose a wait policy or a spin count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import slidemap.cli
from slidemap.openmp import SPIN_COUNT, settings, share_cores


def test_the_short_spin_is_set_only_where_the_user_chose_nothing():
    env: dict[str, str] = {"PATH": "/bin"}
    assert share_cores(env) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)} and env["GOMP_SPINCOUNT"] == "1000"
    assert settings(env) == {"GOMP_SPINCOUNT": "1000"}
    for chosen in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "PASSIVE"}):
        env = dict(chosen)
        assert share_cores(env) == {} and env == chosen and settings(env) == chosen


def test_the_cli_sets_it_before_torch_loads():
    """The package sets the variable before its command modules import torch (libgomp reads it at load)."""
    code = ("import os, sys; import slidemap.openmp, slidemap.cli; "
            "print(os.environ['GOMP_SPINCOUNT'])")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["1000"]
    source = (Path(slidemap.cli.__file__)).read_text()
    assert source.index("share_cores()") < source.index("from slidemap.cli import (")


def test_the_cli_keeps_the_users_choice():
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    code = "import os, slidemap.cli; print(os.environ.get('GOMP_SPINCOUNT'), os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["None", "PASSIVE"]
