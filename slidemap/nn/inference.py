"""Running a network over rasters: the tile runner and the strip engine that blends tiles into a scene.

**The runner** (:class:`TileRunner`) runs the network on batches of standardised tiles in inference mode,
channels-last, under autocast where the precision asks for it (``slidemap.nn.device.resolve_precision``), and
returns probabilities. Whole scenes, patch sets and in-memory arrays all go through it.

**The strip engine** (:func:`iter_probability_strips`) cuts a region into strips of tiles on the networks'
16-px grid (``slidemap.raster.tiling``), reads and standardises the next strip in a reader thread while the
network runs on this one, accumulates ``prob * w`` and ``w`` per pixel with the blending weights, and yields the rows
no later tile touches. Memory depends on the region's width and the tile size, never on its height.

**Wrappers** average several views of each tile: :class:`SymmetryAverage` (test-time augmentation),
:class:`MemberAverage` (an ensemble: several networks, each standardising the raw tile by its own statistics)
and :class:`ViewSpread`, which returns the views' mean and standard deviation side by side (an uncertainty
map); they nest, and the views of nested wrappers multiply (members x symmetries).

**When is tiled == one pass?** A pixel's probability can depend on inputs up to the receptive-field
half-width R away: about 102 px for the 4-level U-Net and 40 px for the ResU-Net
(``slidemap.nn.models.receptive_field`` measures 204 and 79 px wide). A tile sees zero padding instead of
the scene beyond its edge, so its values within R of an interior tile edge may differ from a one-pass
prediction. With tiles on the 16-px grid and ``margin >= R`` every pixel takes its value (up to the
1e-6 floor) only from tiles in which it lies at least R from any interior edge, so the result equals the
one-pass prediction of the same reflection-padded region everywhere, up to float rounding: the test runs
``tile=384, overlap=256, margin=112`` and finds differences of ~1e-6. In practice the influence of far
pixels fades long before R: the defaults (overlap 32, margin 8) gave differences of at most 2e-4 (0.05/254)
for random U-Nets and ResU-Nets scaled to lively outputs and 1.6e-4 for a trained U-Net-16; raise ``--overlap``
(e.g. 256) where exact agreement matters more than speed (overlap 256 computes about 2.5x the pixels of
overlap 32 at tile 512).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import torch

from slidemap.errors import UserError
from slidemap.nn.device import AUTOCAST_DTYPE, resolve_device, resolve_precision
from slidemap.nn.normalise import Normaliser
from slidemap.raster.tiling import BATCH, OVERLAP, TILE, AxisTiling, check_tiling, reflect_index, wide_tile

ReadRows = Callable[[int, int], np.ndarray]


class TileRunner:
    """Runs the network on batches of standardised tiles and returns probabilities (sigmoid of logits).

    Inference mode and the channels-last layout the convolution kernels prefer, everywhere; autocast in
    the resolved precision (``precision`` after construction: ``32``, ``bf16`` or ``16``).
    """

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "32") -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.amp_dtype = AUTOCAST_DTYPE[self.precision]
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, h, w) float32 -> (N, h, w) float32 probabilities.

        ``batch`` may be a channels-last view (strides of an (N, h, w, C) array): torch takes it as is.
        """
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(batch, dtype=np.float32)).to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                   else contextlib.nullcontext())
            with amp:
                logits = self.net(x)
            if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape[2:] != x.shape[2:]:
                raise RuntimeError(f"network output {tuple(logits.shape)} for input {tuple(x.shape)}: "
                                   f"expected one logit channel at the input size")
            return torch.sigmoid(logits[:, 0].float()).cpu().numpy()


class _Wrapper:
    """A runner around runners: it reports the device, precision and engine of the (first) runner it wraps."""

    def _describe_as(self, runner: Callable[[np.ndarray], np.ndarray]) -> None:
        self.device = getattr(runner, "device", "cpu")
        self.precision = getattr(runner, "precision", "32")
        self.engine = getattr(runner, "engine", "torch")


class SymmetryAverage(_Wrapper):
    """A runner whose probabilities are the mean over symmetries of the square (test-time augmentation).

    Each batch is seen ``symmetries`` times: as it is (1), also mirrored (2), in its four rotations (4) or in
    all eight symmetries (8), the same group training augments with (``slidemap.nn.augment``); each
    probability map is turned back before averaging. It costs that many network passes.
    """

    CHOICES = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}

    def __init__(self, runner: Callable[[np.ndarray], np.ndarray], symmetries: int) -> None:
        if symmetries not in self.CHOICES:
            raise ValueError(f"symmetries {symmetries}: use 1, 2, 4 or 8")
        self.runner, self.symmetries = runner, self.CHOICES[symmetries]
        self._describe_as(runner)
        self.takes_raw = getattr(runner, "takes_raw", False)  # a symmetry commutes with per-pixel standardising
        self.views = len(self.symmetries) * getattr(runner, "views", 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, h, w) standardised -> (N, h, w) probabilities averaged over the symmetries."""
        return mean_of(self.each(batch))

    def each(self, batch: np.ndarray) -> list[np.ndarray]:
        """The (N, h, w) probabilities of every view, each turned back to the batch's orientation."""
        out = []
        for s in self.symmetries:
            x = np.flip(batch, axis=-1) if s >= 4 else batch
            x = np.rot90(x, s % 4, axes=(-2, -1))
            for view in views_of(self.runner, np.ascontiguousarray(x)):
                prob = np.rot90(view, -(s % 4), axes=(-2, -1))
                out.append(np.flip(prob, axis=-1) if s >= 4 else prob)
        return out


