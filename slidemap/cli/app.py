"""The ``slidemap`` command: the Typer application, its groups, and the entry point that turns errors into lines.

Every command parses its options, calls one API function and prints what it wrote. A UserError becomes one
line ``error: ...`` and exit status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType

import typer

from slidemap.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Map landslides from satellite imagery and a DEM with U-Net / ResU-Net.\n\n"
    "Pipeline: synth | prepare -> sample -> train -> predict -> evaluate. `slidemap demo` runs it all.",
)
l4s_app = typer.Typer(no_args_is_help=True, help="Landslide4Sense patch datasets (HDF5 img/mask): import "
                      "them as a chip set; then `train`, `predict MODEL --chips CHIPS`, `evaluate PRED "
                      "--truth CHIPS`.")
app.add_typer(l4s_app, name="l4s")
experiment_app = typer.Typer(no_args_is_help=True, help="Grids of runs from a YAML spec (the studies' "
                             "experiments): run them, resumably, locally or on Ray; report them.")
app.add_typer(experiment_app, name="experiment")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _DEBUG["on"] = debug


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM cleans up like Ctrl-C: temporary folders removed, locks released."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the app on ``argv``: a UserError is ``error: ...`` and exit status 2, Ctrl-C exit status 130."""
    with contextlib.suppress(ValueError):  # not in the main thread (tests calling main from a thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rc = app(args=argv, standalone_mode=False)
    except UserError as e:
        if _DEBUG["on"]:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        typer.echo(f"error: {message}", err=True)
        return 2
    except OSError as e:
        from slidemap.formats.files import DISK_ERRORS

        if e.errno not in DISK_ERRORS or _DEBUG["on"]:
            raise
        typer.echo(f"error: {f'{e.filename}: ' if e.filename else ''}{DISK_ERRORS[e.errno]}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # usage errors of typer's click: show them as click would
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            return 1
        raise
    return rc if isinstance(rc, int) else 0
