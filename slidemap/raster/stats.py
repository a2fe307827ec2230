"""Per-band statistics streamed over blocks or patches: count, mean, M2, min and max.

One implementation of Chan's parallel update (exact and stable in float64) serves prepare (band statistics
gathered while the stack is written) and Landslide4Sense import (statistics of the imported patches).
Statistics may be kept per *slot*: with a slot per column (or row) the statistics of any set of columns can
be merged afterwards, which is how a ``--split`` train area (only known once the stack is written) is
described without reading the stack a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class RunningStats:
    """Streaming count/mean/M2/min/max per band and slot, float64."""

    def __init__(self, bands: int, slots: int = 1) -> None:
        self.bands, self.slots = bands, slots
        shape = (bands, slots)
        self.n = np.zeros(shape)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)
        self.lo = np.full(shape, np.inf)
        self.hi = np.full(shape, -np.inf)

    def add(self, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add pixels ``values`` (C, ...) to slot 0; ``valid`` (same shape) marks the ones that count.

        ``valid`` None counts every pixel (the caller has already dropped nodata); NaN never counts with ``valid``.
        """
        v = np.asarray(values).reshape(self.bands, -1).astype(np.float64)
        if v.shape[1] == 0:
            return
        if valid is None:
            nb = np.full((self.bands, 1), float(v.shape[1]))
            mb = v.mean(axis=1, keepdims=True)
            self._merge(slice(0, 1), nb, mb, ((v - mb) ** 2).sum(axis=1, keepdims=True),
                        v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True))
            return
        ok = np.asarray(valid).reshape(self.bands, -1) & ~np.isnan(v)
        nb = ok.sum(axis=1, keepdims=True).astype(np.float64)
        if not nb.any():
            return
        mb = np.divide(np.where(ok, v, 0.0).sum(axis=1, keepdims=True), nb, out=np.zeros_like(nb),
                       where=nb > 0)
        m2b = (np.where(ok, v - mb, 0.0) ** 2).sum(axis=1, keepdims=True)
        lo = np.where(ok, v, np.inf).min(axis=1, keepdims=True)
        hi = np.where(ok, v, -np.inf).max(axis=1, keepdims=True)
        self._merge(slice(0, 1), nb, mb, m2b, lo, hi)

    def add_finite(self, values: np.ndarray) -> None:
        """Add pixels ``values`` (C, ...) to slot 0, NaN and infinities not counted, one band at a time.

        Cheap enough for every strip a prediction reads: a band is copied only when it holds NaN or
        infinities, and deviations are taken in the values' own precision from the mean rounded to it, then
        squared and summed in float64 (M2 corrected for the rounding of the mean): 3x quicker than float64
        deviations, and the same to about 1e-10.
        """
        v = np.asarray(values).reshape(self.bands, -1)
        nb, mb, m2b = np.zeros((self.bands, 1)), np.zeros((self.bands, 1)), np.zeros((self.bands, 1))
        lo, hi = np.full((self.bands, 1), np.inf), np.full((self.bands, 1), -np.inf)
        for i in range(self.bands):
            x = v[i]
            with np.errstate(invalid="ignore"):  # inf + -inf
                clean = np.isfinite(x.sum(dtype=np.float64))  # a float64 sum of finite pixels cannot overflow
            if not clean:
                x = x[np.isfinite(x)]
            if x.size:
                mean = x.mean(dtype=np.float64)
                rounded = np.asarray(mean, dtype=x.dtype) if x.dtype.kind == "f" else mean
                m2 = np.square(x - rounded, dtype=np.float64).sum() - x.size * (float(rounded) - mean) ** 2
                nb[i], mb[i], m2b[i] = x.size, mean, max(m2, 0.0)
                lo[i], hi[i] = x.min(), x.max()
        if nb.any():
            self._merge(slice(0, 1), nb, mb, m2b, lo, hi)

    def add_lines(self, block: np.ndarray, counted: np.ndarray, axis: str, first: int) -> None:
        """Add the ``counted`` pixels of ``block`` (C, H, W), each column or row to its own slot.

        Columns with ``axis="x"``, rows with ``"y"``; the block's first column/row is slot ``first``.
        """
        if axis == "y":
            block, counted = block.transpose(0, 2, 1), counted.T
        nb = counted.sum(axis=0).astype(np.float64)
        if not nb.any():
            return
        v = block.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(counted, v, 0).sum(axis=1) / nb
        m2b = (np.where(counted, v - mb[:, None, :], 0) ** 2).sum(axis=1)
        lo, hi = np.where(counted, v, np.inf).min(axis=1), np.where(counted, v, -np.inf).max(axis=1)
        used = nb > 0
        index = np.flatnonzero(used) + first
        nb_used = np.broadcast_to(nb[used], (self.bands, int(used.sum())))
        self._merge(index, nb_used, mb[:, used], m2b[:, used], lo[:, used], hi[:, used])

    def _merge(self, idx: slice | np.ndarray, nb: np.ndarray, mb: np.ndarray, m2b: np.ndarray, lo: np.ndarray,
               hi: np.ndarray) -> None:
        """Chan's update of slots ``idx`` with batches of ``nb`` pixels of mean ``mb`` and M2 ``m2b``."""
        n0, mean0 = self.n[:, idx], self.mean[:, idx]
        total = n0 + nb
        delta = mb - mean0
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean[:, idx] = np.where(total > 0, mean0 + delta * nb / total, mean0)
            self.m2[:, idx] += np.where(total > 0, m2b + delta**2 * n0 * nb / total, 0.0)
        self.n[:, idx] = total
        self.lo[:, idx] = np.minimum(self.lo[:, idx], lo)
        self.hi[:, idx] = np.maximum(self.hi[:, idx], hi)

    def merged(self, keep: np.ndarray | None = None) -> RunningStats:
        """The one-slot statistics of the slots where ``keep`` is True (default: all)."""
        keep = np.ones(self.slots, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        out = RunningStats(self.bands)
        n = self.n[:, keep]
        total = n.sum(axis=1)
        if total.sum() == 0:
            return out
        out.n[:, 0] = total
        with np.errstate(invalid="ignore", divide="ignore"):
            out.mean[:, 0] = np.where(total > 0, (self.mean[:, keep] * n).sum(axis=1) / total, 0.0)
        out.m2[:, 0] = (self.m2[:, keep] + n * (self.mean[:, keep] - out.mean[:, :1]) ** 2).sum(axis=1)
        out.lo[:, 0] = self.lo[:, keep].min(axis=1)
        out.hi[:, 0] = self.hi[:, keep].max(axis=1)
        return out

    def as_dict(self, names: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
        """``{band: {mean, std, min, max, count}}``; a band without a counted pixel has all four None."""
        one = self if self.slots == 1 else self.merged()
        out: dict[str, dict[str, float | int | None]] = {}
        for i, name in enumerate(names):
            n = one.n[i, 0]
            if n == 0:
                out[name] = {"mean": None, "std": None, "min": None, "max": None, "count": 0}
            else:
                out[name] = {"mean": float(one.mean[i, 0]), "std": float(np.sqrt(one.m2[i, 0] / n)),
                             "min": float(one.lo[i, 0]), "max": float(one.hi[i, 0]), "count": int(n)}
        return out
