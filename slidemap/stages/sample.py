"""``slidemap sample``: cut training chips from a scene's train area(s) into a chip set.

Two samplers, as in the studies: a regular ``grid`` (study 000: 20 % overlap, study 002: none) and
``random`` integer pixel offsets (study 000: 5000 windows, kept only where they hold a landslide when
``require_landslide``). Every window lies wholly inside ONE train area (every pixel centre inside its
polygon), holds no pixel of any test area (a guard against overlapping polygons: a chip that touches a
test area leaks it into training) and at most ``max_nodata`` nodata pixels.

Which windows fit is decided for every offset at once with integral images (summed-area tables), so
the cost grows with the area, not with the number of windows times their size. The pure proposal
functions :func:`grid_windows` and :func:`random_windows` work on boolean arrays and know nothing of
files, so they can be property-tested; :func:`sample_chips` wires them to a scene folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet, open_arrays, write_chipset
from slidemap.formats.files import atomic_dir, require_file
from slidemap.formats.scene import NODATA_MASK, Scene
from slidemap.progress import track

METHODS = ("grid", "random")
MAX_BBOX_BYTES = 2 << 30  # read a train area's stack box in one go below this, else window by window
_STRIP_PIXELS = 1 << 23  # integral images are built in strips of about this many pixels (32 MiB int32)


# --- pure window proposals ---------------------------------------------------------------------------

def windows_within(mask: np.ndarray, size: int, limit: int = 0) -> np.ndarray:
    """Boolean map over every window offset: True where the ``size`` x ``size`` window at (row, col)
    holds at most ``limit`` True pixels of ``mask``.

    Computed with integral images in strips of rows, so memory stays bounded on large areas while no
    window is ever summed pixel by pixel. The result has shape (H - size + 1, W - size + 1).
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    out = np.zeros((max(h - size + 1, 0), max(w - size + 1, 0)), dtype=bool)
    if out.size == 0:
        return out
    step = max(4 * size, _STRIP_PIXELS // (w + 1))
    for r0 in range(0, out.shape[0], step):
        r1 = min(r0 + step, out.shape[0])
        block = mask[r0:r1 + size - 1]
        ii = np.zeros((block.shape[0] + 1, w + 1), dtype=np.int32)
        np.cumsum(np.cumsum(block, axis=0, dtype=np.int32), axis=1, out=ii[1:, 1:])
        sums = ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]
        out[r0:r1] = sums <= limit
    return out


def fitting_windows(area_mask: np.ndarray, size: int, nodata_mask: np.ndarray | None = None,
                    max_nodata: int = 0, forbidden_mask: np.ndarray | None = None) -> np.ndarray:
    """Map over window offsets: True where the window lies wholly inside ``area_mask``, holds no pixel
    of ``forbidden_mask`` (test areas) and at most ``max_nodata`` pixels of ``nodata_mask``."""
    outside = ~np.asarray(area_mask, dtype=bool)
    if forbidden_mask is not None:
        outside |= np.asarray(forbidden_mask, dtype=bool)
    fits = windows_within(outside, size, 0)
    if nodata_mask is not None and fits.any():
        fits &= windows_within(nodata_mask, size, max_nodata)
    return fits


def grid_stride(size: int, overlap: float) -> int:
    """Step between grid windows: ``round(size * (1 - overlap))``, at least one pixel."""
    return max(1, int(round(size * (1.0 - overlap))))


def grid_offsets(start: int, stop: int, size: int, stride: int) -> np.ndarray:
    """Offsets of ``size`` windows every ``stride`` pixels covering [start, stop) to its end: the last
    window is shifted back inside rather than dropped. Empty when the span is shorter than ``size``."""
    if stop - start < size:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(start, stop - size + 1, stride, dtype=np.int64)
    if offsets[-1] != stop - size:
        offsets = np.append(offsets, stop - size)
    return offsets


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) half-open box of the True pixels of ``mask``, or None if there are none."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def grid_candidates(area_mask: np.ndarray, size: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """All grid windows (row, col) over the bounding box of ``area_mask``, row-major, before any check."""
    box = bounding_box(area_mask)
    if box is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    stride = grid_stride(size, overlap)
    rr, cc = np.meshgrid(grid_offsets(box[0], box[1], size, stride),
                         grid_offsets(box[2], box[3], size, stride), indexing="ij")
    return rr.ravel(), cc.ravel()


def grid_windows(area_mask: np.ndarray, size: int, overlap: float, nodata_mask: np.ndarray | None = None,
                 max_nodata: int = 0, forbidden_mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Grid windows (row, col) of ``size`` px with ``overlap`` that fit the area (see fitting_windows)."""
    rows, cols = grid_candidates(area_mask, size, overlap)
    if rows.size == 0:
        return rows, cols
    fits = fitting_windows(area_mask, size, nodata_mask, max_nodata, forbidden_mask)
    keep = fits[rows, cols]
    return rows[keep], cols[keep]


