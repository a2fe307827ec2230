"""The domain-shift guard: is the input to a model like the data it was trained on?

A model standardises each band with its training mean and std; an input stored in other units (reflectance
as 0-10000 against 0-1), from another sensor or processing level, or with its bands in another order is
standardised into values the network never saw, and its map is silently wrong. :class:`InputStats` gathers
each band's count, mean, std, min and max over the finite pixels a prediction reads, while it reads them
(each row once, though tiles overlap); :func:`shift_warnings` compares them with the bundle's training
statistics and says, once per band, what looks wrong and its likely cause:

- **scale**: the input's range and largest magnitude are both 100x (or more) larger or smaller than the
  training ones (by std where a range is unknown): the same quantity in other units or scaling;
- **shift**: the input's mean lies more than 3 training std (at least 1 % of the training mean, so that a
  near-constant training band does not alarm) from the training mean: another sensor,
  processing level, season or region, or (when it matches another band's training mean) bands in another
  order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slidemap.raster.stats import RunningStats

SIGMA = 3.0
"""Input mean this many training std from the training mean: warn."""
SCALE = 100.0
"""Input range (and magnitude) this many times wider or narrower than the training range: warn."""
MIN_STD = 0.01
"""The training std counts as at least this share of the training mean (a near-constant band)."""


class InputStats:
    """Per-band statistics of the rows a prediction reads, each row of the region counted once."""

    def __init__(self, bands: Sequence[str]) -> None:
        self.bands = list(bands)
        self.stats = RunningStats(len(self.bands))
        self._next_row = 0

    def add_rows(self, row0: int, block: np.ndarray) -> None:
        """Count the rows of ``block`` (C, h, w: region rows ``row0``..) not counted yet (reads ascend)."""
        skip = max(0, self._next_row - row0)
        if skip < block.shape[1]:
            self.stats.add_finite(block[:, skip:])
            self._next_row = row0 + block.shape[1]

    def add(self, block: np.ndarray, channel_axis: int = 1) -> None:
        """Count every pixel of ``block`` (patches: (N, C, h, w))."""
        self.stats.add_finite(np.moveaxis(np.asarray(block), channel_axis, 0))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{band: {mean, std, min, max, count}}`` (rounded for prediction.json)."""
        out = {}
        for b, s in self.stats.as_dict(self.bands).items():
            out[b] = {k: (v if v is None or k == "count" else float(f"{v:.6g}")) for k, v in s.items()}
        return out


def _get(stats: Any, name: str) -> float | None:
    value = stats.get(name) if isinstance(stats, Mapping) else getattr(stats, name, None)
    return None if value is None else float(value)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _factor(k: float) -> str:
    """A ratio as people say it: 'about 10000x' near a power of ten, else two significant digits."""
    p = math.log10(k)
    if abs(p - round(p)) < 0.15:
        return f"about {10 ** round(p):g}x"
    return f"about {k:.2g}x"


def shift_warnings(training: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]], sigma: float = SIGMA,
                   scale: float = SCALE) -> dict[str, str]:
    """One message per band whose input statistics ``seen`` are far from the ``training`` statistics.

    Both are ``{band: {mean, std, min, max}}``, as dicts or models; bands without statistics on either side are
    skipped.
    """
    out: dict[str, str] = {}
    for band, s in seen.items():
        t = training.get(band)
        tm = None if t is None else _get(t, "mean")
        if tm is None or not s.get("count") or s.get("mean") is None:
            continue
        ts, sm, ss = _get(t, "std"), float(s["mean"]), float(s["std"] or 0.0)
        t_lo, t_hi, s_lo, s_hi = _get(t, "min"), _get(t, "max"), s.get("min"), s.get("max")
        if t_lo is not None and t_hi is not None and s_lo is not None and s_hi is not None \
                and t_hi > t_lo and s_hi > s_lo:
            # both the spread and the magnitude: a near-constant training band has a tiny spread only
            k = (s_hi - s_lo) / (t_hi - t_lo)
            m = max(abs(s_lo), abs(s_hi)) / max(abs(t_lo), abs(t_hi), 1e-12)
            spread = f"span {_fmt(s_lo)} to {_fmt(s_hi)}"
            trained = f"{_fmt(t_lo)} to {_fmt(t_hi)}"
        elif ts and ss:
            k = m = ss / ts
            spread, trained = f"have std {_fmt(ss)}", f"std {_fmt(ts)}"
        else:
            k = m = 1.0
        if (k >= scale and m >= scale) or (k <= 1 / scale and m <= 1 / scale):
            size = f"{_factor(k)} wider" if k > 1 else f"{_factor(1 / k)} narrower"
            out[band] = (f"band {band}: its values {spread} (mean {_fmt(sm)}), {size} than the {trained} "
                         f"(mean {_fmt(tm)}) the model was trained on; likely the same quantity in other units "
                         f"or scaling, e.g. reflectance stored as 0-10000 against a model trained on 0-1 "
                         f"(or the reverse); rescale the input as the training data was")
            continue
        ts = max(ts or 0.0, MIN_STD * abs(tm))  # a (near-)constant training band: 1 % of its mean
        if ts and abs(sm - tm) > sigma * ts:
            z = (sm - tm) / ts
            order = ""
            alike = [b for b, o in training.items() if b != band and (om := _get(o, "mean")) is not None
                     and (osd := _get(o, "std")) and abs(sm - om) <= osd]
            if alike:
                order = f", or bands in another order (its values look like band {alike[0]}'s)"
            out[band] = (f"band {band}: its mean {_fmt(sm)} lies {abs(z):.1f} training std "
                         f"{'above' if z > 0 else 'below'} the training mean {_fmt(tm)} (std {_fmt(ts)}); likely "
                         f"another sensor, processing level (top-of-atmosphere vs surface reflectance), season "
                         f"or region than the training data{order}; its map may be unreliable")
    return out
