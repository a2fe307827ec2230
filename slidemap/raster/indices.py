"""Spectral indices and change layers, computed block by block from bands found by meaning.

The bands an index needs are found through the one alias table (``slidemap.raster.bands``), so ``ndvi`` is
computed from bands called nir/red, B8/B4, SR_B5/SR_B4, ... alike. Normalised differences are 0 where
both bands are 0 (never NaN: a dark pixel is not nodata). A change layer ``d<index>`` is the index after the
event minus the same index before it (from the pre-event image's bands): a fresh scar on a vegetated slope
has a strongly negative dNDVI, while a field that was already bare has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np

from slidemap.errors import UserError
from slidemap.raster.bands import BAND_ALIASES, SPECTRAL_INDICES, find_band


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total != 0)


def _ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    return _normalised_difference(nir, red)


def _ndwi(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    return _normalised_difference(green, nir)


def _brightness(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    return (red + green + blue) / 3


def _nbr(nir: np.ndarray, swir2: np.ndarray) -> np.ndarray:
    return _normalised_difference(nir, swir2)


FORMULAS: dict[str, Callable[..., np.ndarray]] = {"ndvi": _ndvi, "ndwi": _ndwi, "brightness": _brightness, "nbr": _nbr}
if set(FORMULAS) != set(SPECTRAL_INDICES):  # the names live in bands.py, the formulas here
    raise ImportError("slidemap.raster.indices: FORMULAS and bands.SPECTRAL_INDICES disagree")


def index_inputs(bands: Sequence[str], index: str, option: str, where: str) -> list[int]:
    """0-based indexes in ``bands`` of the bands ``index`` is computed from.

    A band that is not there is a one-line UserError naming ``option`` and ``where`` (whose bands they are).
    """
    if index not in SPECTRAL_INDICES:
        raise UserError(f"{option} {index}: unknown index; choose from {','.join(SPECTRAL_INDICES)}")
    found, missing = [], []
    for canonical in SPECTRAL_INDICES[index]:
        i = find_band(bands, canonical)
        if i is None:
            missing.append(f"{canonical} ({'/'.join(BAND_ALIASES[canonical][:4])}…)")
        found.append(i)
    if missing:
        raise UserError(f"{option} {index}: needs band(s) {', '.join(missing)} but {where} has "
                        f"{', '.join(bands) or 'no bands'}; name the bands (e.g. --band-names) or drop "
                        f"{index}")
    return cast(list[int], found)  # every band was found, or the UserError above


def compute_index(index: str, values: np.ndarray, inputs: Sequence[int]) -> np.ndarray:
    """``index`` (H, W) float32 from ``values`` (C, H, W); NaN where an input is NaN.

    ``inputs`` (from :func:`index_inputs`) are the bands of ``values`` it needs.
    """
    args = [values[i].astype(np.float64) for i in inputs]
    with np.errstate(invalid="ignore"):
        out = FORMULAS[index](*args)
    return out.astype(np.float32)
