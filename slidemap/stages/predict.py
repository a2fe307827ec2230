"""Whole-scene prediction: tiled, blended, streamed to disk (``slidemap predict``).

**Tiling.** The region is cut into strips of tiles that overlap by ``overlap`` px. A network pass takes
one tile ``tile`` px high and ``batch_size`` tiles wide (`wide_tile`): the pixels of a batch, without
computing the overlaps between its tiles twice. Along each axis the fewest tiles that fit are shrunk
evenly so the last one is not mostly overlap (`AxisTiling.plan`); with the defaults the network
computes 1.18x the pixels of a 10,000² scene instead of 1.39x. Every tile offset is a multiple of 16:
the networks pool four times, so only tiles aligned to the same 16-px grid as a one-pass prediction
compute the same pooled features. That is why ``tile`` and the stride ``tile - overlap`` must be
multiples of 16 (tile sizes and strides then stay multiples of 16 when shrunk), and why a region whose
size is not a multiple of 16 is padded by reflection at its bottom/right edge to one (and cropped back):
the last tile then still starts on the grid. A region smaller than a tile is one reflection-padded tile.

**Blending.** Each tile's probabilities are accumulated as ``prob * w`` and ``w`` and divided at the
end. ``w`` is the outer product of two 1-D windows that are flat in the middle, rise as ``sin²`` across
the middle of the overlap, and sit at a tiny floor (1e-6, only to keep ``w > 0``) in the outer
``margin`` px next to a tile edge (default ``overlap // 4``). Tile sides that lie on the region border
are not tapered at all, since no other tile covers them. In a regular overlap the two ramps add up to 1.

**When is tiled == one pass?** A pixel's probability can depend on inputs up to the receptive-field
half-width R away: about 102 px for the 4-level U-Net and 40 px for the ResU-Net
(``slidemap.nn.models.receptive_field`` measures 204 and 79 px wide). A tile sees zero padding instead of
the scene beyond its edge, so its values within R of an interior tile edge may differ from a one-pass
prediction. With tiles on the 16-px grid and ``margin >= R`` every pixel takes its value (up to the
1e-6 floor) only from tiles in which it lies at least R from any interior edge, so the result equals
the one-pass prediction of the same reflection-padded region everywhere, whatever the weights, up to
float rounding: the test runs ``tile=384, overlap=256, margin=112`` and finds differences of ~1e-6.
In practice the influence of far pixels fades long before R: for random networks whose probabilities
span 0-1, a tile's own error is ~1 at its edge, 2e-3 at 8 px, 6e-5 at 16 px. So the defaults
(overlap 64, margin 16) gave differences below 2e-5 in that measurement, against 3e-3 with margin 0;
trained networks can reach further, so raise ``--overlap`` (e.g. 256) where exact agreement matters
more than speed (overlap 256 costs 3x the compute of 64 at tile 512).

**Streaming.** One row of tiles is one strip: its rows are read from ``stack.tif`` (only the
bundle's bands, selected by name), standardised with the bundle's statistics (NaN -> 0 afterwards),
predicted tile by tile, and accumulated in a strip-sized buffer; rows no later tile touches are
finished and written, the overlapping rows are carried to the next strip. Memory depends on the
region's width and the tile size, never on its height; peak RSS for 10,000² x 7 bands stays well
under 2 GiB (``bench/bench_predict.py``).

**Threads.** The network keeps the main thread (torch runs its own threads inside). A reader thread
reads and standardises the next strip while the network runs on this one, and a writer thread labels
and writes finished strips (at most two waiting) in order; in the second pass a tracer thread reads
and polygonises the next block of rows while the main thread dissolves and writes the current one.
GDAL's reads, writes and polygonising and numpy's array work release the GIL, so these overlap the
network; every output is written in the same order and is byte-identical to a single-threaded run.

**Outputs** (built in a temporary sibling of ``out`` and renamed when complete):
``probability.tif`` (uint8 ``round(p * 254)``, 255 = nodata; float32 with NaN nodata under
``--float``), ``mask.tif`` (uint8 1/0, 255 = nodata), both on the input's grid (or the area's window),
tiled, deflate-compressed, with overviews; ``landslides.gpkg`` (one polygon per 4-connected landslide,
columns id, area_m2, mean_probability; see :mod:`slidemap.raster.polygons`); ``prediction.json``. Landslides
smaller than ``--min-area`` are removed from both the polygons and ``mask.tif`` so the two always
agree; ``probability.tif`` keeps the raw probabilities. Nodata (NaN in any used band, 255 in the
scene's mask, or outside ``--area``) is 255 / NaN in the rasters and never part of a landslide.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.files import atomic_dir, write_json
from slidemap.nn.bundle import Bundle, load_bundle
from slidemap.nn.device import cpu_has_native_bf16, resolve_device
from slidemap.progress import bar
from slidemap.raster.geo import gtiff_profile, open_raster, row_pixel_areas_m2
from slidemap.raster.polygons import ComponentLabeler, LandslideWriter, gc_paused, polygon_pieces

PREDICTION_FORMAT = "slidemap.prediction"
PREDICTION_FORMAT_VERSION = 1
NETWORK_STRIDE = 16  # 2**4: four 2x down-samplings in both networks
MIN_TILE = 2 * NETWORK_STRIDE  # the U-Net's bottleneck must be at least 2x2
WEIGHT_FLOOR = 1e-6
PROB_NODATA_U8 = 255
MASK_NODATA = 255
TERRAIN_LAYERS = ("dem", "slope", "aspect", "hillshade")
PRECISIONS = ("auto", "32", "bf16")
"""CPU inference precisions (a GPU always runs mixed precision); ``auto``: bf16 where the CPU has it
natively (`slidemap.nn.device.cpu_has_native_bf16`), else fp32."""
OVERVIEW_FACTORS = (2, 4, 8, 16, 32, 64)
GDAL_CACHE_MB = 256  # GDAL's default, 5 % of RAM, would hold ~1 GiB of decoded blocks of a large scene

ReadRows = Callable[[int, int], np.ndarray]


class PredictWarning(UserWarning):
    """Something the user should know about an input that prediction could still use."""


# --- tiling geometry ---------------------------------------------------------------------------------

def _ceil_to(n: int, k: int) -> int:
    return -(-n // k) * k


@dataclass(frozen=True)
class AxisTiling:
    """Tile offsets along one axis of a region ``length`` px long (reflection-padded to ``padded``)."""

    length: int
    tile: int
    padded: int
    offsets: tuple[int, ...]

    @classmethod
    def plan(cls, length: int, tile: int, overlap: int) -> AxisTiling:
        """The fewest tiles of at most ``tile`` px that cover the region with ``overlap``, shrunk to even
        out the last one's excess; offsets every ``size - overlap`` px, the last one flush with the end.

        Shrinking matters: 10,000 px in tiles of 512 needs 23 tiles; at 512 px they would compute
        11,776 px, at the 496 px chosen here 11,408 (sizes and offsets stay multiples of 16).
        """
        padded = max(_ceil_to(length, NETWORK_STRIDE), MIN_TILE)
        if padded <= tile:
            return cls(length, padded, padded, (0,))
        n = -(-(padded - overlap) // (tile - overlap))
        size = min(tile, _ceil_to(-(-(padded - overlap) // n) + overlap, NETWORK_STRIDE))
        offsets = [k * (size - overlap) for k in range(n - 1)] + [padded - size]
        return cls(length, size, padded, tuple(sorted(set(offsets))))

    def weights(self, index: int, overlap: int, margin: int) -> np.ndarray:
        """1-D blending window of tile ``index``: tapered only on sides shared with another tile."""
        d = np.arange(self.tile, dtype=np.float64) + 0.5
        w = np.ones(self.tile)
        if index > 0:
            w *= _ramp(d, overlap, margin)
        if index < len(self.offsets) - 1:
            w *= _ramp(d[::-1], overlap, margin)
        return w.astype(np.float32)


def _ramp(distance: np.ndarray, overlap: int, margin: int) -> np.ndarray:
    """Weight by distance to a shared tile edge: floor within ``margin``, sin² up to ``overlap - margin``."""
    if overlap <= 0:
        return np.ones_like(distance)
    width = max(overlap - 2 * margin, 1)
    t = np.clip((distance - margin) / width, 0.0, 1.0)
    return WEIGHT_FLOOR + (1 - WEIGHT_FLOOR) * np.sin(np.pi / 2 * t) ** 2


def wide_tile(tile: int, overlap: int, batch_size: int) -> int:
    """Width of one network pass: ``batch_size`` tiles side by side, run as one wide tile, so the
    overlaps between them are computed once (the pixels per pass, hence the memory, stay the same)."""
    return tile + (batch_size - 1) * (tile - overlap)


def check_tiling(tile: int, overlap: int, margin: int | None = None) -> int:
    """Validate tile/overlap for the networks' 16-px grid; returns the blending margin to use."""
    if tile < MIN_TILE or tile % NETWORK_STRIDE:
        raise UserError(f"--tile {tile}: must be a multiple of {NETWORK_STRIDE} and at least {MIN_TILE} (the "
                        f"networks halve the image 4 times), e.g. 256 or 512")
    if overlap < 0 or overlap >= tile or (tile - overlap) % NETWORK_STRIDE:
        raise UserError(f"--overlap {overlap}: must be in [0, {tile}) with --tile minus --overlap a multiple "
                        f"of {NETWORK_STRIDE} so tiles stay on the networks' pooling grid, e.g. 64")
    margin = overlap // 4 if margin is None else margin
    if overlap and not 0 <= margin < overlap / 2:
        raise UserError(f"margin {margin}: must be in [0, overlap/2 = {overlap / 2:g})")
    return margin


