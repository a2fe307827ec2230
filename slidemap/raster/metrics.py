"""Stateless segmentation metrics over accumulated confusion counts.

Counts are accumulated over any number of windows, patches or areas, and the scores are computed once
from the totals (pixel pooling, as Landslide4Sense and both studies do). An empty denominator gives 0.0
for precision/recall/F1/IoU by convention, except that a class absent from both truth and prediction
has IoU 1.0 (nothing to find, nothing wrongly found).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TN, TP, FP, FN, NODATA_CLASS = 0, 1, 2, 3, 255
"""Error classes of an error map; 255: nodata in either layer, or outside the area."""
CLASS_NAMES = {TN: "tn", TP: "tp", FP: "fp", FN: "fn"}
# TP yellow, FP magenta, FN cyan: distinct for the common colour-vision deficiencies and on any image.
CLASS_COLOURS = {TN: (210, 210, 210), TP: (255, 215, 0), FP: (235, 0, 235), FN: (0, 200, 255)}
CLASS_LABELS = {TP: "TP: landslide found", FP: "FP: false alarm", FN: "FN: landslide missed"}


@dataclass
class Counts:
    """Pixel confusion counts of the landslide class (nodata pixels are never counted)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def as_dict(self) -> dict[str, int]:
        """``{tp, fp, fn, tn}``, for JSON and CSV."""
        return asdict(self)


def confusion(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Counts:
    """Counts of binary ``pred`` against ``truth`` (both 0/1, any shape) where ``valid`` is True.

    Pixels of ``truth`` equal to 255 (nodata) are excluded as well.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    truth_arr = np.asarray(truth)
    ok = truth_arr != 255
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    t = truth_arr == 1
    p = pred
    tp = int(np.count_nonzero(p & t & ok))
    fp = int(np.count_nonzero(p & ~t & ok))
    fn = int(np.count_nonzero(~p & t & ok))
    tn = int(np.count_nonzero(ok)) - tp - fp - fn
    return Counts(tp, fp, fn, tn)


def _div(a: float, b: float, empty: float = 0.0) -> float:
    return float(a) / float(b) if b else empty


def scores(c: Counts) -> dict[str, float]:
    """Precision, recall, F1, landslide IoU, background IoU, mIoU (mean of the two) and accuracy.

    ``iou`` is the landslide-class IoU: what study 000 reports as "mIoU" (its equation 4).
    """
    precision = _div(c.tp, c.tp + c.fp)
    recall = _div(c.tp, c.tp + c.fn)
    f1 = _div(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    iou = _div(c.tp, c.tp + c.fp + c.fn, empty=1.0)
    iou_bg = _div(c.tn, c.tn + c.fp + c.fn, empty=1.0)
    total = c.tp + c.fp + c.fn + c.tn
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou": iou,
        "iou_background": iou_bg,
        "miou": (iou + iou_bg) / 2,
        "accuracy": _div(c.tp + c.tn, total),
    }


def best_threshold(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None,
                   steps: int = 99) -> tuple[float, float]:
    """Threshold in (0, 1) that maximises F1 of ``prob >= t`` against ``truth``; returns (t, f1).

    Uses a histogram of probabilities per class, so it costs one pass whatever the number of steps.
    """
    prob = np.asarray(prob, dtype=np.float64).ravel()
    truth = np.asarray(truth).ravel()
    ok = truth != 255
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).ravel()
    prob, pos = prob[ok], truth[ok] == 1
    bins = np.linspace(0.0, 1.0, steps + 2)  # thresholds are the inner edges
    hp, _ = np.histogram(prob[pos], bins=bins)
    hn, _ = np.histogram(prob[~pos], bins=bins)
    # pixels >= threshold bins[k] are bins k.. end
    tp = np.cumsum(hp[::-1])[::-1][1:]
    fp = np.cumsum(hn[::-1])[::-1][1:]
    fn = pos.sum() - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    k = int(np.argmax(f1))
    return float(bins[k + 1]), float(f1[k])


def error_classes(pred: np.ndarray, truth: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per-pixel error class (0 TN, 1 TP, 2 FP, 3 FN; 255 where either is nodata or ``inside`` is False)."""
    cls = np.full(pred.shape, NODATA_CLASS, dtype=np.uint8)
    ok = inside & (pred != NODATA_CLASS) & (truth != NODATA_CLASS)
    p, t = pred == 1, truth == 1
    cls[ok & ~p & ~t] = TN
    cls[ok & p & t] = TP
    cls[ok & p & ~t] = FP
    cls[ok & ~p & t] = FN
    return cls
