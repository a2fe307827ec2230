"""Training with Lightning: the task that trains a network on chips held in memory.

The task trains on chips held in memory as one tensor (no DataLoader workers): Lightning iterates batch
numbers and the task maps them to chips. Every random draw of an epoch (shuffle, symmetries, dropout) comes
from generators seeded by (seed, epoch), which the checkpoint fixes through its epoch, so a resumed run ends
with the weights of an uninterrupted one. Nodata pixels (mask 255) weigh 0 in the loss and count nowhere in
the validation metrics. The loop around it (run log, checkpoints, ``fit``) is ``slidemap.nn.fitting``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from slidemap.nn.augment import apply_photometric, apply_symmetries, draw_photometric, draw_symmetries
from slidemap.nn.losses import build_loss
from slidemap.raster.metrics import Counts, scores


def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one epoch (0: shuffle, 1: symmetries, 2: torch global, 3: photometric)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for ``stream`` of ``epoch``: the same draws whether the run was resumed or not."""
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))


class BatchNumbers:
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
                 channels_last: bool, photometric: torch.Tensor | None = None, lr_schedule: str = "constant",
                 warmup_epochs: int = 0, stop_smoothing: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.images, self.masks = images, masks
        self.train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        self.val_idx = torch.as_tensor(val_idx, dtype=torch.long)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.lr, self.augment, self.seed = lr, augment, seed
        self.loss_fn = build_loss(loss, pos_weight)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._epoch_plan: tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None
        self.train_acc = torch.zeros(2, dtype=torch.float64)
        self.val_acc = torch.zeros(6, dtype=torch.float64)
        self.epoch_result: dict[str, float] = {}
        self.epoch_lr = lr
        self.photometric = photometric  # each band's mean / std (augment.apply_photometric), None: off
        self.lr_schedule, self.warmup_epochs, self.stop_smoothing = lr_schedule, warmup_epochs, stop_smoothing
        self.smoothed_val_loss: float | None = None

    @property
    def train_batches(self) -> int:
        """Training batches per epoch (the last one may be short)."""
        return math.ceil(len(self.train_idx) / self.batch_size)

    @property
    def val_batches(self) -> int:
        """Validation batches per epoch (the last one may be short)."""
        return math.ceil(len(self.val_idx) / self.val_batch_size)

    def configure_optimizers(self) -> Any:
        """Adam at ``lr``, betas (0.9, 0.999), with the fused kernel; optionally a cosine schedule with warm-up.

        ``cosine``: the rate rises linearly over ``warmup_epochs`` and then falls along a half cosine towards 0 at
        the last epoch (``max_epochs``); ``constant`` keeps ``lr``. Either way per epoch, so a resumed run continues
        on the same curve.
        """
        # The fused kernel updates every parameter in one pass (+5 % per step at 128 px, docs/performance.md);
        # it is deterministic like the default one.
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.999), fused=True)
        if self.lr_schedule == "constant" and not self.warmup_epochs:
            return optimizer
        total = max(1, int(self.trainer.max_epochs or 1))
        warmup, cosine = self.warmup_epochs, self.lr_schedule == "cosine"

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            if not cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (the steps call ``net`` directly)."""
        return self.net(x)

    def _to_device(self) -> None:
        if self.images.device != self.device:
            self.images, self.masks = self.images.to(self.device), self.masks.to(self.device)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Chip order, symmetries and photometric draws of ``epoch``, from generators seeded by (seed, epoch)."""
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            shuffle = epoch_generator(self.seed, epoch, 0)
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=shuffle)]
            syms = draw_symmetries(len(order), epoch_generator(self.seed, epoch, 1)) if self.augment else None
            photo = (draw_photometric(len(order), self.images.shape[1], epoch_generator(self.seed, epoch, 3))
                     if self.photometric is not None else None)
            self._epoch_plan = (epoch, order, syms, photo)
        return self._epoch_plan[1], self._epoch_plan[2], self._epoch_plan[3]

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._to_device()
        idx = idx.to(self.device)
        return self.images[idx], self.masks[idx]

    def on_train_epoch_start(self) -> None:
        """Seed torch's global stream from (seed, epoch), so a resumed run draws the same dropout; zero the sums."""
        torch.manual_seed(_stream_seed(self.seed, self.current_epoch, 2))  # dropout and the like
        self.epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])  # the rate this epoch trains at
        self.train_acc = torch.zeros(2, dtype=torch.float64, device=self.device)

    def training_step(self, batch: int, batch_idx: int) -> torch.Tensor:
        """Masked loss of batch number ``batch`` of this epoch's plan, with its symmetries applied."""
        order, syms, photo = self._plan(self.current_epoch)
        sl = slice(int(batch) * self.batch_size, (int(batch) + 1) * self.batch_size)
        x, y = self._batch(order[sl])
        if photo is not None and self.photometric is not None:
            x = apply_photometric(x, photo[sl], self.photometric)
        if syms is not None:
            x, y = apply_symmetries(x, y, syms[sl])
        logits = self.net(x.contiguous(memory_format=self.memory_format))
        loss = self.loss_fn(logits, y)
        valid = (y != 255).sum()
        self.train_acc += torch.stack([loss.detach().double() * valid, valid.double()])
        # the step's loss is logged for the progress bar alone (metrics.csv pools train_acc)
        if self.trainer.progress_bar_callback is not None:
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
            "val_iou": s["iou"], "lr": self.epoch_lr,
        }
        self.log("val_loss", val_loss, prog_bar=True)
        self.log("val_f1", s["f1"], prog_bar=True)
        # what early stopping watches: the validation loss, or its exponential moving average, which a small
        # validation set's noise does not end a run on
        self.smoothed_val_loss = smoothed(self.smoothed_val_loss, val_loss, self.stop_smoothing)
        self.log("val_loss_smoothed", self.smoothed_val_loss)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the smoothed validation loss, so that a resumed run's early stopping sees the same curve."""
        checkpoint["smoothed_val_loss"] = self.smoothed_val_loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take back the smoothed validation loss of the checkpoint a run resumes from."""
        self.smoothed_val_loss = checkpoint.get("smoothed_val_loss")


def smoothed(previous: float | None, value: float, factor: float) -> float:
    """The exponential moving average ``factor * previous + (1 - factor) * value`` (``value`` when it starts)."""
    return value if previous is None or not factor else factor * previous + (1 - factor) * value


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


# --- chips as standardised tensors -------------------------------------------------------------------

def load_chip_tensors(chipsets: Sequence[Any], bands: Sequence[str], normalise: Any,
                      chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of several chip sets, one after the other.

    Images (N, C, S, S) float32 are standardised by ``normalise`` (NaN -> 0), or by ``normalise[i]`` for chip set
    ``i`` when it is a sequence; masks (N, S, S) uint8 hold 255 wherever the mask or any selected band is nodata.

    Read in chunks from the memory-mapped stores, so peak memory is the result plus one chunk.
    """
    n, size = sum(len(c) for c in chipsets), chipsets[0].size
    images = torch.empty((n, len(bands), size, size), dtype=torch.float32)
    masks = torch.empty((n, size, size), dtype=torch.uint8)
    offset = 0
    per_chipset = normalise if isinstance(normalise, Sequence) else [normalise] * len(chipsets)
    for chipset, standardise in zip(chipsets, per_chipset, strict=True):
        idx = chipset.band_indexes(bands)
        for start in range(0, len(chipset), chunk):
            stop = min(len(chipset), start + chunk)
            raw = np.asarray(chipset.images[start:stop][:, idx], dtype=np.float32)
            nodata = np.isnan(raw).any(axis=1)
            images[offset + start:offset + stop] = torch.from_numpy(standardise(raw))
            m = np.array(chipset.masks[start:stop], dtype=np.uint8)
            m[nodata] = 255
            masks[offset + start:offset + stop] = torch.from_numpy(m)
        offset += len(chipset)
    return images, masks