def _reflect_index(length: int, padded: int) -> np.ndarray:
    """Source index of each padded position: identity, then reflection beyond ``length`` (as np.pad)."""
    idx = np.arange(length)
    if padded == length:
        return idx
    return np.pad(idx, (0, padded - length), mode="reflect" if length > 1 else "edge")


# --- the network -------------------------------------------------------------------------------------

class TileRunner:
    """Runs the network on batches of standardised tiles and returns probabilities (sigmoid of logits).

    On CUDA it uses autocast (bf16 where supported, else fp16); everywhere inference mode and the
    channels-last layout that the convolution kernels prefer. On CPU ``precision="bf16"`` runs the
    network under bf16 autocast: 1.6x the end-to-end throughput of fp32 on a CPU with avx512_bf16,
    probabilities within ~1e-3 of fp32 (docs/performance.md); ``"auto"`` picks it where the CPU has bf16
    natively. ``precision`` after construction names what runs: ``32``, ``bf16`` or ``cuda-mixed``.
    """

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "32"):
        if precision not in PRECISIONS:
            raise UserError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.precision = "cuda-mixed"
        else:
            if precision == "auto":
                precision = "bf16" if cpu_has_native_bf16() else "32"
            self.amp_dtype = torch.bfloat16 if precision == "bf16" else None
            self.precision = precision

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