def random_windows(area_mask: np.ndarray, size: int, count: int, rng: np.random.Generator,
                   nodata_mask: np.ndarray | None = None, max_nodata: int = 0,
                   forbidden_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct random windows (row, col) that fit the area, sorted row-major.

    Drawn uniformly among all fitting offsets at once (rejection sampling run to the end), so no draw is
    wasted and none repeats; fewer than ``count`` come back only when fewer offsets fit.
    """
    fits = fitting_windows(area_mask, size, nodata_mask, max_nodata, forbidden_mask)
    _, rows, cols = draw_offsets([fits], count, rng)
    return rows, cols


def draw_offsets(fit_maps: list[np.ndarray], count: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``min(count, total)`` distinct True cells uniformly from several boolean maps at once.

    Returns (map index, row, col), sorted by map then row-major. Only per-row counts are kept in memory,
    not a list of every fitting offset, so huge areas cost no more than a few thousand draws.
    """
    row_counts = [m.sum(axis=1, dtype=np.int64) for m in fit_maps]
    totals = np.array([int(rc.sum()) for rc in row_counts], dtype=np.int64)
    total = int(totals.sum())
    k = min(int(count), total)
    empty = np.zeros(0, dtype=np.int64)
    if k <= 0:
        return empty, empty, empty
    ranks = np.sort(rng.choice(total, size=k, replace=False))
    map_starts = np.concatenate([[0], np.cumsum(totals)])
    which, rows, cols = [], [], []
    for i, (fits, rc) in enumerate(zip(fit_maps, row_counts, strict=True)):
        local = ranks[(ranks >= map_starts[i]) & (ranks < map_starts[i + 1])] - map_starts[i]
        if local.size == 0:
            continue
        row_ends = np.cumsum(rc)
        r = np.searchsorted(row_ends, local, side="right")
        within = local - (row_ends[r] - rc[r])
        c = np.empty_like(local)
        for row in np.unique(r):
            sel = r == row
            c[sel] = np.flatnonzero(fits[row])[within[sel]]
        which.append(np.full(local.size, i, dtype=np.int64))
        rows.append(r.astype(np.int64))
        cols.append(c)
    return np.concatenate(which), np.concatenate(rows), np.concatenate(cols)


# --- scene sampling ----------------------------------------------------------------------------------

@dataclass
class _AreaBox:
    """One train area's bounding box in the scene and the arrays sampling needs over it."""

    name: str
    window: Window  # the box, in scene pixels
    inside: np.ndarray  # pixel centre in this train area
    mask: np.ndarray  # mask.tif over the box (1 / 0 / 255)
    fits: np.ndarray  # window offsets inside the area, clear of test areas, nodata <= limit
    usable: np.ndarray  # pixels of the area counted for the landslide fraction

    @property
    def row_off(self) -> int:
        return int(self.window.row_off)

    @property
    def col_off(self) -> int:
        return int(self.window.col_off)


def sample_chips(scene: str | Path, out: str | Path, method: str = "grid", size: int = 128,
                 overlap: float = 0.0, count: int = 5000, require_landslide: bool = False,
                 area: str | None = None, max_nodata: int = 0, seed: int = 0) -> ChipSet:
    """Sample ``size`` px chips from the train area(s) of ``scene`` into the chip set folder ``out``.

    Args:
        scene: scene folder written by ``slidemap prepare``.
        out: chip set folder to write (replaced atomically).
        method: ``grid`` (regular windows, stride ``round(size * (1 - overlap))``) or ``random``.
        size: patch size in pixels, a multiple of 16 (at least 32).
        overlap: grid overlap fraction in [0, 1).
        count: random windows to draw (distinct offsets).
        require_landslide: keep only windows holding at least one landslide pixel.
        area: one train area by name; default all train areas.
        max_nodata: most nodata pixels (mask.tif == 255) a window may hold.
        seed: seed of the random sampler (the grid uses none).

    Returns:
        The chip set written.
    """
    sc = Scene(scene)
    size, overlap, count, max_nodata = _check_options(method, size, overlap, count, max_nodata)
    if Path(out).resolve() == sc.path.resolve():
        raise UserError(f"--out {out}: is the scene folder itself; choose another folder for the chip set")
    for p, what in ((sc.stack_path, "stack.tif"), (sc.mask_path, "mask.tif"), (sc.areas_path, "areas.gpkg")):
        require_file(p, f"SCENE {sc.path}: {what}")
    train_names = _train_areas(sc, area)
    boxes = [_area_box(sc, name, size, max_nodata) for name in train_names]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        raise UserError(f"SCENE {sc.path}: train area(s) {', '.join(train_names)} cover no pixel of the "
                        f"scene; check areas.gpkg")
    ls_pixels = sum(int(((b.mask == 1) & b.usable).sum()) for b in boxes)
    if not sc.has_inventory or ls_pixels == 0:
        raise UserError(f"SCENE {sc.path}: no landslide pixel in train area(s) {', '.join(train_names)}; "
                        f"prepare the scene with an --inventory that covers the train area")
    fraction_area = ls_pixels / max(1, sum(int(b.usable.sum()) for b in boxes))

    which, rows, cols, drawn, fitting = _propose(boxes, method, size, overlap, count, seed)
    if require_landslide and rows.size:
        keep = np.array([_has_landslide(boxes[i], r, c, size)
                         for i, r, c in zip(which, rows, cols, strict=True)], dtype=bool)
        which, rows, cols = which[keep], rows[keep], cols[keep]
    if rows.size == 0:
        raise UserError(_no_window_message(sc, method, size, max_nodata, require_landslide, train_names))

    windows = [{"id": i, "row": boxes[w].row_off + int(r), "col": boxes[w].col_off + int(c), "size": size,
                "area": boxes[w].name, "source": ""}
               for i, (w, r, c) in enumerate(zip(which, rows, cols, strict=True))]
    sampler = {"method": method, "overlap": overlap if method == "grid" else None,
               "count": count if method == "random" else None,
               "require_landslide": require_landslide, "area": area, "max_nodata": max_nodata, "seed": seed}
    with atomic_dir(out, "chips.json", [sc.path], "chip set") as tmp:
        images, masks = open_arrays(tmp, len(windows), len(sc.bands), size)
        _fill_chips(sc, boxes, which, rows, cols, size, images, masks)
        ls = int(np.count_nonzero(masks == 1))
        valid = int(masks.size - np.count_nonzero(masks == NODATA_MASK))
        images.flush()
        masks.flush()
        summary = {"chips": len(windows), "drawn": drawn, "kept": len(windows), "fitting_windows": fitting,
                   "landslide_fraction_chips": ls / max(1, valid),
                   "landslide_fraction_train_area": fraction_area}
        meta = {"bands": sc.bands, "stats": sc.stats, "size": size, "sampler": sampler,
                "scene": str(sc.path.resolve()), "scene_crs": sc.meta["crs"],
                "scene_transform": list(sc.transform)[:6], "summary": summary}
        write_chipset(tmp, images, masks, windows, meta)
        del images, masks
    return ChipSet(out)


def _check_options(method: str, size: int, overlap: float, count: int, max_nodata: int
                   ) -> tuple[int, float, int, int]:
    if method not in METHODS:
        raise UserError(f"--method {method}: unknown sampler; use one of {', '.join(METHODS)}")
    from slidemap.raster.tiling import check_patch_size  # the networks' rule, without importing torch

    try:
        check_patch_size(size)
    except UserError as e:
        raise UserError(f"--size: {e}") from None
    if not 0.0 <= overlap < 1.0:
        raise UserError(f"--overlap {overlap}: must be a fraction in [0, 1), e.g. 0.2 for 20 %")
    if method == "random" and count < 1:
        raise UserError(f"--count {count}: must be at least 1")
    if not 0 <= max_nodata < size * size:
        raise UserError(f"--max-nodata {max_nodata}: must be in [0, {size * size}) for {size} px windows")
    return size, float(overlap), int(count), int(max_nodata)


def _train_areas(sc: Scene, area: str | None) -> list[str]:
    """Names of the areas to sample; a named test area is refused (its pixels would leak into training)."""
    if area is not None:
        a = sc.area(area)
        if a.role != "train":
            train = ", ".join(t.name for t in sc.areas_with_role("train")) or "none"
            raise UserError(f"--area {area}: is a {a.role} area; sampling it leaks it into training, "
                            f"name a train area ({train})")
        return [a.name]
    names = [a.name for a in sc.areas_with_role("train")]
    if not names:
        raise UserError(f"SCENE {sc.path}: has no train area; prepare it with --areas (role=train) or "
                        f"--split")
    return names


def _area_box(sc: Scene, name: str, size: int, max_nodata: int) -> _AreaBox | None:
    """Rasterise one train area over its bounding box, with the test-area guard and nodata mask."""
    from rasterio.windows import from_bounds

    gdf = sc.area_geometries()
    geoms = gdf.loc[gdf["name"] == name].geometry
    if geoms.empty or geoms.is_empty.all():
        return None
    bounds = from_bounds(*geoms.total_bounds, transform=sc.transform)
    r0, c0 = max(0, math.floor(bounds.row_off)), max(0, math.floor(bounds.col_off))
    r1 = min(sc.height, math.ceil(bounds.row_off + bounds.height) + 1)
    c1 = min(sc.width, math.ceil(bounds.col_off + bounds.width) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    win = Window(c0, r0, c1 - c0, r1 - r0)
    inside = sc.area_mask(name, window=win)
    box = bounding_box(inside)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    win = Window(int(win.col_off) + c0, int(win.row_off) + r0, c1 - c0, r1 - r0)
    inside = inside[r0:r1, c0:c1]
    test = np.zeros_like(inside)
    for t in sc.areas_with_role("test"):
        test |= sc.area_mask(t.name, window=win)
    mask = sc.read_mask(window=win)
    nodata = mask == NODATA_MASK
    fits = fitting_windows(inside, size, nodata, max_nodata, forbidden_mask=test)
    return _AreaBox(name, win, inside, mask, fits, inside & ~test & ~nodata)


def _propose(boxes: list[_AreaBox], method: str, size: int, overlap: float, count: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Windows (box index, row, col in the box) that fit; how many were drawn (random) or proposed
    (grid lattice); how many fitting windows there were to choose from."""
    if method == "random":
        which, rows, cols = draw_offsets([b.fits for b in boxes], count, np.random.default_rng(seed))
        return which, rows, cols, int(rows.size), int(sum(int(b.fits.sum()) for b in boxes))
    which, rows, cols, drawn = [], [], [], 0
    for i, b in enumerate(boxes):
        r, c = grid_candidates(b.inside, size, overlap)
        drawn += int(r.size)
        keep = b.fits[r, c] if r.size else np.zeros(0, dtype=bool)
        which.append(np.full(int(keep.sum()), i, dtype=np.int64))
        rows.append(r[keep])
        cols.append(c[keep])
    return np.concatenate(which), np.concatenate(rows), np.concatenate(cols), drawn, sum(map(len, rows))


def _has_landslide(box: _AreaBox, row: int, col: int, size: int) -> bool:
    return bool((box.mask[row:row + size, col:col + size] == 1).any())


def _fill_chips(sc: Scene, boxes: list[_AreaBox], which: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                size: int, images: np.ndarray, masks: np.ndarray) -> None:
    """Copy every window's stack and mask pixels into the (memory-mapped) chip arrays."""
    n_bands = len(sc.bands)
    with rasterio.open(sc.stack_path) as ds:
        if ds.count != n_bands:
            raise UserError(f"SCENE {sc.path}: stack.tif has {ds.count} bands but scene.json names "
                            f"{n_bands}; prepare the scene again")
        for i, box in enumerate(boxes):
            idx = np.flatnonzero(which == i)
            if idx.size == 0:
                continue
            nbytes = n_bands * int(box.window.height) * int(box.window.width) * 4
            stack = ds.read(window=box.window, out_dtype="float32") if nbytes < MAX_BBOX_BYTES else None
            # a bar only where it is worth drawing: thousands of chips
            for j in track(idx, f"chips of {box.name}") if idx.size >= 2000 else idx:
                r, c = int(rows[j]), int(cols[j])
                if stack is not None:
                    chip = stack[:, r:r + size, c:c + size]
                else:
                    window = Window(box.col_off + c, box.row_off + r, size, size)
                    chip = ds.read(window=window, out_dtype="float32")
                m = box.mask[r:r + size, c:c + size]
                images[j] = chip
                images[j][:, m == NODATA_MASK] = np.nan
                masks[j] = m


def _no_window_message(sc: Scene, method: str, size: int, max_nodata: int, require_landslide: bool,
                       names: list[str]) -> str:
    why = "holds a landslide pixel" if require_landslide else "fits"
    return (f"SCENE {sc.path}: no {size} px {method} window {why} in train area(s) {', '.join(names)} "
            f"(wholly inside, clear of test areas, at most {max_nodata} nodata px); try a smaller --size"
            f"{' or a larger --max-nodata' if max_nodata == 0 else ''}"
            f"{' or more --count' if method == 'random' and require_landslide else ''}")