class MemberAverage(_Wrapper):
    """An ensemble: the mean of several networks' probabilities, each given the tile standardised its own way.

    Members trained on different chip sets carry different normalisers: given ``normalisers`` (one per member),
    the ensemble takes *raw* tiles (``takes_raw``: NaN kept for nodata) and standardises a copy for each member,
    which turns nodata into that member's training mean as a single model's prediction does. Without them the
    tiles come standardised already, the same for every member (members that standardise each input with its
    own statistics).
    """

    def __init__(self, runners: Sequence[Callable[[np.ndarray], np.ndarray]],
                 normalisers: Sequence[Normaliser] | None = None) -> None:
        if len(runners) < 2 or (normalisers is not None and len(normalisers) != len(runners)):
            raise ValueError("an ensemble needs at least two members, and one normaliser each if any")
        self.runners, self.normalisers = list(runners), normalisers
        self.takes_raw = normalisers is not None
        self._describe_as(runners[0])
        self.views = sum(getattr(r, "views", 1) for r in self.runners)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, h, w) raw (NaN = nodata) or standardised -> (N, h, w) probabilities averaged over the members."""
        return mean_of(self.each(batch))

    def each(self, batch: np.ndarray) -> list[np.ndarray]:
        """The (N, h, w) probabilities of every member (and of every view a member averages)."""
        out: list[np.ndarray] = []
        for i, runner in enumerate(self.runners):
            x = batch if self.normalisers is None else \
                self.normalisers[i](np.array(batch, dtype=np.float32, copy=True))
            out += views_of(runner, x)
        return out


class ViewSpread(_Wrapper):
    """(N, C, h, w) -> (N, 2, h, w): the mean of a wrapper's views (its probability) and their standard deviation.

    The spread is the population standard deviation over every view (members x symmetries) of a tile: 0 where
    they agree, at most 0.5. The strip engine blends both layers with the same weights (``layers``).
    """

    layers = 2

    def __init__(self, runner: Callable[[np.ndarray], np.ndarray]) -> None:
        self.runner = runner
        self._describe_as(runner)
        self.takes_raw, self.views = getattr(runner, "takes_raw", False), getattr(runner, "views", 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, h, w) -> (N, 2, h, w): the views' mean (the probability) and standard deviation."""
        views = views_of(self.runner, batch)
        mean = mean_of(views)
        # from the very mean the probability layer holds, so identical views give exactly 0
        spread = np.sqrt(mean_of([np.square(v - mean) for v in views]))
        return np.stack([mean, spread], axis=1)


