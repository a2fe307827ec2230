"""``slidemap train``: fit a U-Net or ResU-Net on a chip set, ending with a model bundle.

The run folder holds ``config.yaml`` (options as run), ``metrics.csv`` (one row per epoch, identical for
the same seed on CPU), ``timing.csv`` (wall times, kept apart so metrics.csv stays reproducible),
``checkpoints/best.ckpt`` (lowest validation loss) and ``checkpoints/last.ckpt`` (for ``--resume``),
``learning_curve.png`` and, written last, ``bundle.pt``: its presence means the run is complete.

How the pieces follow the studies, and where they depart from them (docs/training.md says more):
- the validation split is drawn before any augmentation and is spatial (`split_chips`): overlapping
  windows never straddle training and validation;
- augmentation draws one of the 8 symmetries of the square per sample and epoch (`slidemap.nn.augment`);
- bands are standardised with the chip set's train-area statistics, nodata becomes 0 after that and its
  pixels weigh 0 in the loss and count nowhere in the metrics;
- Lightning drives the loop over chips held in memory as one tensor (no DataLoader workers); every random
  draw of an epoch (shuffle, symmetries, dropout) comes from generators seeded by (seed, epoch), which the
  checkpoint fixes through its epoch, so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from slidemap import __version__
from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet
from slidemap.formats.files import atomic_file, sha256
from slidemap.nn.augment import apply_symmetries, draw_symmetries
from slidemap.nn.bundle import save_bundle
from slidemap.nn.device import cpu_has_native_bf16, resolve_device
from slidemap.nn.losses import LOSSES, build_loss
from slidemap.raster.metrics import Counts, best_threshold, confusion, scores

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_precision", "val_recall", "val_f1", "val_iou", "lr")
TIMING_COLUMNS = ("epoch", "train_seconds", "seconds", "chips_per_s")
PRECISIONS = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32-true": "32"}
"""Short names users type (``--precision bf16``) for the names the run records."""
RESUME_FIXED = ("chips_sha256", "model", "model_args", "filters", "batch_size", "lr", "val_fraction",
                "augment", "bands", "loss", "pos_weight", "seed")
"""Options a resumed run must share with the run it continues (the others, e.g. epochs, may change)."""


# ---------------------------------------------------------------------------------------------------
# Spatially honest validation split
# ---------------------------------------------------------------------------------------------------

BLOCKS_PER_COMPONENT = 16
"""A component too large to move whole is cut into about this many blocks."""
MIN_BLOCK_WINDOWS = 3
"""Blocks are at least this many window sizes wide, so the dropped buffer ring stays a small share."""


@dataclass(frozen=True)
class Split:
    """Chip indexes (sorted) for training and validation, and those dropped as a buffer between them."""

    train: np.ndarray
    val: np.ndarray
    buffer: np.ndarray
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "train": int(self.train.size), "val": int(self.val.size),
                "buffer": int(self.buffer.size)}


def overlap_pairs(rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, of windows that share at least one pixel; shape (M, 2)."""
    if rows.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    tree = cKDTree(np.column_stack([rows, cols]).astype(np.float64))
    pairs = tree.query_pairs(r=float(sizes.max()) - 0.5, p=np.inf, output_type="ndarray")
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    hit = ((rows[i] < rows[j] + sizes[j]) & (rows[j] < rows[i] + sizes[i])
           & (cols[i] < cols[j] + sizes[j]) & (cols[j] < cols[i] + sizes[i]))
    pairs = pairs[hit].astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def spatial_groups(rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray, max_group: int,
                   pairs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group label per window, and whether its group was cut out of a larger component (needs a buffer).

    Components of the overlap graph up to ``max_group`` windows stay whole; larger ones are cut into
    blocks of a coarse grid by window centre.
    """
    n = rows.size
    pairs = overlap_pairs(rows, cols, sizes) if pairs is None else pairs
    comp = _components(n, pairs)
    labels = np.empty(n, dtype=np.int64)
    blocked = np.zeros(n, dtype=bool)
    next_label = 0
    for c in np.unique(comp):
        members = np.flatnonzero(comp == c)
        if members.size <= max_group:
            labels[members] = next_label
            next_label += 1
            continue
        r = rows[members] + sizes[members] / 2
        q = cols[members] + sizes[members] / 2
        extent = (np.ptp(r) + sizes.max()) * (np.ptp(q) + sizes.max())
        block = max(MIN_BLOCK_WINDOWS * float(sizes.max()), math.sqrt(extent / BLOCKS_PER_COMPONENT))
        keys = np.column_stack([((r - r.min()) // block), ((q - q.min()) // block)]).astype(np.int64)
        _, sub = np.unique(keys, axis=0, return_inverse=True)
        labels[members] = next_label + sub.ravel()
        blocked[members] = True
        next_label += int(sub.max()) + 1
    return labels, blocked


def _take_groups(labels: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean validation flags: shuffled groups taken while they bring the count closer to ``target``."""
    groups, counts = np.unique(labels, return_counts=True)
    order = rng.permutation(groups.size)
    chosen = np.zeros(groups.size, dtype=bool)
    taken = 0
    for g in order:
        if abs(taken + counts[g] - target) < abs(taken - target):
            chosen[g] = True
            taken += counts[g]
    return np.isin(labels, groups[chosen])


def split_chips(windows: Sequence[dict[str, Any]], val_fraction: float, seed: int) -> Split:
    """Seeded split of chips into training and validation that never puts overlapping windows on both sides.

    Args:
        windows: one dict per chip (``windows.csv`` rows); ``row``/``col``/``size`` in scene pixels when
            the chip was cut from a scene, absent for independent patches.
        val_fraction: share of the chips wanted in validation, in (0, 1).
        seed: seed of the group shuffle.

    Raises:
        UserError: when the chips cannot give a non-empty training and validation set.
    """
    n = len(windows)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1 (the studies held out 0.3)")
    if n < 2:
        raise UserError(f"chip set has {n} chip(s); training needs at least 2 (one to validate on)")
    placed = np.array([isinstance(w.get("row"), int) and isinstance(w.get("col"), int) for w in windows])
    rows = np.array([w["row"] if p else 0 for w, p in zip(windows, placed, strict=True)], dtype=np.int64)
    cols = np.array([w["col"] if p else 0 for w, p in zip(windows, placed, strict=True)], dtype=np.int64)
    sizes = np.array([int(w.get("size") or 1) for w in windows], dtype=np.int64)

    labels = np.arange(n, dtype=np.int64)  # patches without offsets: each its own group
    blocked = np.zeros(n, dtype=bool)
    pairs = np.zeros((0, 2), dtype=np.int64)
    where = np.flatnonzero(placed)
    if where.size:
        max_group = max(1, int(round(0.1 * n)))
        local_pairs = overlap_pairs(rows[where], cols[where], sizes[where])
        pairs = where[local_pairs]
        sub_labels, sub_blocked = spatial_groups(rows[where], cols[where], sizes[where], max_group,
                                                 local_pairs)
        labels[where] = n + sub_labels
        blocked[where] = sub_blocked
    rng = np.random.default_rng(seed)
    val = _take_groups(labels, val_fraction * n, rng)
    if not val.any():  # fraction too small for the smallest group: take the smallest one
        groups, counts = np.unique(labels, return_counts=True)
        val = labels == groups[int(np.argmin(counts))]
    buffer = np.zeros(n, dtype=bool)
    if pairs.size:
        a, b = pairs[:, 0], pairs[:, 1]
        buffer[a[val[b] & ~val[a]]] = True
        buffer[b[val[a] & ~val[b]]] = True
    train = ~val & ~buffer
    if not train.any():
        raise UserError(f"chip set of {n} chips: its windows overlap into too few separate places to hold "
                        f"out validation chips; sample more chips, or lower --val-fraction")
    method = ("random patches" if not placed.any()
              else "spatial blocks with buffer" if blocked.any() else "overlap groups")
    return Split(train=np.flatnonzero(train), val=np.flatnonzero(val), buffer=np.flatnonzero(buffer),
                 method=method)


# ---------------------------------------------------------------------------------------------------
# Chips as standardised tensors
# ---------------------------------------------------------------------------------------------------

def load_chip_tensors(chipset: ChipSet, band_indexes: Sequence[int],
                      chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, S, S) float32 standardised with the chip set's statistics, NaN -> 0, and masks
    (N, S, S) uint8 with 255 wherever the mask or any selected band is nodata.

    Read in chunks from the memory-mapped store, so peak memory is the result plus one chunk.
    """
    if chipset.masks is None:
        raise UserError(f"CHIPS {chipset.path}: has no masks.npy; training needs a chip set with masks")
    names = [chipset.bands[i] for i in band_indexes]
    try:
        mean = np.array([float(chipset.stats[b]["mean"]) for b in names], dtype=np.float32)
        std = np.array([float(chipset.stats[b]["std"]) for b in names], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"CHIPS {chipset.path}: chips.json lacks mean/std statistics for bands "
                        f"{', '.join(names)}; sample it again") from None
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0).astype(np.float32)
    n, size = len(chipset), chipset.size
    images = torch.empty((n, len(names), size, size), dtype=torch.float32)
    masks = torch.empty((n, size, size), dtype=torch.uint8)
    idx = list(band_indexes)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        raw = np.asarray(chipset.images[start:stop][:, idx], dtype=np.float32)
        nodata = np.isnan(raw).any(axis=1)
        std_raw = (raw - mean[None, :, None, None]) / std[None, :, None, None]
        images[start:stop] = torch.from_numpy(np.nan_to_num(std_raw, nan=0.0, posinf=0.0, neginf=0.0))
        m = np.array(chipset.masks[start:stop], dtype=np.uint8)
        m[nodata] = 255
        masks[start:stop] = torch.from_numpy(m)
    return images, masks


def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one epoch (0: shuffle, 1: symmetries, 2: torch global)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for ``stream`` of ``epoch``: the same draws whether the run was resumed or not."""
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))