# --- the strip engine --------------------------------------------------------------------------------

def standardise(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """In place: ``(x - mean) / std`` per band, then NaN/inf -> 0 (the standardised mean)."""
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    if std is not None:
        s = np.asarray(std, dtype=np.float32)
        x /= np.where(s > 0, s, 1.0).astype(np.float32)[:, None, None]
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def iter_probability_strips(runner: Callable[[np.ndarray], np.ndarray], read_rows: ReadRows, height: int,
                            width: int, tile: int = 512, overlap: int = 64, margin: int | None = None,
                            batch_size: int = 4, mean: np.ndarray | None = None,
                            std: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Predict a region strip by strip; yields ``(row0, prob, valid)`` for consecutive finished rows.

    ``read_rows(r0, r1)`` returns the raw (C, r1 - r0, width) float32 pixels of region rows r0..r1 (NaN
    = nodata). ``prob`` is (h, width) float32 (not yet masked); ``valid`` is False where any band is NaN.
    """
    margin = check_tiling(tile, overlap, margin)
    rows = AxisTiling.plan(height, tile, overlap)
    cols = AxisTiling.plan(width, wide_tile(tile, overlap, batch_size), overlap)
    th = rows.tile
    row_src, col_src = _reflect_index(height, rows.padded), _reflect_index(width, cols.padded)
    wx = [cols.weights(j, overlap, margin) for j in range(len(cols.offsets))]
    num = np.zeros((th, cols.padded), dtype=np.float32)
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
        valid = np.isfinite(raw[:, :, :width]).all(axis=0)
        x = standardise(raw if raw.flags.writeable else raw.copy(), mean, std)
        # Pixel-interleaved (H, W, C), so a batch of tiles is stacked straight into the channels-last
        # layout the network runs in (one copy instead of two on the network's thread).
        return np.ascontiguousarray(x.transpose(1, 2, 0)), valid

    # The next strip is read while the network runs on this one, so reading costs no wall time.
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
    """Predict strip ``i`` (at row ``r``; ``x`` its (H, W, C) standardised pixels) into the running sums;
    yield its finished rows, carry the rest."""
    th, tw = rows.tile, cols.tile
    wy = rows.weights(i, overlap, margin)
    for j, c in enumerate(cols.offsets):
        prob = runner(x[None, :, c:c + tw].transpose(0, 3, 1, 2))[0]
        w = wy[:, None] * wx[j][None, :]
        num[:, c:c + tw] += prob * w
        den[:, c:c + tw] += w
    nxt = rows.offsets[i + 1] if i + 1 < len(rows.offsets) else rows.padded
    done = min(nxt, height) - r
    if done > 0:
        yield r, num[:done, :width] / den[:done, :width], valid[:done]
    shift = nxt - r
    if shift < th:
        num[:th - shift] = num[shift:]
        den[:th - shift] = den[shift:]
    num[max(th - shift, 0):] = 0
    den[max(th - shift, 0):] = 0


def predict_array(model: torch.nn.Module | Callable[[np.ndarray], np.ndarray], array: np.ndarray,
                  tile: int = 512, overlap: int = 64, margin: int | None = None, batch_size: int = 4,
                  device: str | torch.device = "cpu", mean: np.ndarray | None = None,
                  std: np.ndarray | None = None) -> np.ndarray:
    """Tiled, blended probability of an in-memory (C, H, W) array; NaN where any band is NaN.

    The same engine as :func:`predict` (which streams from disk). ``mean``/``std`` standardise per band
    (the bundle's statistics; omit for an array already standardised). ``tile >= max(H, W)`` (rounded
    up to 16) gives the one-pass prediction.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise UserError(f"array of shape {array.shape}: expected (bands, height, width)")
    runner = TileRunner(model, device) if isinstance(model, torch.nn.Module) else model
    _, h, w = array.shape
    out = np.empty((h, w), dtype=np.float32)
    for r0, prob, valid in iter_probability_strips(runner, lambda a, b: array[:, a:b].copy(), h, w, tile,
                                                   overlap, margin, batch_size, mean, std):
        out[r0:r0 + len(prob)] = np.where(valid, prob, np.nan)
    return out


# --- inputs ------------------------------------------------------------------------------------------

def bundle_terrain(bundle: Bundle) -> list[str]:
    """The bundle's bands that prepare derives from a DEM (dem, slope, aspect, hillshade)."""
    return [b for b in bundle.bands if b in TERRAIN_LAYERS]


def bundle_image_bands(bundle: Bundle) -> list[str]:
    """The bundle's bands that come from the images, in order."""
    return [b for b in bundle.bands if b not in TERRAIN_LAYERS]


def bundle_stats(bundle: Bundle, model_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std the network was trained with, in the bundle's band order."""
    stats = bundle.meta.get("stats") or {}
    missing = [b for b in bundle.bands if "mean" not in stats.get(b, {}) or "std" not in stats.get(b, {})]
    if missing:
        raise UserError(f"MODEL {model_name}: the bundle holds no normalisation statistics for band(s) "
                        f"{', '.join(missing)}; train it again with this slidemap")
    return (np.array([stats[b]["mean"] for b in bundle.bands], dtype=np.float32),
            np.array([stats[b]["std"] for b in bundle.bands], dtype=np.float32))


def match_bands(bundle_bands: list[str], have: list[str], where: str, model: str) -> list[int]:
    """1-based indexes in ``have`` of the bundle's bands, in the bundle's order; a mismatch is a UserError."""
    missing = [b for b in bundle_bands if b not in have]
    if missing:
        extra = [b for b in have if b not in bundle_bands]
        raise UserError(f"{where}: lacks band(s) {', '.join(missing)} that model {model} needs (it has "
                        f"{', '.join(extra) or 'no others'} besides); give an input with bands "
                        f"{', '.join(bundle_bands)}")
    return [have.index(b) + 1 for b in bundle_bands]


def _prepare_images(bundle: Bundle, model_name: str, images: list[Path], dem: Path | None, folder: Path):
    """Prepare bare images (+ DEM) into a scene in ``folder`` exactly as at training time."""
    from slidemap.stages.prepare import prepare_scene

    image_bands, terrain = bundle_image_bands(bundle), bundle_terrain(bundle)
    n = 0
    for p in images:
        with open_raster(p, "--image") as ds:
            n += ds.count
    if n != len(image_bands):
        raise UserError(f"--image: the images hold {n} band(s) but model {model_name} expects "
                        f"{len(image_bands)} image band(s) ({', '.join(image_bands)}), in that order")
    if terrain and dem is None:
        raise UserError(f"--dem: model {model_name} uses terrain layer(s) {', '.join(terrain)}; give the DEM")
    if dem is not None and not terrain:
        warnings.warn(f"--dem {dem}: model {model_name} uses no terrain layer; the DEM is not used",
                      PredictWarning, stacklevel=3)
    return prepare_scene(list(images), folder, dem=dem if terrain else None, terrain=terrain,
                         band_names=image_bands)


def _area_window(scene, name: str) -> tuple[Window, list]:
    """The pixel window (rounded outwards, clipped to the scene) of area ``name``'s bounding box."""
    from rasterio.windows import from_bounds

    scene.area(name)
    gdf = scene.area_geometries()
    geoms = list(gdf.loc[gdf["name"] == name].geometry)
    if not geoms:
        raise UserError(f"--area {name}: has no geometry in {scene.areas_path}; prepare the scene again")
    bounds = gdf.loc[gdf["name"] == name].total_bounds
    win = from_bounds(*bounds, transform=scene.transform)
    r0, c0 = max(math.floor(win.row_off + 1e-9), 0), max(math.floor(win.col_off + 1e-9), 0)
    r1 = min(math.ceil(win.row_off + win.height - 1e-9), scene.height)
    c1 = min(math.ceil(win.col_off + win.width - 1e-9), scene.width)
    if r1 <= r0 or c1 <= c0:
        raise UserError(f"--area {name}: does not overlap the scene {scene.path}")
    return Window(c0, r0, c1 - c0, r1 - r0), geoms


# --- outputs -----------------------------------------------------------------------------------------

class _RowWriter:
    """Writes consecutive rows to band 1, buffered to whole block rows so no compressed block is
    written twice (rewritten blocks would bloat a compressed GeoTIFF)."""

    def __init__(self, ds, block: int = 256):
        self.ds, self.block, self.next_row, self.pending = ds, block, 0, []

    def write(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        n = sum(len(p) for p in self.pending)
        full = (n // self.block) * self.block
        if full:
            self._flush(full)

    def close(self) -> None:
        n = sum(len(p) for p in self.pending)
        if n:
            self._flush(n)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.ds.write(data[:n], 1, window=Window(0, self.next_row, data.shape[1], n))
        self.next_row += n
        self.pending = [data[n:]] if n < len(data) else []


def _build_overviews(path: Path, resampling: Resampling) -> None:
    with rasterio.Env(COMPRESS_OVERVIEW="DEFLATE"), rasterio.open(path, "r+") as ds:
        factors = [f for f in OVERVIEW_FACTORS if min(ds.width, ds.height) // f >= 16] or [2]
        if min(ds.width, ds.height) >= 2:
            ds.build_overviews(factors, resampling)
            ds.update_tags(ns="rio_overview", resampling=resampling.name)


def predict(model: str | Path | Bundle, out: str | Path, scene: str | Path | None = None,
            area: str | None = None, images: list[str | Path] | None = None, dem: str | Path | None = None,
            tile: int = 512, overlap: int = 64, threshold: str | float = "best", min_area: float = 0.0,
            batch_size: int = 4, device: str = "auto", as_float: bool = False,
            evaluate: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Predict landslides over a prepared scene (or an area of it) or bare images, into folder ``out``.

    Returns printable results: output paths, landslide count and km², threshold, seconds and Mpx/s
    (plus the evaluation's keys and ``table`` when ``evaluate``).
    """
    t_start = time.perf_counter()
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    images = [Path(p) for p in images] if images else None
    if (scene is None) == (images is None):
        raise UserError("--scene / --image: give exactly one input to predict")
    if area is not None and scene is None:
        raise UserError("--area: only with --scene (bare images have no named areas)")
    if dem is not None and images is None:
        raise UserError("--dem: only with --image (a prepared scene already holds its terrain layers)")
    if evaluate and scene is None:
        raise UserError("--evaluate: needs --scene with an inventory to compare against")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if min_area < 0:
        raise UserError(f"--min-area {min_area}: must be >= 0 (m²)")
    margin = check_tiling(tile, overlap)
    bundle = model if isinstance(model, Bundle) else load_bundle(model, "MODEL")
    model_name = "<in memory>" if isinstance(model, Bundle) else str(Path(model).resolve())
    th = bundle.threshold(threshold)
    which = str(threshold) if str(threshold) in bundle.meta.get("thresholds", {}) else "given"
    torch_device = resolve_device(device)
    runner = TileRunner(bundle.build_model(), torch_device, precision)
    out = Path(out)

    inputs = [p for p in (model if not isinstance(model, Bundle) else None, scene, dem, *(images or [])) if p]
    with atomic_dir(out, "prediction.json", inputs, "prediction") as tmp:
        if images is not None:
            sc = _prepare_images(bundle, model_name, images, Path(dem) if dem else None, tmp / ".scene")
            where = "--image " + ", ".join(str(p) for p in images)
        else:
            from slidemap.formats.scene import Scene

            sc = Scene(scene, "--scene")
            where = f"--scene {sc.path}"
        band_idx = match_bands(bundle.bands, sc.bands, where, model_name)
        if area is not None:
            window, area_geoms = _area_window(sc, area)
        else:
            window, area_geoms = Window(0, 0, sc.width, sc.height), None
        mean, std = bundle_stats(bundle, model_name)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), gc_paused():
            summary = _run(runner, sc, band_idx, window, area_geoms, tmp, tile, overlap, margin, batch_size,
                           mean, std, th, min_area, as_float)
        if images is not None:
            import shutil

            shutil.rmtree(tmp / ".scene", ignore_errors=True)
        seconds = time.perf_counter() - t_start
        mpx = window.width * window.height / 1e6
        meta = {
            "format": PREDICTION_FORMAT, "format_version": PREDICTION_FORMAT_VERSION,
            "model": model_name,
            "bundle": {k: bundle.meta.get(k) for k in ("architecture", "model_args", "bands", "patch_size",
                                                       "thresholds", "training", "slidemap_version")},
            "scene": None if images is not None else str(Path(sc.path).resolve()),
            "images": [str(p.resolve()) for p in images] if images else None,
            "dem": str(Path(dem).resolve()) if dem else None,
            "area": area,
            "window": {"col_off": int(window.col_off), "row_off": int(window.row_off),
                       "width": int(window.width), "height": int(window.height)},
            "crs": sc.crs.to_wkt(), "transform": list(summary.pop("transform"))[:6],
            "threshold": {"value": th, "which": which},
            "tile": tile, "overlap": overlap, "blend_margin": margin, "batch_size": batch_size,
            "device": str(torch_device), "precision": runner.precision,
            "probability_dtype": "float32" if as_float else "uint8",
            "min_area_m2": min_area, "connectivity": 4,
            **summary,
            "seconds": round(seconds, 3), "mpx": round(mpx, 4), "mpx_per_s": round(mpx / seconds, 4),
        }
        write_json(tmp / "prediction.json", meta)

    result: dict[str, Any] = {
        "prediction": str(out),
        "probability": str(out / "probability.tif"),
        "mask": str(out / "mask.tif"),
        "polygons": str(out / "landslides.gpkg"),
        "landslides": meta["landslides"],
        "landslide_km2": meta["landslide_km2"],
        "valid_km2": meta["valid_km2"],
        "threshold": th,
        "seconds": meta["seconds"],
        "mpx_per_s": meta["mpx_per_s"],
    }
    if evaluate:
        from slidemap.stages.evaluate import evaluate as evaluate_fn

        result.update(evaluate_fn(out, scene, areas=[area] if area else None))
    return result


def _run(runner: TileRunner, sc, band_idx: list[int], window: Window, area_geoms: list | None, tmp: Path,
         tile: int, overlap: int, margin: int, batch_size: int, mean: np.ndarray, std: np.ndarray,
         threshold: float, min_area: float, as_float: bool) -> dict[str, Any]:
    """Pass 1: probabilities + provisional labels, streamed; pass 2: mask + polygons; then overviews."""
    from rasterio import features

    crs = sc.crs
    transform: Affine = sc.transform @ Affine.translation(int(window.col_off), int(window.row_off))
    height, width = int(window.height), int(window.width)
    row0_scene, col0_scene = int(window.row_off), int(window.col_off)
    prob_path, mask_path, labels_path = tmp / "probability.tif", tmp / "mask.tif", tmp / ".labels.tif"
    prob_profile = gtiff_profile(width, height, 1, "float32" if as_float else "uint8", crs, transform,
                                 nodata=float("nan") if as_float else PROB_NODATA_U8)
    labeler = ComponentLabeler()
    row_areas = row_pixel_areas_m2(crs, transform, 0, height)
    total_km2 = float(row_areas.sum() * width / 1e6)
    valid_km2 = 0.0
    t0 = time.perf_counter()
    has_mask = Path(sc.mask_path).exists()
    progress = bar("km²", transient=False)

    with contextlib.ExitStack() as stack:
        src = stack.enter_context(rasterio.open(sc.stack_path))
        msk = stack.enter_context(rasterio.open(sc.mask_path)) if has_mask else None
        prob_ds = stack.enter_context(rasterio.open(prob_path, "w", **prob_profile))
        lab_ds = stack.enter_context(rasterio.open(
            labels_path, "w", **gtiff_profile(width, height, 1, "int32", crs, transform)))
        prob_out, lab_out = _RowWriter(prob_ds), _RowWriter(lab_ds)
        stack.enter_context(progress)
        task = progress.add_task("predict", total=total_km2)

        def read_rows(r0: int, r1: int) -> np.ndarray:
            win = Window(col0_scene, row0_scene + r0, width, r1 - r0)
            return src.read(band_idx, window=win, out_dtype="float32")

        def finish_strip(r0: int, prob: np.ndarray, valid: np.ndarray) -> float:
            """Mask, label and write one strip; returns its valid km². Runs in the writer thread."""
            h = len(prob)
            if msk is not None:
                valid &= msk.read(1, window=Window(col0_scene, row0_scene + r0, width, h)) != MASK_NODATA
            if area_geoms is not None:
                valid &= features.geometry_mask(area_geoms, out_shape=(h, width), invert=True,
                                                transform=transform @ Affine.translation(0, r0))
            binary = valid & (prob >= threshold)
            labels = labeler.add(binary, prob, row_areas[r0:r0 + h])
            labels[~valid] = -1
            lab_out.write(labels)
            if as_float:
                prob_out.write(np.where(valid, prob, np.float32(np.nan)).astype(np.float32))
            else:
                q = np.rint(np.clip(prob, 0, 1) * 254).astype(np.uint8)
                q[~valid] = PROB_NODATA_U8
                prob_out.write(q)
            progress.update(task, advance=float(row_areas[r0:r0 + h].sum() * width / 1e6))
            return float((valid.sum(axis=1) * row_areas[r0:r0 + h]).sum() / 1e6)

        # Strips are labelled and written (GDAL compresses without the GIL) in one writer thread, in
        # order, while the network predicts the next strip; at most two finished strips wait.
        strips = iter_probability_strips(runner, read_rows, height, width, tile, overlap, margin, batch_size,
                                         mean, std)
        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="slidemap-write"))
        queued: deque = deque()
        for r0, prob, valid in strips:
            queued.append(writer.submit(finish_strip, r0, prob, valid))
            while len(queued) > 2:
                valid_km2 += queued.popleft().result()
        while queued:
            valid_km2 += queued.popleft().result()
        prob_out.close()
        lab_out.close()
    t_predict = time.perf_counter() - t0

    t1 = time.perf_counter()
    comps = labeler.components(min_area)
    polygons = LandslideWriter(tmp / "landslides.gpkg", comps, transform, crs)
    mask_profile = gtiff_profile(width, height, 1, "uint8", crs, transform, nodata=MASK_NODATA)
    with rasterio.open(labels_path) as lab_ds, rasterio.open(mask_path, "w", **mask_profile) as mask_ds, \
            ThreadPoolExecutor(1, thread_name_prefix="slidemap-polygonise") as tracer:

        def trace_block(win: Window) -> tuple[np.ndarray, list]:
            """Final ids -> mask block and polygon pieces; runs in the tracer thread, one block ahead."""
            labels = lab_ds.read(1, window=win)
            ids = comps.ids(labels)
            m = (ids > 0).astype(np.uint8)
            m[labels < 0] = MASK_NODATA
            return m, polygon_pieces(ids, int(win.row_off))

        # Tracing block k + 1 (GDAL reads and polygonizes without the GIL) overlaps dissolving and
        # writing the polygons and the mask of block k here.
        blocks = list(_row_blocks(width, height, 512))
        pending = tracer.submit(trace_block, blocks[0])
        for k, win in enumerate(blocks):
            m, pieces = pending.result()
            if k + 1 < len(blocks):
                pending = tracer.submit(trace_block, blocks[k + 1])
            mask_ds.write(m, 1, window=win)
            polygons.add_pieces(pieces, int(win.row_off + win.height))
    polygons.close()
    labels_path.unlink()
    t_polygons = time.perf_counter() - t1

    t2 = time.perf_counter()
    _build_overviews(prob_path, Resampling.average)
    _build_overviews(mask_path, Resampling.nearest)
    t_overviews = time.perf_counter() - t2
    return {
        "transform": transform,
        "width": width, "height": height,
        "landslides": len(comps),
        "landslide_km2": round(float(comps.area_m2.sum()) / 1e6, 6),
        "valid_km2": round(valid_km2, 6),
        "dropped_specks": comps.dropped, "dropped_specks_km2": round(comps.dropped_m2 / 1e6, 6),
        "timings_s": {"predict": round(t_predict, 3), "mask_and_polygons": round(t_polygons, 3),
                      "overviews": round(t_overviews, 3)},
    }


def _row_blocks(width: int, height: int, rows: int) -> Iterator[Window]:
    for r in range(0, height, rows):
        yield Window(0, r, width, min(rows, height - r))