def views_of(runner: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> list[np.ndarray]:
    """The views a runner averages (one for a plain network)."""
    each = getattr(runner, "each", None)
    return each(batch) if each is not None else [runner(batch)]


def mean_of(views: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of (N, h, w) views in float32, summed in order (the same views give the same bits)."""
    total = views[0].astype(np.float32)
    for v in views[1:]:
        total = total + v
    return total / np.float32(len(views))


# --- the strip engine --------------------------------------------------------------------------------

def iter_probability_strips(runner: Callable[[np.ndarray], np.ndarray], read_rows: ReadRows, height: int,
                            width: int, tile: int = TILE, overlap: int = OVERLAP, margin: int | None = None,
                            batch_size: int = BATCH, normalise: Callable[[np.ndarray], np.ndarray] | None = None,
                            ) -> Generator[tuple[int, np.ndarray, np.ndarray], None, None]:
    """Predict a region strip by strip; yields ``(row0, prob, valid)`` for consecutive finished rows.

    ``read_rows(r0, r1)`` returns the raw (C, r1 - r0, width) float32 pixels of region rows r0..r1 (NaN
    = nodata). ``prob`` is (h, width) float32 (not yet masked); ``valid`` is False where any band is NaN.
    A runner with ``layers`` L > 1 (:class:`ViewSpread`) returns (N, L, h, w), and ``prob`` is (L, h, width),
    each layer blended alike. A runner that ``takes_raw`` (an ensemble) standardises itself: it gets the raw
    pixels, NaN kept, and ``normalise`` is not applied.
    """
    margin = check_tiling(tile, overlap, margin)
    if getattr(runner, "takes_raw", False):
        normalise = _keep_raw
    rows = AxisTiling.plan(height, tile, overlap)
    cols = AxisTiling.plan(width, wide_tile(tile, overlap, batch_size), overlap)
    th = rows.tile
    row_src, col_src = reflect_index(height, rows.padded), reflect_index(width, cols.padded)
    wx = [cols.weights(j, overlap, margin) for j in range(len(cols.offsets))]
    layers = getattr(runner, "layers", 1)
    num = np.zeros((th, cols.padded) if layers == 1 else (layers, th, cols.padded), dtype=np.float32)
    den = np.zeros((th, cols.padded), dtype=np.float32)

    def load_strip(r: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, pad and standardise one strip; runs in the reader thread (GDAL and numpy drop the GIL)."""
        src = row_src[r:r + th]
        lo, hi = int(src.min()), int(src.max()) + 1
        raw = read_rows(lo, hi)
        if hi - lo != th or (src[0] != lo):
            raw = raw[:, src - lo]
        if cols.padded != width:
            raw = raw[:, :, col_src]
        raw = np.asarray(raw, dtype=np.float32)
        valid = cast(np.ndarray, np.isfinite(raw[:, :, :width]).all(axis=0))
        x = raw if raw.flags.writeable else raw.copy()
        x = normalise(x) if normalise is not None else np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0,
                                                                     neginf=0.0)
        # Pixel-interleaved (H, W, C), so a batch of tiles is stacked straight into the channels-last
        # layout the network runs in (one copy instead of two on the network's thread).
        return np.ascontiguousarray(x.transpose(1, 2, 0)), valid

    # The next strip is read while the network runs on this one (GDAL and numpy release the GIL); leaving
    # the block waits for a read under way, so no read outlives the file it reads.
    with ThreadPoolExecutor(1, thread_name_prefix="slidemap-read") as reader:
        pending = reader.submit(load_strip, rows.offsets[0])
        for i, r in enumerate(rows.offsets):
            x, valid = pending.result()
            if i + 1 < len(rows.offsets):
                pending = reader.submit(load_strip, rows.offsets[i + 1])
            yield from _blend_strip(runner, x, valid, i, r, rows, cols, wx, num, den, overlap, margin,
                                    height, width)


def _blend_strip(runner: Callable[[np.ndarray], np.ndarray], x: np.ndarray, valid: np.ndarray, i: int, r: int,
                 rows: AxisTiling, cols: AxisTiling, wx: list[np.ndarray], num: np.ndarray, den: np.ndarray,
                 overlap: int, margin: int, height: int,
                 width: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Predict strip ``i`` into the running sums; yield its finished rows, carry the rest.

    The strip starts at row ``r``; ``x`` holds its (H, W, C) standardised pixels.
    """
    th, tw = rows.tile, cols.tile
    wy = rows.weights(i, overlap, margin)
    for j, c in enumerate(cols.offsets):
        prob = runner(x[None, :, c:c + tw].transpose(0, 3, 1, 2))[0]
        w = wy[:, None] * wx[j][None, :]
        num[..., c:c + tw] += prob * w  # (h, w), or (layers, h, w) for a runner with layers
        den[:, c:c + tw] += w
    nxt = rows.offsets[i + 1] if i + 1 < len(rows.offsets) else rows.padded
    done = min(nxt, height) - r
    if done > 0:
        yield r, num[..., :done, :width] / den[:done, :width], valid[:done]
    shift = nxt - r
    if shift < th:
        num[..., :th - shift, :] = num[..., shift:, :]
        den[:th - shift] = den[shift:]
    num[..., max(th - shift, 0):, :] = 0
    den[max(th - shift, 0):] = 0


def _keep_raw(x: np.ndarray) -> np.ndarray:
    return x


def predict_array(model: torch.nn.Module | Callable[[np.ndarray], np.ndarray], array: np.ndarray,
                  tile: int = TILE, overlap: int = OVERLAP, margin: int | None = None, batch_size: int = BATCH,
                  device: str | torch.device = "cpu", normalise: Normaliser | None = None) -> np.ndarray:
    """Tiled, blended probability of an in-memory (C, H, W) array; NaN where any band is NaN.

    The same engine as :func:`predict` (which streams from disk). ``normalise`` (the bundle's normaliser;
    omit for an array already standardised) standardises per band. ``tile >= max(H, W)`` (rounded up to 16)
    gives the one-pass prediction.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise UserError(f"array of shape {array.shape}: expected (bands, height, width)")
    runner = TileRunner(model, device) if isinstance(model, torch.nn.Module) else model
    _, h, w = array.shape
    out = np.empty((h, w), dtype=np.float32)
    for r0, prob, valid in iter_probability_strips(runner, lambda a, b: array[:, a:b].copy(), h, w, tile,
                                                   overlap, margin, batch_size, normalise):
        out[r0:r0 + len(prob)] = np.where(valid, prob, np.nan)
    return out
