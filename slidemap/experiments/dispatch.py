"""Where an experiment's runs (and ``predict --scenes``'s scenes) execute: here, in worker processes, or on Ray.

Worker processes and Ray tasks start with OpenMP's short spin and the allocator's thresholds in their
environment (``slidemap.runtime``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from slidemap.errors import UserError


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def dispatch(func: Callable, jobs: list, workers: int = 1, ray: str | None = None, cpus: int = 1,
             gpu: float = 0.0) -> Iterator[Any]:
    """``func(job)`` for every job, yielded as they finish.

    In this process (one worker), in a pool of worker processes, or as Ray tasks asking for ``cpus`` CPUs and a
    ``gpu`` fraction each.
    """
    if not jobs:
        return
    if ray is not None:
        yield from _dispatch_ray(func, jobs, ray, cpus, gpu)
        return
    if workers == 1:
        for job in jobs:
            yield func(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from slidemap.runtime import configure

    configure()  # the workers start with it in their environment, before they load torch
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(func, job) for job in jobs]
        for f in as_completed(futures):
            yield f.result()


def _dispatch_ray(func: Callable, jobs: list, address: str, cpus: int, gpu: float) -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        raise UserError("--ray: Ray is not installed; pip install \"slidemap[ray]\"") from None
    from slidemap.runtime import configure, settings

    configure()  # tasks wait for work and keep memory as the CLI's processes do (slidemap.runtime)
    runtime_env = {"env_vars": settings()}
    if not ray.is_initialized():
        with contextlib.suppress(ConnectionError):
            if address == "auto":
                ray.init(address="auto", log_to_driver=False, runtime_env=runtime_env)
        if not ray.is_initialized():
            ray.init(address=None if address == "auto" else address, include_dashboard=False,
                     log_to_driver=False, runtime_env=runtime_env)
    task = ray.remote(num_cpus=cpus, num_gpus=gpu)(func)
    pending = [task.remote(job) for job in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
