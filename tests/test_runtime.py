"""Process settings (OpenMP's short spin, glibc's allocator thresholds): set where slidemap's processes start,
unless the user chose their own."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import slidemap.cli
from slidemap.runtime import (
    MALLOC_SETTINGS,
    MMAP_THRESHOLD,
    OPENMP_SETTINGS,
    SPIN_COUNT,
    TRIM_THRESHOLD,
    configure,
    settings,
)

OURS = {"GOMP_SPINCOUNT": str(SPIN_COUNT), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
ALLOCATOR = {k: v for k, v in OURS.items() if k.startswith("MALLOC")}
USER_KEYS = (*OPENMP_SETTINGS, *MALLOC_SETTINGS)


def _clean_env(**chosen: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_KEYS}
    env.update(chosen)
    return env


def test_each_setting_is_set_only_where_the_user_chose_nothing():
    env: dict[str, str] = {"PATH": "/bin"}
    assert configure(env) == OURS and env["GOMP_SPINCOUNT"] == "1000"
    assert settings(env) == OURS
    for chosen in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "PASSIVE"}):
        env = dict(chosen)
        assert configure(env) == ALLOCATOR
        assert settings(env) == {**chosen, **ALLOCATOR}
    for chosen in ({"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}):
        env = dict(chosen)
        assert configure(env) == {"GOMP_SPINCOUNT": "1000"} and env == {**chosen, "GOMP_SPINCOUNT": "1000"}


def test_the_cli_sets_them_before_torch_loads():
    """The package sets the variables before its command modules import torch (libgomp reads them at load)."""
    code = ("import os, sys; import slidemap.cli; "
            "print(*(os.environ[k] for k in ('GOMP_SPINCOUNT', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_clean_env())
    assert out.stdout.split() == ["1000", str(MMAP_THRESHOLD), str(TRIM_THRESHOLD)]
    source = (Path(slidemap.cli.__file__)).read_text()
    assert source.index("configure()") < source.index("from slidemap.cli import (")


def test_the_cli_keeps_the_users_choice():
    code = ("import os, slidemap.cli; print(os.environ.get('GOMP_SPINCOUNT'), os.environ['OMP_WAIT_POLICY'], "
            "os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ['MALLOC_TRIM_THRESHOLD_'])")
    env = _clean_env(OMP_WAIT_POLICY="PASSIVE", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["None", "PASSIVE", "None", "131072"]


# Two passes' worth of activation-like maps (a U-Net-16 on 480 x 800 px: 16 maps at full size, fewer pixels
# below), allocated, filled and freed: as it is, glibc hands the pages back and faults them in again on the
# second pass; with the thresholds, the second pass reuses the heap.
_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "configure":
    from slidemap.runtime import configure
    configure()
def one_pass():
    return len([np.ones(480 * 800 * 16 // 4**k, np.float32) for k in range(4) for _ in range(3)])
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator's thresholds are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    faults = {how: int(subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True, text=True,
                                      check=True, env=_clean_env()).stdout)
              for how in ("configure", "as-is")}
    assert faults["as-is"] >= 1000  # 4,475 here (transparent huge pages on), more with 4 KiB pages only
    assert faults["configure"] < 100
