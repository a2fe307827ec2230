"""The ``slidemap`` command line: one module per command, the shared option machinery in ``options``.

OpenMP's short spin is set before any command module imports torch (``slidemap.openmp``).
"""

import sys

from slidemap.openmp import share_cores

share_cores()

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
