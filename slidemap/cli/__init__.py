"""The ``slidemap`` command line: one module per command, the shared option machinery in ``options``.

OpenMP's short spin and the allocator's thresholds are set before any command module imports torch
(``slidemap.runtime``).
"""

import sys

from slidemap.runtime import configure

configure()

from slidemap.cli import (  # noqa: E402, F401 - each module registers its command on the app
    demo,
    evaluate,
    experiment,
    export,
    info,
    l4s,
    predict,
    prepare,
    sample,
    synth,
    train,
)
from slidemap.cli.app import app, main  # noqa: E402

__all__ = ["app", "main", "run"]


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
