"""The spatially honest validation split of a chip set: overlapping windows never straddle it.

Windows that share a pixel are linked; the connected components of that overlap graph are the groups that
must go wholly to training or wholly to validation. A component too large to move whole (a dense grid with
overlap is one component) is cut into blocks of a coarse grid by window centre, and the windows of
training blocks that overlap a validation block are dropped as a buffer. Patches without positions (e.g.
Landslide4Sense) are each their own group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from slidemap.errors import UserError
from slidemap.raster.components import merge_labels

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
        """The method and the three counts, as the run records them."""
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


def spatial_groups(rows: np.ndarray, cols: np.ndarray, sizes: np.ndarray, max_group: int,
                   pairs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group label per window, and whether its group was cut out of a larger component (needs a buffer).

    Components of the overlap graph up to ``max_group`` windows stay whole; larger ones are cut into
    blocks of a coarse grid by window centre.
    """
    n = rows.size
    pairs = overlap_pairs(rows, cols, sizes) if pairs is None else pairs
    comp = merge_labels(n, pairs)
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