# ---------------------------------------------------------------------------------------------------
# The Lightning pieces
# ---------------------------------------------------------------------------------------------------

class _BatchNumbers:
    """What Lightning iterates: the batch numbers of an epoch; the task maps them to chips."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.count))


class SegmentationTask(pl.LightningModule):
    """Trains ``net`` on in-memory chips: per-epoch seeded shuffle and symmetries, masked loss, and
    validation counts at 0.5 pooled over all validation pixels."""

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
        return math.ceil(len(self.train_idx) / self.batch_size)

    @property
    def val_batches(self) -> int:
        return math.ceil(len(self.val_idx) / self.val_batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.999))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        torch.manual_seed(_stream_seed(self.seed, self.current_epoch, 2))  # dropout and the like
        self.train_acc = torch.zeros(2, dtype=torch.float64, device=self.device)

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
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
        self.val_acc = torch.zeros(6, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: int, batch_idx: int) -> None:
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
        return {"rows": [dict(r) for r in self.rows], "timing": [dict(t) for t in self.timing]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self.timing = [dict(t) for t in state.get("timing", [])]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._t_train = 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not self._t_train:
            self._t_train = time.perf_counter() - self._t0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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


# ---------------------------------------------------------------------------------------------------
# Run folder, figures, the bundle
# ---------------------------------------------------------------------------------------------------

def _check_run_folder(out: Path, resume: bool) -> Path | None:
    """Refuse to overwrite a run; with ``resume`` return the last checkpoint to continue from (if any)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; choose another --out")
    done, started = (out / "bundle.pt").is_file(), (out / "config.yaml").is_file()
    last = out / "checkpoints" / "last.ckpt"
    if not resume:
        if done:
            raise UserError(f"--out {out}: holds a finished run; choose another --out, or pass --resume to "
                            f"train it on")
        if started:
            raise UserError(f"--out {out}: holds an unfinished run; pass --resume to continue it, or choose "
                            f"another --out")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out}: exists and is not empty; choose a new or empty folder")
        return None
    if not started:
        raise UserError(f"--resume: {out} holds no run to continue (no config.yaml); run without --resume")
    if not last.is_file():
        warnings.warn(f"{last} missing: the run stopped before its first epoch ended; starting it afresh",
                      stacklevel=3)
        return None
    return last


