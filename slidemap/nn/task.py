"""Training with Lightning: the task, its per-epoch log, atomic checkpoints and the fit loop.

The task trains on chips held in memory as one tensor (no DataLoader workers): Lightning iterates batch
numbers and the task maps them to chips. Every random draw of an epoch (shuffle, symmetries, dropout) comes
from generators seeded by (seed, epoch), which the checkpoint fixes through its epoch, so a resumed run ends
with the weights of an uninterrupted one. Nodata pixels (mask 255) weigh 0 in the loss and count nowhere in
the validation metrics. Checkpoints are written into the run folder under a temporary name, flushed to disk
and renamed, so a full disk or a kill never leaves a truncated checkpoint at its final path. They reach the
disk at most every ``LAST_CHECKPOINT_EVERY_S`` seconds (``SLIDEMAP_CHECKPOINT_EVERY_S`` overrides it) and
at the end (best held in memory in between, last only dumped when due, best before last), because a resumed
run replays the epochs since then exactly, and a grid of short runs would otherwise spend a fifth of its
time writing checkpoints. A caller that writes the weights itself right after (the experiment runner) skips
the final write and takes the best weights from memory.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch

from slidemap.errors import UserError
from slidemap.formats.files import atomic_file
from slidemap.nn.augment import apply_symmetries, draw_symmetries
from slidemap.nn.losses import build_loss
from slidemap.raster.metrics import Counts, scores

if TYPE_CHECKING:
    from slidemap.nn.device import Probe, Setting

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


def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one epoch (0: shuffle, 1: symmetries, 2: torch global)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for ``stream`` of ``epoch``: the same draws whether the run was resumed or not."""
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))


class _BatchNumbers:
    """What Lightning iterates: the batch numbers of an epoch; the task maps them to chips."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.count))


class SegmentationTask(pl.LightningModule):
    """Trains ``net`` on in-memory chips.

    Per-epoch seeded shuffle and symmetries, masked loss, and validation counts at 0.5 pooled over all validation
    pixels.
    """

    def __init__(self, net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
                 train_idx: np.ndarray, val_idx: np.ndarray, batch_size: int, val_batch_size: int,
                 lr: float, loss: str, pos_weight: float | None, augment: bool, seed: int,
                 channels_last: bool) -> None:
        super().__init__()
        self.net = net
        self.images, self.masks = images, masks
        self.train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        self.val_idx = torch.as_tensor(val_idx, dtype=torch.long)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.lr, self.augment, self.seed = lr, augment, seed
        self.loss_fn = build_loss(loss, pos_weight)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._epoch_plan: tuple[int, torch.Tensor, torch.Tensor | None] | None = None
        self.train_acc = torch.zeros(2, dtype=torch.float64)
        self.val_acc = torch.zeros(6, dtype=torch.float64)
        self.epoch_result: dict[str, float] = {}

    @property
    def train_batches(self) -> int:
        """Training batches per epoch (the last one may be short)."""
        return math.ceil(len(self.train_idx) / self.batch_size)

    @property
    def val_batches(self) -> int:
        """Validation batches per epoch (the last one may be short)."""
        return math.ceil(len(self.val_idx) / self.val_batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at ``lr``, betas (0.9, 0.999), with the fused kernel."""
        # The fused kernel updates every parameter in one pass (+5 % per step at 128 px, docs/performance.md);
        # it is deterministic like the default one.
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.999), fused=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (the steps call ``net`` directly)."""
        return self.net(x)

    def _to_device(self) -> None:
        if self.images.device != self.device:
            self.images, self.masks = self.images.to(self.device), self.masks.to(self.device)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Chip order and symmetries of ``epoch``, drawn from generators seeded by (seed, epoch)."""
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            shuffle = epoch_generator(self.seed, epoch, 0)
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=shuffle)]
            syms = draw_symmetries(len(order), epoch_generator(self.seed, epoch, 1)) if self.augment else None
            self._epoch_plan = (epoch, order, syms)
        return self._epoch_plan[1], self._epoch_plan[2]

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._to_device()
        idx = idx.to(self.device)
        return self.images[idx], self.masks[idx]

    def on_train_epoch_start(self) -> None:
        """Seed torch's global stream from (seed, epoch), so a resumed run draws the same dropout; zero the sums."""
        torch.manual_seed(_stream_seed(self.seed, self.current_epoch, 2))  # dropout and the like
        self.train_acc = torch.zeros(2, dtype=torch.float64, device=self.device)

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
        """Masked loss of batch number ``batch`` of this epoch's plan, with its symmetries applied."""
        order, syms = self._plan(self.current_epoch)
        sl = slice(int(batch) * self.batch_size, (int(batch) + 1) * self.batch_size)
        x, y = self._batch(order[sl])
        if syms is not None:
            x, y = apply_symmetries(x, y, syms[sl])
        logits = self.net(x.contiguous(memory_format=self.memory_format))
        loss = self.loss_fn(logits, y)
        valid = (y != 255).sum()
        self.train_acc += torch.stack([loss.detach().double() * valid, valid.double()])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(y))
        return loss

    def on_validation_epoch_start(self) -> None:
        """Zero the pooled validation counts."""
        self.val_acc = torch.zeros(6, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: int, batch_idx: int) -> None:
        """Add batch ``batch``'s loss and confusion counts at 0.5 to the pooled counts."""
        sl = slice(int(batch) * self.val_batch_size, (int(batch) + 1) * self.val_batch_size)
        x, y = self._batch(self.val_idx[sl])
        logits = self.net(x.contiguous(memory_format=self.memory_format))
        loss = self.loss_fn(logits, y)
        valid = y != 255
        pred = logits.reshape(y.shape) >= 0  # probability >= 0.5
        truth = y == 1
        tp = (pred & truth & valid).sum()
        fp = (pred & ~truth & valid).sum()
        fn = (~pred & truth & valid).sum()
        nvalid = valid.sum()
        self.val_acc += torch.stack([loss.double() * nvalid, nvalid.double(), tp.double(), fp.double(),
                                     fn.double(), (nvalid - tp - fp - fn).double()])

    def on_validation_epoch_end(self) -> None:
        """Turn the pooled counts into the epoch's row of metrics.csv and log val_loss and val_f1."""
        loss_sum, weight, tp, fp, fn, tn = (float(v) for v in self.val_acc.cpu())
        s = scores(Counts(int(tp), int(fp), int(fn), int(tn)))
        train_sum, train_weight = (float(v) for v in self.train_acc.cpu())
        val_loss = loss_sum / max(weight, 1.0)
        self.epoch_result = {
            "epoch": self.current_epoch + 1,
            "train_loss": train_sum / max(train_weight, 1.0),
            "val_loss": val_loss,
            "val_precision": s["precision"], "val_recall": s["recall"], "val_f1": s["f1"],
            "val_iou": s["iou"], "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        self.log("val_loss", val_loss, prog_bar=True)
        self.log("val_f1", s["f1"], prog_bar=True)


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.8g}"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    with atomic_file(path) as tmp:
        tmp.write_text(buf.getvalue())


