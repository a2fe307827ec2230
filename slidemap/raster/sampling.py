"""Where chips may be cut: pure window proposals over boolean rasters, with no file in sight.

Which windows fit is decided for every offset at once with integral images (summed-area tables), so the
cost grows with the area, not with the number of windows times their size. Two samplers, as in the
studies: a regular grid (study 000: 20 % overlap, study 002: none) and random integer pixel offsets drawn
uniformly among those that fit. ``slidemap sample`` calls :func:`propose_windows`; the property tests call
the very same function.
"""

from __future__ import annotations

import numpy as np

METHODS = ("grid", "random")
_STRIP_PIXELS = 1 << 23  # integral images are built in strips of about this many pixels (32 MiB int32)


def windows_within(mask: np.ndarray, size: int, limit: int = 0) -> np.ndarray:
    """Boolean map over every window offset: True where the ``size`` x ``size`` window at (row, col) fits.

    A window fits when it holds at most ``limit`` True pixels of ``mask``.

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
                    max_nodata: int = 0, forbidden_mask: np.ndarray | None = None,
                    unknown_mask: np.ndarray | None = None, max_unknown: int = 0) -> np.ndarray:
    """Map over window offsets: True where the window lies wholly inside ``area_mask`` and may be sampled.

    It must hold no pixel of ``forbidden_mask`` (test areas), at most ``max_nodata`` pixels of ``nodata_mask``
    (no imagery) and at most ``max_unknown`` pixels of ``unknown_mask`` (imagery whose truth is unknown).
    """
    outside = ~np.asarray(area_mask, dtype=bool)
    if forbidden_mask is not None:
        outside |= np.asarray(forbidden_mask, dtype=bool)
    fits = windows_within(outside, size, 0)
    if nodata_mask is not None and fits.any():
        fits &= windows_within(nodata_mask, size, max_nodata)
    if unknown_mask is not None and fits.any():
        fits &= windows_within(unknown_mask, size, max_unknown)
    return fits


def grid_stride(size: int, overlap: float) -> int:
    """Step between grid windows: ``round(size * (1 - overlap))``, at least one pixel."""
    return max(1, int(round(size * (1.0 - overlap))))


def grid_offsets(start: int, stop: int, size: int, stride: int) -> np.ndarray:
    """Offsets of ``size`` windows every ``stride`` pixels covering [start, stop) to its end.

    The last window is shifted back inside rather than dropped. Empty when the span is shorter than ``size``.
    """
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


def propose_windows(areas: list[np.ndarray], fits: list[np.ndarray], method: str, size: int,
                    overlap: float = 0.0, count: int = 0, rng: np.random.Generator | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The windows a sampler proposes over several areas; this is what ``slidemap sample`` calls.

    Each area is an ``inside`` map and its ``fits`` map from :func:`fitting_windows`.

    ``grid``: the lattice of :func:`grid_candidates` (stride ``round(size * (1 - overlap))``, edges
    covered) over each area's bounding box, kept where it fits. ``random``: ``count`` distinct fitting
    offsets drawn uniformly over all areas at once (:func:`draw_offsets`). Returns (area index, row, col),
    area by area and row-major, and how many windows were proposed before the fit check (grid) or drawn
    (random).
    """
    if method == "random":
        which, rows, cols = draw_offsets(fits, count, rng if rng is not None else np.random.default_rng())
        return which, rows, cols, int(rows.size)
    if method != "grid":
        raise ValueError(f"unknown sampler {method!r}; one of {METHODS}")
    which_parts: list[np.ndarray] = []
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    proposed = 0
    for i, (inside, fit) in enumerate(zip(areas, fits, strict=True)):
        r, c = grid_candidates(inside, size, overlap)
        proposed += int(r.size)
        keep = fit[r, c] if r.size else np.zeros(0, dtype=bool)
        which_parts.append(np.full(int(keep.sum()), i, dtype=np.int64))
        row_parts.append(r[keep])
        col_parts.append(c[keep])
    return np.concatenate(which_parts), np.concatenate(row_parts), np.concatenate(col_parts), proposed


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