def _check_resumable(out: Path, config: dict[str, Any]) -> None:
    """A resumed run must keep the options that shape its results; say which ones differ."""
    try:
        old = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--resume: {out / 'config.yaml'} is not valid YAML ({e}); start a new run") from None
    changed = [k for k in RESUME_FIXED if old.get(k) != config.get(k)]
    if changed:
        what = "; ".join(f"{k} was {old.get(k)!r}, now {config.get(k)!r}" for k in changed)
        raise UserError(f"--resume: {what}; resume with the run's options or start a new --out")


def _write_config(out: Path, config: dict[str, Any]) -> None:
    with atomic_file(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))


def plot_learning_curve(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Train and validation loss, and validation F1 at 0.5, per epoch (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_f1 = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_f1.plot(epochs, [r["val_f1"] for r in rows], color="tab:green")
    ax_f1.set(xlabel="epoch", ylabel="F1", title="Validation F1 (threshold 0.5)", ylim=(0, 1))
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


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


def _load_net_weights(net: torch.nn.Module, ckpt: Path) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})


def _resolve_precision(precision: str | None, accelerator: str) -> str:
    """``None``/``auto``: mixed precision on a GPU; on CPU bf16-mixed where the CPU has bf16 natively
    (1.4-3.2x the chips/s of fp32 there; validation F1 moved less than between seeds: docs/performance.md),
    else 32."""
    if precision is None or precision == "auto":
        if accelerator == "cpu":
            return "bf16-mixed" if cpu_has_native_bf16() else "32"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: use one of auto, {', '.join(PRECISIONS)} (or bf16)")
    if precision == "16-mixed" and accelerator == "cpu":
        raise UserError("--precision 16-mixed: needs a GPU; on CPU use 32 or bf16-mixed")
    return precision


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


