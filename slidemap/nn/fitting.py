"""Lightning's loop around the task: the per-epoch run log, atomic checkpoints and ``fit``.

Stock Lightning pieces only: ``ModelCheckpoint`` keeps ``best.ckpt`` (lowest validation loss) and
``last.ckpt`` (every epoch, for ``--resume``), ``EarlyStopping`` ends a run that stopped improving, and a
``CheckpointIO`` plugin writes each checkpoint beside its final path under a temporary name, flushes it and
renames it, so a full disk or a kill never leaves a truncated checkpoint at its final path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from slidemap.formats.files import atomic_file
from slidemap.nn.task import BatchNumbers, SegmentationTask

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_precision", "val_recall", "val_f1", "val_iou", "lr")
TIMING_COLUMNS = ("epoch", "train_seconds", "seconds", "chips_per_s")


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.8g}"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Replace ``path`` whole, without a flush to disk: the checkpoints hold these rows (see RunLog)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    with atomic_file(path, sync=False) as tmp:
        tmp.write_text(buf.getvalue())


class RunLog(pl.Callback):
    """Writes metrics.csv and timing.csv after each validation.

    Its rows are part of each checkpoint (``state_dict``), so a resumed run rewrites exactly the rows of the
    epochs its checkpoint holds and carries on. Lightning runs checkpoint callbacks after all others, so the
    files on disk never lag a checkpoint on disk.
    """

    def __init__(self, run: Path, train_chips: int) -> None:
        self.run, self.train_chips = run, train_chips
        self.rows: list[dict[str, Any]] = []
        self.timing: list[dict[str, Any]] = []
        self.epoch_started = self.train_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The rows written so far, stored in each checkpoint."""
        return {"rows": [dict(r) for r in self.rows], "timing": [dict(t) for t in self.timing]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back the rows of the checkpoint a run resumes from."""
        self.rows = [dict(r) for r in state.get("rows", [])]
        self.timing = [dict(t) for t in state.get("timing", [])]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the files at once (headers only, or a resumed run's rows)."""
        self.write()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's clock."""
        self.epoch_started = time.perf_counter()
        self.train_seconds = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the epoch's training time, which leaves out validation."""
        if not trainer.sanity_checking and not self.train_seconds:
            self.train_seconds = time.perf_counter() - self.epoch_started

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's metrics and timing (replacing any later rows of a resumed run) and write."""
        if trainer.sanity_checking or not isinstance(pl_module, SegmentationTask):
            return
        row = pl_module.epoch_result
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [dict(row)]
        seconds = time.perf_counter() - self.epoch_started
        self.timing = [t for t in self.timing if t["epoch"] < row["epoch"]] + [{
            "epoch": row["epoch"], "train_seconds": self.train_seconds, "seconds": seconds,
            "chips_per_s": self.train_chips / self.train_seconds if self.train_seconds else 0.0}]
        self.write()

    def write(self) -> None:
        """Replace metrics.csv and timing.csv with the rows recorded so far."""
        _write_csv(self.run / "metrics.csv", METRIC_COLUMNS, self.rows)
        _write_csv(self.run / "timing.csv", TIMING_COLUMNS, self.timing)


class AtomicCheckpointIO(pl.plugins.TorchCheckpointIO):
    """Checkpoints written beside their final path under a temporary name, flushed and renamed.

    Lightning's own writer opens the final path and writes into it, so a full disk leaves a truncated file
    there; here the old checkpoint stays until the new one is complete on disk.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)


def checkpoint_callback(run: Path) -> pl.callbacks.ModelCheckpoint:
    """``checkpoints/best.ckpt`` (lowest validation loss) and ``checkpoints/last.ckpt`` (every epoch)."""
    return pl.callbacks.ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor="val_loss",
                                        mode="min", save_top_k=1, save_last=True, enable_version_counter=False)


def load_net_weights(net: torch.nn.Module, ckpt: Path) -> None:
    """Load the network's weights from a Lightning checkpoint of the task (``net.`` keys)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})


def readable_checkpoint(path: Path, resumable: bool = False) -> bool:
    """Whether ``path`` opens as a checkpoint holding weights (tensors and plain containers only).

    With ``resumable``, also the optimiser state a run continues from.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated zip, unpickling errors, OS errors: all mean unusable
        return False
    return isinstance(ckpt, dict) and "state_dict" in ckpt and (not resumable or "optimizer_states" in ckpt)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up chatter and its warnings about our deliberate choices off the screen."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for text in ("does not have many workers", "Checkpoint directory", "GPU available but not used",
                     "number of training batches", "LOCAL_RANK", "litlogger", "tensorboard", "LeafSpec"):
            warnings.filterwarnings("ignore", message=f".*{text}.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def _keep_sigint() -> Iterator[None]:
    """Restore the Ctrl-C handler afterwards: Lightning ignores SIGINT once it has caught one."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


class FitOutcome:
    """What a finished (or interrupted) fit leaves: the run log, whether it was interrupted, the best checkpoint."""

    def __init__(self, log: RunLog, interrupted: bool, best: Path | None) -> None:
        self.log, self.interrupted, self.best = log, interrupted, best


def fit(task: SegmentationTask, run: Path, accelerator: str, precision: str, epochs: int, patience: int,
        max_time: str | None, progress: bool, resume_from: Path | None, train_chips: int,
        callbacks: Sequence[pl.Callback] = (), min_epochs: int = 0) -> FitOutcome:
    """Run Lightning's loop on ``task`` with the run folder's log and checkpoints (best and last).

    Early stopping watches the task's ``val_loss_smoothed`` (the validation loss itself unless the task smooths
    it) and never ends a run before ``min_epochs``; the best checkpoint is always the lowest validation loss.
    """
    from slidemap.nn.device import LIGHTNING_PRECISION

    run_log = RunLog(run, train_chips)
    checkpoint = checkpoint_callback(run)
    cbs: list[pl.Callback] = [run_log, checkpoint, *callbacks]
    if patience:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss_smoothed", mode="min", patience=patience,
                                              check_on_train_epoch_end=False))
    with _quiet_lightning():
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, min_epochs=min_epochs or None,
                             max_time=max_time,
                             precision=LIGHTNING_PRECISION[precision],
                             deterministic=True if accelerator == "cpu" else "warn", logger=False,
                             callbacks=cbs, default_root_dir=run, num_sanity_val_steps=0,
                             enable_model_summary=False, enable_progress_bar=progress, benchmark=False,
                             plugins=[AtomicCheckpointIO()])
        with _keep_sigint():
            try:
                trainer.fit(task, train_dataloaders=BatchNumbers(task.train_batches),
                            val_dataloaders=BatchNumbers(task.val_batches), ckpt_path=resume_from,
                            weights_only=True)
            except SystemExit:  # Lightning exits the process on Ctrl-C; an API must not
                if not trainer.interrupted:
                    raise
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    return FitOutcome(run_log, bool(trainer.interrupted), best if best and best.is_file() else None)