class RunLog(pl.Callback):
    """Writes metrics.csv and timing.csv after each validation, before the checkpoints are saved.

    Its rows are part of each checkpoint (``state_dict``), so a resumed run rewrites exactly the rows of
    the epochs its checkpoint holds and carries on.
    """

    def __init__(self, run: Path, train_chips: int) -> None:
        self.run, self.train_chips = run, train_chips
        self.rows: list[dict[str, Any]] = []
        self.timing: list[dict[str, Any]] = []
        self._t0 = self._t_train = 0.0

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
        self._write()

    def _write(self) -> None:
        _write_csv(self.run / "metrics.csv", METRIC_COLUMNS, self.rows)
        _write_csv(self.run / "timing.csv", TIMING_COLUMNS, self.timing)


@torch.inference_mode()
def predict_chips(net: torch.nn.Module, images: torch.Tensor, idx: torch.Tensor, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Sigmoid probabilities (n, S, S) of chips ``idx``, in float32 on ``device``."""
    net = net.to(device).eval()
    out = []
    for start in range(0, len(idx), batch_size):
        x = images[idx[start:start + batch_size]].to(device)
        out.append(torch.sigmoid(net(x).float()).squeeze(1).cpu())
    return torch.cat(out).numpy()


def load_net_weights(net: torch.nn.Module, ckpt: Path) -> None:
    """Load the network's weights from a Lightning checkpoint of the task (``net.`` keys)."""
    net.load_state_dict(_net_weights(torch.load(ckpt, map_location="cpu", weights_only=True)))


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


def cpu_threads() -> int:
    """Threads for training: OMP_NUM_THREADS if the user set it, else every core this process may use."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        if self.hold:
            self.held[path] = _copied(checkpoint)
            return
        self.flush()
        self._write(checkpoint, path)

    def flush(self) -> None:
        """Write the held checkpoints, the best before the last."""
        for path in sorted(self.held, key=lambda p: p.name == "last.ckpt"):
            self._write(self.held.pop(path), path)

    @staticmethod
    def _write(checkpoint: dict[str, Any], path: Path) -> None:
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)


def _copied(value: Any) -> Any:
    """A copy of a checkpoint whose tensors no longer share storage with the live model and optimiser."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _copied(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) for v in value)
    return value


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (latest epoch), on disk every ``every_s`` s.

    The first write is due ``every_s`` after training starts, so a run shorter than that writes only at
    the end; with ``final_write`` False not even then (the caller keeps the weights, see `best_weights`).
    In between, an improved best is held in memory (a copy) and the last is dumped only when it is due.
    """

    def __init__(self, dirpath: Path, every_s: float | None = None, final_write: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                         save_last=True, enable_version_counter=False)
        self.every_s = checkpoint_every_s() if every_s is None else every_s
        self.final_write = final_write
        self._written_at = time.monotonic()  # restarted when training starts
        self._last_step = -1

    def _io(self, trainer: pl.Trainer) -> AtomicCheckpointIO:
        io = trainer.strategy.checkpoint_io
        assert isinstance(io, AtomicCheckpointIO)
        return io

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock of the first write."""
        super().on_train_start(trainer, pl_module)
        self._written_at = time.monotonic()

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
            io.flush()
            self._written_at = time.monotonic()


def readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` opens as a checkpoint holding weights (tensors and plain containers only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated zip, unpickling errors, OS errors: all mean unusable
        return False
    return isinstance(ckpt, dict) and "state_dict" in ckpt


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
    checkpoint = RunCheckpoint(run / "checkpoints", final_write=final_write)
    cbs: list[pl.Callback] = [run_log, checkpoint, *callbacks]
    if patience:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience,
                                              check_on_train_epoch_end=False))
    with _quiet_lightning():
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, max_time=max_time,
                             precision=LIGHTNING_PRECISION[precision],
                             deterministic=True if accelerator == "cpu" else "warn", logger=False,
                             callbacks=cbs, default_root_dir=run, num_sanity_val_steps=0,
                             enable_model_summary=False, enable_progress_bar=progress, benchmark=False,
                             plugins=[AtomicCheckpointIO()])
        with _keep_sigint():
            try:
                trainer.fit(task, train_dataloaders=_BatchNumbers(task.train_batches),
                            val_dataloaders=_BatchNumbers(task.val_batches), ckpt_path=resume_from,
                            weights_only=True)
            except SystemExit:  # Lightning exits the process on Ctrl-C; an API must not
                if not trainer.interrupted:
                    raise
    return FitOutcome(run_log, bool(trainer.interrupted), checkpoint.best_weights(trainer))


# --- chips as standardised tensors -------------------------------------------------------------------

def load_chip_tensors(chipsets: Sequence[Any], bands: Sequence[str], normalise: Any,
                      chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of several chip sets, one after the other.

    Images (N, C, S, S) float32 are standardised by ``normalise`` (NaN -> 0); masks (N, S, S) uint8 hold 255
    wherever the mask or any selected band is nodata.

    Read in chunks from the memory-mapped stores, so peak memory is the result plus one chunk.
    """
    n, size = sum(len(c) for c in chipsets), chipsets[0].size
    images = torch.empty((n, len(bands), size, size), dtype=torch.float32)
    masks = torch.empty((n, size, size), dtype=torch.uint8)
    offset = 0
    for chipset in chipsets:
        idx = chipset.band_indexes(bands)
        for start in range(0, len(chipset), chunk):
            stop = min(len(chipset), start + chunk)
            raw = np.asarray(chipset.images[start:stop][:, idx], dtype=np.float32)
            nodata = np.isnan(raw).any(axis=1)
            images[offset + start:offset + stop] = torch.from_numpy(normalise(raw))
            m = np.array(chipset.masks[start:stop], dtype=np.uint8)
            m[nodata] = 255
            masks[offset + start:offset + stop] = torch.from_numpy(m)
        offset += len(chipset)
    return images, masks


# --- what ``--precision auto`` measures for training ---------------------------------------------------

def training_probe(arch: str, bands: int, filters: int, model_args: dict[str, Any], size: int,
                   batch_size: int, device: torch.device, max_batch: int = 8) -> Probe:
    """The training step ``--precision auto`` times, on a fresh network and random chips of the run's size.

    Forward (under autocast), BCE, backward and an Adam step, in each candidate setting (fp32 and, where the CPU
    has native bf16, bf16 autocast; channels-last and NCHW each). The run's own network and random streams are not
    touched.
    """
    from slidemap.nn.device import AUTOCAST_DTYPE, Probe, Setting, cpu_has_native_bf16
    from slidemap.nn.models import build_model

    batch = max(1, min(batch_size, max_batch))  # chips/s hardly depends on the batch past 8; time does
    candidates = [Setting("torch", "32", True), Setting("torch", "32", False)]
    excluded = {}
    if cpu_has_native_bf16():
        candidates += [Setting("torch", "bf16", True), Setting("torch", "bf16", False)]
    else:
        excluded["torch-bf16"] = "torch-bf16: this CPU has no native bf16 (it would be emulated)"

    def step(setting: Setting) -> Callable[[], float]:
        fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
        net = build_model(arch, in_channels=bands, filters=filters, **model_args).to(device)
        net = net.to(memory_format=fmt).train()  # type: ignore[call-overload]
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
        x = torch.randn(batch, bands, size, size, device=device).contiguous(memory_format=fmt)
        y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
        dtype = AUTOCAST_DTYPE[setting.precision]

        def run() -> float:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = net(x)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(batch)

        return run

    key = {"network": arch, "bands": bands, "filters": filters, "model_args": dict(model_args),
           "size": size, "batch": batch, "device": device.type}
    return Probe("train", key, candidates, step, "chips/s", 1.0, excluded)
