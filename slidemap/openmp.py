"""How OpenMP's threads wait for work: briefly, so that a machine shared with other work never collapses.

torch's CPU kernels run on libgomp's thread pool, whose idle threads spin ``GOMP_SPINCOUNT`` times (300,000 by
default) before they sleep. Alone on its cores a process gains little from the long spin; beside another
process it loses badly: the spinning threads hold the cores the other process's threads wait for, at every
barrier. Measured with a U-Net-16 training step loop (AMD EPYC Zen 3, 2 cores, docs/performance.md): alone
6.9 s with libgomp's default and 6.6 s with 1,000 spins; two at once 28.1 s each with the default (2.0x
running them one after the other) and 12.2 s with 1,000 spins (0.93x); beside a busy non-slidemap process
34.4 s against 13.8 s. ``OMP_WAIT_POLICY=PASSIVE`` (no spin) shares as well but is 9 % slower alone.

:func:`share_cores` sets the spin count where slidemap's processes start (the CLI, before torch loads;
worker processes and Ray tasks inherit :func:`environment`), unless the user has chosen a wait policy or a
spin count: ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` in the environment always win. Ray tasks get
:func:`settings` through their runtime environment.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = 1000
"""Spins of an idle libgomp thread before it sleeps (libgomp's own default: 300,000)."""
USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables :func:`share_cores` sets in ``environ`` (default ``os.environ``): none if the user chose."""
    environ = os.environ if environ is None else environ
    if any(k in environ for k in USER_SETTINGS):
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def share_cores(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set OpenMP's short spin in ``environ`` (default ``os.environ``) unless the user set their own; what was set.

    It takes effect in this process only if torch has not been imported yet, and in every child process.
    """
    environ = os.environ if environ is None else environ
    values = environment(environ)
    environ.update(values)
    return values


def settings(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The OpenMP wait settings in force in ``environ`` (default ``os.environ``), to hand to other machines' tasks."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in USER_SETTINGS if k in environ}
