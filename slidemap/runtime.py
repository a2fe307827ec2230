"""How slidemap's processes run on a CPU: OpenMP's threads wait briefly, and freed memory is kept for reuse.

**OpenMP's wait.** torch's CPU kernels run on libgomp's thread pool, whose idle threads spin
``GOMP_SPINCOUNT`` times (300,000 by default) before they sleep. Alone on its cores a process gains little
from the long spin; beside another process it loses badly, because the spinning threads hold the cores the
other process's threads wait for at every barrier. ``OMP_WAIT_POLICY=PASSIVE`` (no spin) shares as well but
is slower alone.

**The allocator.** glibc's malloc hands every block above its mmap threshold (at most 32 MiB by default)
back to the kernel on ``free`` and maps fresh zeroed pages on the next request. Prediction allocates the
network's activation maps (up to ~25 MiB each for a 480 x 800 px pass of a U-Net-16) anew at every pass, so
without the thresholds below its pages fault in again at every pass. Blocks up to 256 MiB stay in the heap,
which returns its top to the kernel only beyond 512 MiB free.

The figures behind both (alone, two at once, beside a busy process; a 4,096² prediction before and after)
are in docs/performance.md.

:func:`configure` sets both where slidemap's processes start (the CLI, before torch loads; worker
processes and Ray tasks inherit the variables it sets), unless the user chose: ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` keep OpenMP's wait as set, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES`` the allocator's. Ray tasks get :func:`settings` through their runtime environment. The
allocator's part applies on glibc only (Linux); elsewhere nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import MutableMapping

SPIN_COUNT = 1000
"""Spins of an idle libgomp thread before it sleeps (libgomp's own default: 300,000)."""
MMAP_THRESHOLD = 256 << 20
"""Bytes from which glibc's malloc maps a block of its own (returned to the kernel on free)."""
TRIM_THRESHOLD = 512 << 20
"""Free bytes at the top of glibc's heap beyond which it is returned to the kernel."""

_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": (-3, MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": (-1, TRIM_THRESHOLD)}
"""mallopt(3)'s environment name -> (its parameter number, M_MMAP_THRESHOLD / M_TRIM_THRESHOLD; slidemap's value)."""
OPENMP_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
MALLOC_SETTINGS = (*_ALLOCATOR, "GLIBC_TUNABLES")
"""What glibc reads when a process starts: mallopt(3)'s environment names and its tunables."""


def configure(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set OpenMP's short spin and the allocator's thresholds unless the user set their own; what was set.

    The variables go into ``environ`` (default ``os.environ``), so every child process starts with them.
    In this process OpenMP's takes effect only if torch has not been imported yet; the allocator's is
    applied at once (``mallopt``) when ``environ`` is this process's own.
    """
    own = environ is None or environ is os.environ
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    if not any(k in environ for k in OPENMP_SETTINGS):
        values["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    if not any(k in environ for k in MALLOC_SETTINGS):
        values.update({name: str(value) for name, (_, value) in _ALLOCATOR.items()})
    environ.update(values)
    if own and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL("libc.so.6")
        for name, (param, value) in _ALLOCATOR.items():
            if name in values:
                libc.mallopt(param, value)
    return values


def settings(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP and allocator settings in force in ``environ`` (default ``os.environ``), for other machines' tasks."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in (*OPENMP_SETTINGS, *MALLOC_SETTINGS) if k in environ}
