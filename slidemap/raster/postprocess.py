"""Post-processing of a thresholded landslide mask: morphological clean-up, streamed, and its choice.

**The clean-up** (:class:`Cleanup`) is, in this order: an *opening* (erosion then dilation by a disk of
radius ``opening`` px: removes specks and thin spurs), a *closing* (dilation then erosion by a disk of
radius ``closing`` px: joins fragments of one scar and smooths ragged edges) and *hole filling* (background
components of at most ``fill_holes`` px that touch neither the raster's border nor nodata become
landslide). Nodata counts as background and stays nodata. Beyond the raster's edges the mask is taken as
continuing like its edge pixels (edge replication), so an object cut by the scene's edge is not eroded
from that side. Objects smaller than a minimum area are dropped afterwards by the component labeller
(``slidemap.raster.components``), as ``predict --min-area`` always did.

**Streamed** (:class:`StripCleaner`): a pixel's cleaned value depends only on pixels at most
:attr:`Cleanup.halo` rows away (2 x opening + 2 x closing for the morphology, ``fill_holes`` for a hole of
that many pixels, which spans at most that many rows). Strips of any height are buffered until ``halo``
rows below them are known, cleaned in a context of ``halo`` rows above and below, and handed on; the result
equals :func:`clean` of the whole array exactly (``tests/test_postprocess.py``), with memory that depends
on the width, never on the height.

**Its choice** (:func:`choose_postprocess`): on the validation chips of a training run (never a test
area), the threshold, the clean-up and a minimum object size that maximise the pixel F1 pooled over the
chips; among choices within :data:`F1_TIE` of the best F1, the one with the fewest false-alarm objects
(predicted objects touching no landslide), then the simplest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from slidemap.errors import UserError
from slidemap.formats.bundle import PostProcess

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))
"""Thresholds tried on validation: 0.1-0.9 (an extreme one such as 0.01 marks everything on a weak model)."""
RADII = (0, 1, 2)
HOLES = (0, 16, 64)
MIN_PIXELS = (0, 2, 4, 6, 9, 12, 16, 25, 36, 50, 75, 100, 150, 200, 300)
F1_TIE = 0.001
"""Validation F1 values this close count as a tie, decided by fewer false-alarm objects."""
SMALL_QUANTILE = 5.0
"""The smallest landslides: this percentile of the training masks' landslide sizes (see min_size_cap)."""
TOP_THRESHOLDS = 3
"""Thresholds (best by F1 with a minimum size alone) for which every clean-up is tried."""
CROSS = ndimage.generate_binary_structure(2, 1)


def disk(radius: int) -> np.ndarray:
    """Boolean disk of ``radius`` px (radius 1: the 4-neighbour cross; 0: the single pixel)."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y) <= radius * radius


@dataclass(frozen=True)
class Cleanup:
    """Morphological clean-up of a binary mask: radii in pixels, hole size in pixels (0: off)."""

    opening: int = 0
    closing: int = 0
    fill_holes: int = 0

    @property
    def active(self) -> bool:
        """Whether any step is on (else :func:`clean` only masks out nodata)."""
        return bool(self.opening or self.closing or self.fill_holes)

    @property
    def halo(self) -> int:
        """Rows (and columns) beyond which a pixel's cleaned value no longer depends on the input."""
        return 2 * self.opening + 2 * self.closing + self.fill_holes


