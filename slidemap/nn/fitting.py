"""Lightning's loop around the task: the per-epoch run log, atomic checkpoints and ``fit``.

Checkpoints are written into the run folder under a temporary name, flushed to disk and renamed, so a full
disk or a kill never leaves a truncated checkpoint at its final path. They reach the disk at most every
``LAST_CHECKPOINT_EVERY_S`` seconds (``SLIDEMAP_CHECKPOINT_EVERY_S`` overrides it) and at the end (best held
in memory in between, last only dumped when due, best before last), because a resumed run replays the
epochs since then exactly, and a grid of short runs would otherwise spend a fifth of its time writing
checkpoints. A caller that writes the weights itself right after (the experiment runner) skips the final
write and takes the best weights from memory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from slidemap.errors import UserError
from slidemap.formats.files import atomic_file
from slidemap.nn.task import BatchNumbers, SegmentationTask

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_precision", "val_recall", "val_f1", "val_iou", "lr")
TIMING_COLUMNS = ("epoch", "train_seconds", "seconds", "chips_per_s")
LAST_CHECKPOINT_EVERY_S = 10.0  # a kill loses at most this much training (plus the epoch under way)


def checkpoint_every_s() -> float:
    """Seconds between checkpoint writes: ``SLIDEMAP_CHECKPOINT_EVERY_S`` if set (0: every epoch), else 10."""
    value = os.environ.get("SLIDEMAP_CHECKPOINT_EVERY_S", "")
    try:
        return max(0.0, float(value)) if value else LAST_CHECKPOINT_EVERY_S
    except ValueError:
        raise UserError(f"SLIDEMAP_CHECKPOINT_EVERY_S={value}: give seconds, e.g. 10 (0 writes every epoch)") \
            from None



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
    """Writes metrics.csv and timing.csv after a validation, at most every ``every_s`` seconds, and at the end.

    Its rows are part of each checkpoint (``state_dict``), so a resumed run rewrites exactly the rows of
    the epochs its checkpoint holds and carries on. The files lag the epochs by under ``every_s`` (a grid's
    runs of 1-second epochs would otherwise spend ~2 ms an epoch rewriting them); they are written before
    any checkpoint that holds more epochs than they do, when training ends, and when it is interrupted.
    """

    def __init__(self, run: Path, train_chips: int, every_s: float = 1.0) -> None:
        self.run, self.train_chips, self.every_s = run, train_chips, every_s
        self.rows: list[dict[str, Any]] = []
        self.timing: list[dict[str, Any]] = []
        self._t0 = self._t_train = 0.0
        self._written_at = -math.inf
        self._pending = False

    def state_dict(self) -> dict[str, Any]:
        """The rows written so far, stored in each checkpoint."""
        return {"rows": [dict(r) for r in self.rows], "timing": [dict(t) for t in self.timing]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back the rows of the checkpoint a run resumes from."""
        self.rows = [dict(r) for r in state.get("rows", [])]
        self.timing = [dict(t) for t in state.get("timing", [])]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the files at once (headers only, or a resumed run's rows)."""
        self._write()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the rows not written yet."""
        self.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Write the rows not written yet (Ctrl-C, an error in a step)."""
        self.flush()

    def flush(self) -> None:
        """Write the files if they lack an epoch (the checkpoint writer calls this before writing)."""
        if self._pending:
            self._write()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's clock."""
        self._t0 = time.perf_counter()
        self._t_train = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the epoch's training time, which leaves out validation."""
        if not trainer.sanity_checking and not self._t_train:
            self._t_train = time.perf_counter() - self._t0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's metrics and timing (replacing any later rows of a resumed run) and write."""
        if trainer.sanity_checking or not isinstance(pl_module, SegmentationTask):
            return
        row = pl_module.epoch_result
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [dict(row)]
        seconds = time.perf_counter() - self._t0
        self.timing = [t for t in self.timing if t["epoch"] < row["epoch"]] + [{
            "epoch": row["epoch"], "train_seconds": self._t_train, "seconds": seconds,
            "chips_per_s": self.train_chips / self._t_train if self._t_train else 0.0}]
        self._pending = True
        if time.monotonic() - self._written_at >= self.every_s:
            self._write()

    def _write(self) -> None:
        _write_csv(self.run / "metrics.csv", METRIC_COLUMNS, self.rows)
        _write_csv(self.run / "timing.csv", TIMING_COLUMNS, self.timing)
        self._written_at, self._pending = time.monotonic(), False


def load_net_weights(net: torch.nn.Module, ckpt: Path) -> None:
    """Load the network's weights from a Lightning checkpoint of the task (``net.`` keys)."""
    net.load_state_dict(_net_weights(torch.load(ckpt, map_location="cpu", weights_only=True)))


def copy_state(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> bool:
    """Copy ``src`` into ``dst``'s tensors in place by one fused copy; whether it could.

    Only when both have the same keys, shapes, dtypes and devices; otherwise nothing is copied.
    """
    if dst.keys() != src.keys() or any((d.shape, d.dtype, d.device) != (src[k].shape, src[k].dtype, src[k].device)
                                       for k, d in dst.items()):
        return False
    with torch.no_grad():
        torch._foreach_copy_([t.detach() for t in dst.values()], [src[k].detach() for k in dst])
    return True


def set_net_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (the network's own keys, shapes, dtypes, device) into ``net`` by one fused copy.

    ``load_state_dict`` walks every module in Python (7 ms for a small U-Net, each grid run); anything else
    than a copy of the network's own state dict goes through it, for its checks and messages.
    """
    if not copy_state(net.state_dict(keep_vars=True), weights):
        net.load_state_dict(weights)


def _net_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's part of a task checkpoint's state dict, without the ``net.`` prefix."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


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


_CALLBACK_FACTORIES: dict[str, list[Any]] = {}


def _callback_factories_once() -> None:
    """Look Lightning's callback entry points up once per process instead of once per Trainer.

    Lightning scans every installed distribution's metadata for ``callbacks_factory`` entry points each time a
    Trainer is made (6.5 ms here, 120 distributions; ~15 ms beside a busy torch): a tenth of a grid run's cost
    outside its epochs. The factories found are kept; each Trainer still gets the callbacks they make afresh,
    as Lightning does. A Lightning without that hook is left alone.
    """
    from lightning.pytorch.trainer.connectors import callback_connector

    if hasattr(callback_connector, "_load_external_callbacks"):
        callback_connector._load_external_callbacks = _external_callbacks


def _external_callbacks(group: str) -> list[Any]:
    """Lightning's ``_load_external_callbacks``, with the entry points' factories loaded once per group."""
    from importlib import metadata

    if group not in _CALLBACK_FACTORIES:
        _CALLBACK_FACTORIES[group] = [ep.load() for ep in metadata.entry_points(group=group)]
    made: list[Any] = []
    for factory in _CALLBACK_FACTORIES[group]:
        callbacks = factory()
        made.extend(callbacks if isinstance(callbacks, list) else [callbacks])
    return made


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


# --- checkpoints -----------------------------------------------------------------------------------

class AtomicCheckpointIO(pl.plugins.TorchCheckpointIO):
    """Checkpoints written beside their final path under a temporary name, flushed and renamed.

    Lightning's own writer goes through ``$TMPDIR`` and copies, so a full disk leaves a truncated file at
    the final path; here the old checkpoint stays until the new one is complete on disk. While ``hold`` is
    set, checkpoints are kept in memory (copied) until ``flush`` writes them, ``last.ckpt`` last, so that
    the files on disk always describe one consistent moment or a later best.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: dict[Path, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically, or hold it."""
        path = Path(path)
        if self.hold:  # a held best replaced by a better one lends its tensors to the copy
            self.held[path] = _copied(checkpoint, _tensors(self.held.pop(path, None)))
            return
        self.flush()
        self._write(checkpoint, path)

    def save_weights(self, header: dict[str, Any], weights: dict[str, torch.Tensor], path: str | Path) -> None:
        """Write (or hold) a checkpoint of ``weights`` alone; a held one is refilled in place by one fused copy."""
        path = Path(path)
        held = self.held.get(path) if self.hold else None
        if held is not None and copy_state(held["state_dict"], weights):
            held.update(header)
            return
        self.save_checkpoint({**header, "state_dict": {k: w.detach() for k, w in weights.items()}}, path)

    def flush(self) -> None:
        """Write the held checkpoints, the best before the last."""
        for path in sorted(self.held, key=lambda p: p.name == "last.ckpt"):
            self._write(self.held.pop(path), path)

    @staticmethod
    def _write(checkpoint: dict[str, Any], path: Path) -> None:
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)


def _copied(checkpoint: Any, spare: Sequence[torch.Tensor] = ()) -> Any:
    """A copy of a checkpoint whose tensors no longer share storage with the live model and optimiser.

    The copy's tensors are the ``spare`` ones (an earlier copy's, in the same order) wherever shape, dtype and
    device match, filled by one fused copy; the others are cloned. Cloning ~370 small tensors at every improved
    epoch cost ~1.3 ms, the fused copy ~0.3 ms.
    """
    pool = iter(spare)
    targets: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            t = next(pool, None)
            if t is None or t.shape != value.shape or t.dtype != value.dtype or t.device != value.device:
                return value.detach().clone()
            targets.append(t)
            sources.append(value.detach())
            return t
        if isinstance(value, dict):
            return type(value)((k, copy(v)) for k, v in value.items())
        if isinstance(value, list | tuple):
            return type(value)(copy(v) for v in value)
        return value

    out = copy(checkpoint)
    if targets:
        torch._foreach_copy_(targets, sources)
    return out


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a (copied) checkpoint, in the order :func:`_copied` walks it."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (latest epoch), on disk every ``every_s`` s.

    The first write is due ``every_s`` after training starts, so a run shorter than that writes only at
    the end; with ``final_write`` False not even then (the caller keeps the weights, see `best_weights`).
    In between, an improved best is held in memory (a copy) and the last is dumped only when it is due.

    With ``final_write`` False the checkpoints serve only to resume (from last) and to give the bundle its
    weights, so the best is dumped and held as weights only: a third of the tensors to copy at each improved
    epoch, and no optimiser or callback state to gather.
    """

    def __init__(self, dirpath: Path, run_log: RunLog, every_s: float | None = None,
                 final_write: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                         save_last=True, enable_version_counter=False)
        self.run_log = run_log  # flushed before each write: the log on disk never lags a checkpoint on disk
        self.every_s = checkpoint_every_s() if every_s is None else every_s
        self.final_write = final_write
        self._written_at = time.monotonic()  # restarted when training starts
        self._last_step = -1
        self._weights: dict[str, torch.Tensor] | None = None

    def _io(self, trainer: pl.Trainer) -> AtomicCheckpointIO:
        io = trainer.strategy.checkpoint_io
        assert isinstance(io, AtomicCheckpointIO)
        return io

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step = trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Lightning's save; a best that no final write will keep is saved (held) as its weights only.

        That is what Lightning's weights-only checkpoint holds, less the loops' state, which nothing reads from a
        best (runs resume from last): ~0.7 ms an improved epoch instead of ~3.5 ms for the full checkpoint.
        """
        if self.final_write or Path(filepath).stem != "best":
            super()._save_checkpoint(trainer, filepath)
            return
        if self._weights is None:  # the module's tensors, updated in place by training: gathered once
            self._weights = trainer.lightning_module.state_dict(keep_vars=True)
        self._io(trainer).save_weights({"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                                        "pytorch-lightning_version": pl.__version__}, self._weights, filepath)
        self._last_global_step_saved = trainer.global_step  # Lightning's bookkeeping of a save
        self._last_checkpoint_saved = filepath

    def _update_best_and_save(self, current: torch.Tensor, trainer: pl.Trainer,
                              monitor_candidates: dict[str, torch.Tensor]) -> None:
        """A new best: saved (or held) as Lightning does, and the task keeps this epoch's validation output."""
        super()._update_best_and_save(current, trainer, monitor_candidates)
        if isinstance(trainer.lightning_module, SegmentationTask):
            trainer.lightning_module.keep_best_val_prob()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock of the first write."""
        super().on_train_start(trainer, pl_module)
        self._written_at = time.monotonic()
        self._weights = None  # gathered afresh, on the device training runs on

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hold this epoch's best if it improved; write best and last when they are due."""
        final = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        due = self.final_write if final else time.monotonic() - self._written_at >= self.every_s
        io = self._io(trainer)
        io.hold, self.save_last = True, due  # Lightning saves last only beside a new best, and only when due
        try:
            super().on_train_epoch_end(trainer, pl_module)  # Lightning saves here when validation ends epochs
        finally:
            io.hold, self.save_last = False, True
        if due:
            self._write(trainer, io)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Best and last as they are now, when the run ended in a way the epoch could not see (``--max-time``)."""
        if self.final_write:
            self._write(trainer, self._io(trainer))

    def best_weights(self, trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
        """The network weights of the best epoch, when they are held in memory (not yet written)."""
        held = self._io(trainer).held.get(Path(self.dirpath or "") / "best.ckpt")
        return None if held is None else _net_weights(held)

    def _write(self, trainer: pl.Trainer, io: AtomicCheckpointIO) -> None:
        """This moment's last (unless written already) after the held best, to disk."""
        if self._last_step != trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
            io.hold = True
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                io.hold = False
        if io.held:
            self.run_log.flush()
            io.flush()
            self._written_at = time.monotonic()


def readable_checkpoint(path: Path, resumable: bool = False) -> bool:
    """Whether ``path`` opens as a checkpoint holding weights (tensors and plain containers only).

    With ``resumable``, also the optimiser state a run continues from (a weights-only best has none).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated zip, unpickling errors, OS errors: all mean unusable
        return False
    return isinstance(ckpt, dict) and "state_dict" in ckpt and (not resumable or "optimizer_states" in ckpt)


# --- the fit loop ----------------------------------------------------------------------------------

class FitOutcome:
    """What a finished (or interrupted) fit leaves.

    The run log, whether it was interrupted, and the best epoch's weights when they were not written
    (``final_write`` False).
    """

    def __init__(self, log: RunLog, interrupted: bool, best_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.log, self.interrupted, self.best_weights = log, interrupted, best_weights


def fit(task: SegmentationTask, run: Path, accelerator: str, precision: str, epochs: int, patience: int,
        max_time: str | None, progress: bool, resume_from: Path | None, train_chips: int,
        callbacks: Sequence[pl.Callback] = (), final_write: bool = True) -> FitOutcome:
    """Run Lightning's loop on ``task`` with the run folder's log and checkpoints (best and last).

    ``final_write`` False leaves the end of training unwritten: the caller saves the best weights itself.
    """
    from slidemap.nn.device import LIGHTNING_PRECISION

    run_log = RunLog(run, train_chips)
    checkpoint = RunCheckpoint(run / "checkpoints", run_log, final_write=final_write)
    cbs: list[pl.Callback] = [run_log, checkpoint, *callbacks]
    if patience:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience,
                                              check_on_train_epoch_end=False))
    _callback_factories_once()
    with _quiet_lightning():
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, max_time=max_time,
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
    return FitOutcome(run_log, bool(trainer.interrupted), checkpoint.best_weights(trainer))
