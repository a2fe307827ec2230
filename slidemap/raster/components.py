"""Connected components, streamed: the one labeller behind predicted polygons and evaluated objects.

A landslide (predicted or mapped) is a **4-connected** group of mask pixels by default: pixels that touch
only at a corner are two landslides, which is what ``rasterio.features.shapes(connectivity=4)`` traces, so
every landslide is one valid polygon. Scenes are too large to label in one piece, so :class:`ComponentLabeler`
takes the raster in row-major blocks (full-width strips are one block per row of blocks), labels each block
alone (``scipy.ndimage.label``) with labels made unique by an offset, records the label pairs that meet
across block seams, and sums per label whatever the caller weighs (pixel areas, probabilities, hits).
:meth:`ComponentLabeler.resolve` merges the pairs (:func:`merge_labels`, a sparse graph's connected
components) and returns the components with their sums. Memory grows with the number of objects (the
output), never with the number of pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

PIXELS = "pixels"
"""Key of :meth:`ComponentLabeler.resolve`'s ``keep`` meaning an object's pixel count."""


def merge_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component of each of ``n`` nodes joined by ``pairs`` (M, 2).

    Components are numbered 0, 1, ... in the order of each one's smallest node (so node 0's component is 0).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):  # no seam joins two nodes: each is its own component
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


@dataclass
class Components:
    """Resolved components: ``lut`` maps a provisional label to its final id (1..k; 0 none or dropped)."""

    lut: np.ndarray
    pixels: np.ndarray
    sums: dict[str, np.ndarray]
    bottom_row: np.ndarray
    dropped: int = 0
    dropped_sums: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pixels)

    def ids(self, labels: np.ndarray) -> np.ndarray:
        """Final ids of provisional ``labels`` (negative labels, e.g. nodata, give 0)."""
        return self.lut[np.clip(labels, 0, None)]


class ComponentLabeler:
    """Streaming connected-component labelling of a binary raster fed block by block, row-major.

    Blocks of one row of blocks share their top row and height; each :meth:`add` returns the block's
    provisional labels (int32, 0 = background, unique across blocks), which :meth:`resolve` later maps to
    final ids. Per label it keeps the pixel count, the sum of each weight passed to :meth:`add`, and the
    last row it reaches (so a writer can finish an object as soon as the blocks have passed it).
    """

    def __init__(self, width: int, connectivity: int = 4, weights: tuple[str, ...] = ()) -> None:
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity {connectivity}: must be 4 or 8")
        self.width = width
        self.weights = weights
        self._structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
        self._shifts = (0,) if connectivity == 4 else (-1, 0, 1)
        self.count = 0
        self._pixels: list[np.ndarray] = []
        self._sums: dict[str, list[np.ndarray]] = {w: [] for w in weights}
        self._bottom: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []
        self._above = np.zeros(width, dtype=np.int64)  # last row of the previous row of blocks
        self._last = np.zeros(width, dtype=np.int64)  # last row of the current row of blocks, being filled
        self._left: np.ndarray | None = None  # last column of the block to the left
        self._row = -1

    def add(self, block: Window, binary: np.ndarray, **weights: np.ndarray) -> np.ndarray:
        """Label one block (offsets relative to the labelled region) and link it to its neighbours above and left.

        ``weights`` (each (h, w), or (h, 1) per row) are summed per label.
        """
        r0, c0 = int(block.row_off), int(block.col_off)
        if r0 != self._row:
            self._above, self._last = self._last, np.zeros_like(self._last)
            self._left, self._row = None, r0
        local, n = ndimage.label(binary, structure=self._structure)
        labels = local.astype(np.int32, copy=True)
        if n:
            labels[local > 0] += self.count
            flat = local.ravel()
            self._pixels.append(np.bincount(flat, minlength=n + 1)[1:])
            for name in self.weights:
                w = np.broadcast_to(np.asarray(weights[name], dtype=np.float64), local.shape).ravel()
                self._sums[name].append(np.bincount(flat, w, minlength=n + 1)[1:])
            self._bottom.append(np.array([r0 + sl[0].stop - 1 for sl in ndimage.find_objects(local)],
                                         dtype=np.int64))
        glab = labels.astype(np.int64)
        self.count += n
        h, w = glab.shape
        if h and w:
            if r0 > 0:
                self._link(glab[0], self._above, np.arange(c0, c0 + w), self.width)
            if c0 > 0 and self._left is not None:
                self._link(glab[:, 0], self._left, np.arange(h), h)
            self._last[c0:c0 + w] = glab[-1]
            self._left = glab[:, -1]
        return labels

    def _link(self, edge: np.ndarray, neighbour: np.ndarray, index: np.ndarray, size: int) -> None:
        for d in self._shifts:
            j = index + d
            ok = (j >= 0) & (j < size)
            other = np.zeros_like(edge)
            other[ok] = neighbour[j[ok]]
            both = (edge > 0) & (other > 0)
            if both.any():
                self._pairs.append(np.stack([edge[both], other[both]], axis=1))

    def resolve(self, keep: Mapping[str, float] | None = None) -> Components:
        """Merge labels across seams; final ids 1..k follow each object's first label (top-most block first).

        ``keep`` (``{weight: minimum}``) drops objects whose summed weight (or pixel count, for :data:`PIXELS`) is
        below the minimum.
        """
        n = self.count
        pairs = np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), dtype=np.int64)
        comp = merge_labels(n + 1, pairs)  # node 0 = background, its own component 0
        k = int(comp.max()) + 1 if n else 1

        def total(parts: list[np.ndarray]) -> np.ndarray:
            per_label = np.concatenate([np.zeros(1), *parts]) if parts else np.zeros(1)
            return np.bincount(comp, per_label, minlength=k)[1:]

        pixels = total(self._pixels).astype(np.int64)
        sums = {name: total(self._sums[name]) for name in self.weights}
        bottom = np.zeros(k, dtype=np.int64)
        if self._bottom:
            np.maximum.at(bottom, comp[1:], np.concatenate(self._bottom))
        bottom = bottom[1:]
        kept = np.ones(k - 1, dtype=bool)
        for name, minimum in (keep or {}).items():
            kept &= (pixels if name == PIXELS else sums[name]) >= minimum
        final = np.zeros(k, dtype=np.int32)
        final[1:][kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
        return Components(lut=final[comp], pixels=pixels[kept], sums={m: s[kept] for m, s in sums.items()},
                          bottom_row=bottom[kept], dropped=int((~kept).sum()),
                          dropped_sums={m: float(s[~kept].sum()) for m, s in sums.items()})