def clean(binary: np.ndarray, valid: np.ndarray | None = None, cleanup: Cleanup = Cleanup()) -> np.ndarray:
    """The cleaned mask of ``binary`` (h, w), or of a stack (n, h, w) of independent patches.

    ``valid`` False is nodata: background for the clean-up, False in the result. Applied to a strip cut
    out of a larger raster, rows within :attr:`Cleanup.halo` of a cut are not final (:class:`StripCleaner`
    only keeps the others).
    """
    b = np.asarray(binary, dtype=bool)
    ok = np.ones(b.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    b = b & ok
    if not cleanup.active or b.size == 0:
        return b
    r = 2 * (cleanup.opening + cleanup.closing)
    if r:
        pad = [(0, 0)] * (b.ndim - 2) + [(r, r), (r, r)]
        x = np.pad(b, pad, mode="edge")
        if cleanup.opening:
            se = _structure(disk(cleanup.opening), b.ndim)
            x = ndimage.binary_dilation(ndimage.binary_erosion(x, se), se)
        if cleanup.closing:
            se = _structure(disk(cleanup.closing), b.ndim)
            x = ndimage.binary_erosion(ndimage.binary_dilation(x, se), se)
        b = x[..., r:-r, r:-r] & ok
    if cleanup.fill_holes:
        b = b | _holes(b, ok, cleanup.fill_holes)
    return b


def _structure(se: np.ndarray, ndim: int) -> np.ndarray:
    """A 2-D structuring element for (..., h, w) arrays: patches stacked in front never touch."""
    return se if ndim == 2 else se.reshape((1,) * (ndim - 2) + se.shape)


def _connectivity(ndim: int) -> np.ndarray:
    """4-connectivity within each 2-D patch, for ``ndimage.label`` (which wants 3 x 3 x ... x 3)."""
    if ndim == 2:
        return CROSS
    out = np.zeros((3,) * ndim, dtype=bool)
    out[(1,) * (ndim - 2)] = CROSS
    return out


def _holes(b: np.ndarray, valid: np.ndarray, max_pixels: int) -> np.ndarray:
    """Background components (4-connected, within each patch) of at most ``max_pixels`` px: the holes to fill.

    A hole touches neither the border nor nodata. At a cut through a larger raster a component may continue beyond
    it, so it is never filled there; a hole of at most ``max_pixels`` px near a final row cannot reach a cut
    ``halo`` rows away.
    """
    background = ~b
    labels, n = ndimage.label(background, _connectivity(b.ndim))
    if not n:
        return np.zeros_like(b)
    size = np.bincount(labels.ravel(), minlength=n + 1)
    bad = np.zeros(n + 1, dtype=bool)
    bad[0] = True
    bad[size > max_pixels] = True
    bad[np.unique(labels[~valid])] = True
    for edge in (labels[..., 0, :], labels[..., -1, :], labels[..., :, 0], labels[..., :, -1]):
        bad[np.unique(edge)] = True
    return ~bad[labels]


# --- streamed ------------------------------------------------------------------------------------

class StripCleaner:
    """Cleans a raster fed as consecutive full-width strips of any height, with a lag of ``halo`` rows.

    :meth:`push` takes one strip (``binary``, ``valid`` and any row-aligned arrays to carry along, such as
    the probabilities) and returns the strips now final, as ``(row0, cleaned, valid, *carried)``;
    :meth:`finish` returns the rest. Concatenated, the cleaned rows equal :func:`clean` of the whole.
    """

    def __init__(self, height: int, cleanup: Cleanup) -> None:
        self.height, self.cleanup, self.halo = height, cleanup, cleanup.halo
        self._start = 0  # region row of the first buffered row
        self._done = 0  # rows handed on
        self._buf: list[list[np.ndarray]] = []

    def push(self, row0: int, binary: np.ndarray, valid: np.ndarray, *carry: np.ndarray) -> list[tuple]:
        """Take the strip starting at region row ``row0``; return the strips now final (maybe none)."""
        if not self.cleanup.active:
            self._done = row0 + len(binary)
            return [(row0, np.asarray(binary, bool) & valid, valid, *carry)]
        if row0 != self._start + self._rows():
            raise ValueError(f"strip at row {row0}: expected row {self._start + self._rows()}")
        self._buf.append([np.asarray(binary, bool), np.asarray(valid, bool), *carry])
        end = self._start + self._rows()
        ready = self.height if end >= self.height else end - self.halo
        return self._emit(ready) if ready > self._done else []

    def finish(self) -> list[tuple]:
        """After the last strip: the rows still held back."""
        if not self.cleanup.active or self._done >= self.height:
            return []
        return self._emit(self._start + self._rows())

    def _rows(self) -> int:
        return sum(len(p[0]) for p in self._buf)

    def _emit(self, ready: int) -> list[tuple]:
        arrays = [np.concatenate(parts) for parts in zip(*self._buf, strict=True)]
        end = self._start + len(arrays[0])
        lo = max(self._start, self._done - self.halo)
        hi = min(end, ready + self.halo)
        a, b = lo - self._start, hi - self._start
        cleaned = clean(arrays[0][a:b], arrays[1][a:b], self.cleanup)
        f0, f1 = self._done - lo, ready - lo
        out = (self._done, cleaned[f0:f1], *(x[a:b][f0:f1] for x in arrays[1:]))
        self._done = ready
        keep = max(self._start, ready - self.halo) - self._start  # rows still needed as context
        self._buf = [[x[keep:] for x in arrays]] if keep < len(arrays[0]) else []
        self._start += keep
        return [out]


# --- the choice on validation chips ----------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """One candidate post-processing and what it scores on the validation chips."""

    threshold: float
    cleanup: Cleanup
    min_pixels: int
    f1: float
    false_alarms: int
    objects: int
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def key(self) -> tuple:
        """Order among F1 ties: fewer false alarms, then less clean-up, a smaller minimum, nearer 0.5."""
        c = self.cleanup
        return (self.false_alarms, c.opening + c.closing + (c.fill_holes > 0), self.min_pixels,
                abs(self.threshold - 0.5))


@dataclass
class ValidationResult:
    """The choice, the threshold-only reference it is compared with, and every candidate scored."""

    best: Choice
    reference: Choice
    tried: list[Choice] = field(default_factory=list)


def object_scores(binary: np.ndarray, truth: np.ndarray, min_pixels: Sequence[int]
                  ) -> list[tuple[int, int, int, int, int]]:
    """For each minimum object size: (tp, fp, fn, false alarms, objects) of ``binary`` (n, h, w).

    Scored against ``truth`` (1 landslide, 0 background, 255 unknown) with objects (4-connected, within each
    patch) of fewer pixels dropped. False alarms are objects with a known-truth pixel and no landslide pixel.
    """
    labels, n = ndimage.label(binary, _connectivity(binary.ndim))
    positives = int(np.count_nonzero(truth == 1))
    flat = labels.ravel()
    size = np.bincount(flat, minlength=n + 1)[1:]
    t = truth.ravel()
    hit = np.bincount(flat, weights=(t == 1), minlength=n + 1)[1:]
    miss = np.bincount(flat, weights=(t == 0), minlength=n + 1)[1:]
    out = []
    for m in min_pixels:
        kept = size >= m
        tp, fp = int(hit[kept].sum()), int(miss[kept].sum())
        seen = kept & (hit + miss > 0)
        out.append((tp, fp, positives - tp, int((seen & (hit == 0)).sum()), int(seen.sum())))
    return out


def _f1(tp: int, fp: int, fn: int) -> float:
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else 0.0


def _score(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray, t: float, c: Cleanup,
           min_pixels: Sequence[int]) -> Iterator[Choice]:
    binary = clean(prob >= t, valid, c)
    for m, (tp, fp, fn, fa, objects) in zip(min_pixels, object_scores(binary, truth, min_pixels), strict=True):
        yield Choice(float(t), c, int(m), _f1(tp, fp, fn), fa, objects, tp, fp, fn)


def _pick(choices: Sequence[Choice]) -> Choice:
    top = max(c.f1 for c in choices)
    return min((c for c in choices if c.f1 >= top - F1_TIE), key=Choice.key)


def min_size_cap(masks: np.ndarray, quantile: float = SMALL_QUANTILE) -> int | None:
    """The largest minimum object size worth trying: half the size of the smallest landslides in chip masks.

    The smallest are the ``quantile`` % of those wholly inside a chip (4-connected) of ``masks`` (n, h, w). None
    without such a landslide.

    On validation chips that happen to hold no small landslide, dropping objects up to the size of real
    ones costs no F1 and removes false alarms, so the tie-break would take it; elsewhere it deletes true
    landslides. The training inventory says how small landslides come.
    """
    m = np.asarray(masks) == 1
    if m.ndim == 2:
        m = m[None]
    labels, n = ndimage.label(m, _connectivity(m.ndim))
    if not n:
        return None
    size = np.bincount(labels.ravel(), minlength=n + 1)
    cut = np.zeros(n + 1, dtype=bool)
    for edge in (labels[..., 0, :], labels[..., -1, :], labels[..., :, 0], labels[..., :, -1]):
        cut[np.unique(edge)] = True
    whole = size[1:][~cut[1:]]
    return int(np.percentile(whole, quantile) // 2) if whole.size else None


def choose_postprocess(prob: np.ndarray, truth: np.ndarray, reference_threshold: float = 0.5,
                       thresholds: Sequence[float] = THRESHOLDS, radii: Sequence[int] = RADII,
                       holes: Sequence[int] = HOLES, min_pixels: Sequence[int] = MIN_PIXELS,
                       max_min_pixels: int | None = None) -> ValidationResult | None:
    """Choose the threshold, clean-up and minimum object size on validation chips.

    ``prob`` (n, h, w) probabilities, ``truth`` (n, h, w) uint8 (1 landslide, 0 background, 255 unknown or
    nodata: counted nowhere, nor cleaned as landslide). Every threshold is scored with minimum sizes alone;
    for the :data:`TOP_THRESHOLDS` best, every opening x closing x hole size too. Returns None when the
    chips hold no landslide pixel (nothing to learn from). ``reference`` is ``reference_threshold`` (the
    pixel-F1 optimum) without any post-processing, for comparison. ``max_min_pixels`` caps the minimum
    object sizes tried (:func:`min_size_cap` of the training masks).
    """
    prob = np.asarray(prob, dtype=np.float32)
    truth = np.asarray(truth)
    if prob.ndim == 2:
        prob, truth = prob[None], truth[None]
    if not np.any(truth == 1):
        return None
    valid = truth != 255
    if max_min_pixels is not None:
        min_pixels = [m for m in min_pixels if m <= max_min_pixels] or [0]
    tried: list[Choice] = []
    per_threshold = {}
    for t in thresholds:
        scored = list(_score(prob, truth, valid, t, Cleanup(), min_pixels))
        tried += scored
        per_threshold[t] = _pick(scored)
    ranked = sorted(thresholds, key=lambda t: (-per_threshold[t].f1, per_threshold[t].key()))
    for t in ranked[:TOP_THRESHOLDS]:
        for o in radii:
            for c in radii:
                for h in holes:
                    if o or c or h:
                        tried += list(_score(prob, truth, valid, t, Cleanup(o, c, h), min_pixels))
    reference = next(_score(prob, truth, valid, reference_threshold, Cleanup(), (0,)))
    return ValidationResult(best=_pick(tried), reference=reference, tried=tried)


# --- what predict applies ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """How a prediction turns probabilities into the mask: threshold, clean-up, minimum object size."""

    threshold: float
    which: str  # "postprocess" (the bundle's), "best", "0.5" or "given"
    cleanup: Cleanup = Cleanup()
    min_pixels: int = 0
    min_area_m2: float = 0.0
    source: str = "none"  # "bundle": the post-processing learned on validation; "none"

    def record(self) -> dict[str, object]:
        """What prediction.json records under ``postprocess``."""
        c = self.cleanup
        return {"source": self.source, "threshold": self.threshold, "threshold_from": self.which,
                "opening": c.opening, "closing": c.closing, "fill_holes": c.fill_holes,
                "min_pixels": self.min_pixels, "min_area_m2": self.min_area_m2}

    def apply(self, prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """The final mask (bool) of in-memory probabilities (h, w) or independent patches (n, h, w)."""
        b = clean(np.asarray(prob) >= self.threshold, valid, self.cleanup)
        if self.min_pixels > 1:
            labels, n = ndimage.label(b, _connectivity(b.ndim))
            size = np.bincount(labels.ravel(), minlength=n + 1)
            size[0] = self.min_pixels  # background stays as it is
            b &= (size >= self.min_pixels)[labels]
        return b


def decide(learned: PostProcess | None, mode: str, best: float, given_threshold: tuple[float, str] | None,
           given_min_area: float | None, patches: bool, model: str) -> Decision:
    """The decision for ``predict``: threshold, clean-up and minimum size.

    ``mode`` "auto" applies the ``learned`` post-processing to scenes (patch datasets get 0.5 and nothing else, as
    the benchmark), "bundle" applies it to either, "none" never. A given threshold or minimum area (m²) overrides
    that part only; without post-processing a scene is cut at the bundle's ``best`` threshold.
    """
    use = mode == "bundle" or (mode == "auto" and not patches and learned is not None)
    if use and learned is None:
        raise UserError(f"--postprocess bundle: model {model} holds no post-processing learned on validation "
                        f"(trained by an older slidemap, or its validation chips held no landslide); train it "
                        f"again, or leave --postprocess out")
    post = learned if use else None  # not None exactly when used (the check above)
    if given_threshold is not None:
        threshold, which = given_threshold
    elif post is not None:
        threshold, which = post.threshold, "postprocess"
    elif patches:
        threshold, which = 0.5, "0.5"
    else:
        threshold, which = best, "best"
    cleanup = Cleanup(post.opening, post.closing, post.fill_holes) if post is not None else Cleanup()
    if given_min_area is not None:
        return Decision(threshold, which, cleanup, 0, float(given_min_area), "bundle" if use else "none")
    return Decision(threshold, which, cleanup, post.min_pixels if post is not None else 0, 0.0,
                    "bundle" if use else "none")
