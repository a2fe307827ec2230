"""The helper threads of the streamed passes: one long-lived thread per role, shared by the passes of a process.

A pass reads the next strip, writes the last one or traces the next block in a helper thread while the network
or the caller works (GDAL and numpy drop the GIL). Starting and joining a thread for every pass cost 0.7-1.4 ms
each on a 2-core machine whose torch threads spin between operators; a grid run predicts four test areas with
three helpers each, so the threads are kept for the process instead. Work is queued in order on each role's
single thread, as with a one-thread pool per pass.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

_POOLS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _forget_pools() -> None:
    """A forked child has the pools' objects but not their threads: start its own on first use."""
    _POOLS.clear()


os.register_at_fork(after_in_child=_forget_pools)


@contextlib.contextmanager
def helper(role: str) -> Iterator[Callable[..., Future]]:
    """Yield ``submit(fn, *args) -> Future`` running on the process's helper thread ``role``, in order.

    On leaving, the work submitted is waited for (on an exception, what has not started is cancelled), so that
    nothing runs on after the caller has closed the files it reads or writes, as with a pool's ``with`` block.
    """
    with _LOCK:
        pool = _POOLS.get(role)
        if pool is None:
            pool = _POOLS[role] = ThreadPoolExecutor(1, thread_name_prefix=f"slidemap-{role}")
    pending: list[Future] = []

    def submit(fn: Callable[..., Any], *args: Any) -> Future:
        pending[:] = [f for f in pending if not f.done()]
        future = pool.submit(fn, *args)
        pending.append(future)
        return future

    try:
        yield submit
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        wait(pending)