def _cpu_threads() -> int:
    """Threads for training: OMP_NUM_THREADS if the user set it, else every core this process may use."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------

def train(chips: str | Path, out: str | Path, model: str = "unet", filters: int = 16, batch_size: int = 16,
          epochs: int = 200, lr: float = 1e-3, val_fraction: float = 0.3, augment: bool = True,
          patience: int = 20, bands: Sequence[str] | None = None, loss: str = "bce",
          pos_weight: float | None = None, seed: int = 0, device: str = "auto", resume: bool = False, *,
          precision: str | None = None, progress: bool = True, max_time: str | None = None,
          model_args: dict[str, Any] | None = None, channels_last: bool = True,
          callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train a network on a chip set and write a run folder that ends with ``bundle.pt``.

    Args:
        chips: chip set folder (``slidemap sample`` or ``slidemap l4s import``).
        out: run folder to write; refused if it holds a run, unless ``resume``.
        model: ``unet`` or ``resunet``; ``filters``: maps of the first block; ``model_args``: further
            options of ``slidemap.nn.models.build_model`` (e.g. ``batch_norm``, ``dropout``).
        batch_size: chips per step (lowered, with a warning, to the training-set size).
        epochs: most epochs; ``patience``: epochs without a lower validation loss before stopping (0: off).
        lr: Adam learning rate (betas 0.9/0.999); ``val_fraction``: share of chips held out (spatially).
        augment: random symmetries of the square per sample and epoch.
        bands: band names to use, in this order (default: all bands of the chip set).
        loss: ``bce``, ``bce+dice`` or ``focal``; ``pos_weight``: weight of landslide pixels.
        seed: seed of every random choice (split, initial weights, shuffle, symmetries).
        device: ``auto``, ``cpu`` or ``cuda``; ``precision``: ``auto`` (the default: mixed on a GPU,
            bf16-mixed on a CPU with native bf16, else 32), ``32``, ``bf16-mixed`` or ``16-mixed``.
        resume: continue the run in ``out`` from ``checkpoints/last.ckpt``.
        progress: show Lightning's progress bar; ``max_time``: stop after ``DD:HH:MM:SS``.
        channels_last: NHWC memory format (faster convolutions on CPU and GPU).
        callbacks: extra Lightning callbacks (tests use one to interrupt a run).

    Returns:
        ``{"bundle": Path, "run": Path, "summary": {...printable figures...}}``.
    """
    out = Path(out)
    for name, value, ok, rule in (("--epochs", epochs, epochs >= 1, "at least 1"),
                                  ("--batch-size", batch_size, batch_size >= 1, "at least 1"),
                                  ("--lr", lr, lr > 0, "positive"), ("--patience", patience, patience >= 0,
                                                                      "0 (off) or more"),
                                  ("--seed", seed, seed >= 0, "0 or more")):
        if not ok:
            raise UserError(f"{name} {value}: must be {rule}")
    if loss not in LOSSES:
        raise UserError(f"--loss {loss}: unknown loss; use one of {', '.join(LOSSES)}")
    build_loss(loss, pos_weight)  # checks pos_weight
    accelerator = resolve_device(device).type
    precision = _resolve_precision(precision, accelerator)
    from slidemap.nn.models import build_model, check_patch_size

    chipset = ChipSet(chips)
    band_idx = chipset.band_indexes(bands)
    band_names = [chipset.bands[i] for i in band_idx]
    check_patch_size(chipset.size)
    last_ckpt = _check_run_folder(out, resume)

    split = split_chips(chipset.windows or [{} for _ in range(len(chipset))], val_fraction, seed)
    images, masks = load_chip_tensors(chipset, band_idx)
    train_idx, val_idx = split.train, split.val
    if not bool((masks[torch.as_tensor(train_idx)] == 1).any()):
        raise UserError(f"CHIPS {chipset.path}: no landslide pixel in the {len(train_idx)} training chips; "
                        f"sample with --require-landslide or from an area with landslides")
    if batch_size > len(train_idx):
        warnings.warn(f"--batch-size {batch_size} is larger than the {len(train_idx)} training chips; "
                      f"using {len(train_idx)}", stacklevel=2)
        batch_size = len(train_idx)

    config = {
        "chips": str(chipset.path.resolve()), "chips_sha256": sha256(chipset.path / "chips.json"),
        "model": model, "filters": filters, "model_args": dict(model_args or {}), "batch_size": batch_size,
        "epochs": epochs, "lr": lr, "val_fraction": val_fraction, "augment": augment, "patience": patience,
        "bands": band_names, "loss": loss, "pos_weight": pos_weight, "seed": seed, "device": accelerator,
        "precision": precision, "max_time": max_time, "split": split.as_dict(),
        "slidemap_version": __version__,
    }
    if resume:
        _check_resumable(out, config)
        (out / "bundle.pt").unlink(missing_ok=True)  # training on: the run is no longer complete
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, config)

    threads = torch.get_num_threads()
    torch.set_num_threads(_cpu_threads())
    started = time.perf_counter()
    try:
        with _quiet_lightning():
            pl.seed_everything(seed, workers=False, verbose=False)
            net = build_model(model, in_channels=len(band_names), filters=filters, **(model_args or {}))
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            task = SegmentationTask(net, images, masks, train_idx, val_idx, batch_size=batch_size,
                                    val_batch_size=max(2 * batch_size, 32), lr=lr, loss=loss,
                                    pos_weight=pos_weight, augment=augment, seed=seed,
                                    channels_last=channels_last)
            run_log = RunLog(out, len(train_idx))
            ckpt_dir = out / "checkpoints"
            checkpoint = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss",
                                                      mode="min", save_top_k=1, save_last=True,
                                                      enable_version_counter=False)
            cbs: list[pl.Callback] = [run_log, checkpoint, *callbacks]
            if patience:
                cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience,
                                                      check_on_train_epoch_end=False))
            trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=epochs, max_time=max_time,
                                 precision=PRECISIONS[precision], deterministic=True if accelerator == "cpu"
                                 else "warn", logger=False, callbacks=cbs, default_root_dir=out,
                                 num_sanity_val_steps=0, enable_model_summary=False,
                                 enable_progress_bar=progress, benchmark=False)
            with _keep_sigint():
                try:
                    trainer.fit(task, train_dataloaders=_BatchNumbers(task.train_batches),
                                val_dataloaders=_BatchNumbers(task.val_batches), ckpt_path=last_ckpt,
                                weights_only=True)
                except SystemExit:  # Lightning exits the process on Ctrl-C; an API must not
                    if not trainer.interrupted:
                        raise
        if trainer.interrupted:  # no bundle for a half-trained run; the checkpoints stay
            print(f"training interrupted; continue it with --resume --out {out}", file=sys.stderr)
            raise KeyboardInterrupt
        if not run_log.rows:
            raise UserError(f"--max-time {max_time}: no epoch finished in time; allow more time")
        seconds = time.perf_counter() - started

        best_ckpt = ckpt_dir / "best.ckpt"
        _load_net_weights(net, best_ckpt if best_ckpt.is_file() else ckpt_dir / "last.ckpt")
        prob = predict_chips(net, images, torch.as_tensor(val_idx), max(2 * batch_size, 32),
                             torch.device(accelerator))
        truth = masks[torch.as_tensor(val_idx)].numpy()
        f1_half = scores(confusion(prob >= 0.5, truth))["f1"]
        threshold, f1_best = best_threshold(prob, truth)
        if f1_best <= f1_half:  # no threshold beats 0.5 (e.g. nothing to find): keep 0.5
            threshold, f1_best = 0.5, f1_half
    finally:
        torch.set_num_threads(threads)

    rows = run_log.rows
    best = min(rows, key=lambda r: (r["val_loss"], r["epoch"]))
    train_seconds = sum(t["train_seconds"] for t in run_log.timing)
    chips_seen = len(train_idx) * len(run_log.timing)
    summary = {
        "epochs_run": len(rows), "best_epoch": best["epoch"], "best_val_loss": round(best["val_loss"], 5),
        "val_f1_at_0.5": round(f1_half, 4), "best_threshold": round(threshold, 4),
        "val_f1_at_best": round(f1_best, 4), "train_chips": int(len(train_idx)),
        "val_chips": int(len(val_idx)),
        "buffer_chips": int(split.buffer.size), "split": split.method, "seconds": round(seconds, 1),
        "chips_per_s": round(chips_seen / train_seconds, 1) if train_seconds else None,
        "device": accelerator, "precision": precision,
    }
    plot_learning_curve(rows, out / "learning_curve.png")
    meta = {
        "architecture": model, "model_args": dict(net.config), "bands": band_names,
        "stats": {b: chipset.stats[b] for b in band_names}, "patch_size": chipset.size,
        "thresholds": {"0.5": 0.5, "best": float(threshold)},
        "training": {**summary, "options": {k: v for k, v in config.items() if k != "split"},
                     "split": split.as_dict()},
    }
    bundle = save_bundle(out / "bundle.pt", net.cpu(), meta)
    return {"bundle": bundle, "run": out, "summary": summary}
