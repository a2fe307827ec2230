"""What makes a prediction's files readable by people: band descriptions, scale, QGIS styles, warnings.

- ``probability.tif`` says what it holds (band description) and, stored as uint8 ``round(p * 254)``,
  carries scale 1/254 and offset 0, so a GIS shows probabilities 0-1;
- ``uncertainty.tif`` (an ensemble's or ``--tta``'s spread, ``slidemap.stages.ensemble``) likewise: uint8
  ``round(std * 254)`` with scale 1/254;
- ``probability.qml``, ``mask.qml``, ``uncertainty.qml`` and each error map's ``.qml`` give QGIS the legend on
  opening;
- the domain-shift guard's findings (``slidemap.raster.shift``) become one warning per band.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from slidemap.formats.qgis import write_paletted_style, write_ramp_style
from slidemap.raster.metrics import CLASS_COLOURS, FN, FP, TN, TP
from slidemap.raster.shift import InputStats, shift_warnings

if TYPE_CHECKING:
    import rasterio.io

    from slidemap.nn.bundle import Bundle

PROB_SCALE = 1 / 254
LANDSLIDE_RGB = (230, 25, 75)
PROBABILITY_STOPS = [(0.0, (255, 255, 204), 0, "0 (no landslide)"), (0.25, (254, 217, 118), 110, "0.25"),
                     (0.5, (253, 141, 60), 200, "0.5"), (0.75, (227, 26, 28), 255, "0.75"),
                     (1.0, (128, 0, 38), 255, "1 (landslide)")]
UNCERTAINTY_STOPS = [(0.0, (255, 255, 255), 0, "0 (the views agree)"), (0.05, (218, 218, 235), 120, "0.05"),
                     (0.15, (158, 154, 200), 200, "0.15"), (0.3, (106, 81, 163), 255, "0.3"),
                     (0.5, (63, 0, 125), 255, "0.5 (most spread)")]
"""The ramp of uncertainty.tif: a standard deviation of probabilities lies in 0-0.5."""
ERROR_CLASSES = [(TN, CLASS_COLOURS[TN], 0, "TN: background, correct (transparent)"),
                 (TP, CLASS_COLOURS[TP], 255, "TP: landslide found"),
                 (FP, CLASS_COLOURS[FP], 255, "FP: false alarm"),
                 (FN, CLASS_COLOURS[FN], 255, "FN: landslide missed")]


class ShiftWarning(UserWarning):
    """An input band far from the model's training statistics (the domain-shift guard)."""


def describe_probability(ds: rasterio.io.DatasetWriter, as_float: bool) -> None:
    """Band description, scale and offset of an open ``probability.tif`` (uint8: scale 1/254)."""
    ds.set_band_description(1, "landslide probability (0-1)" + ("" if as_float else "; value = DN / 254"))
    ds.scales = (1.0 if as_float else PROB_SCALE,)
    ds.offsets = (0.0,)
    ds.update_tags(1, units="probability")


def describe_uncertainty(ds: rasterio.io.DatasetWriter) -> None:
    """Band description, scale and offset of an open ``uncertainty.tif`` (uint8: scale 1/254)."""
    ds.set_band_description(1, "spread of the landslide probability over the averaged views (standard "
                               "deviation, 0-0.5); value = DN / 254")
    ds.scales = (PROB_SCALE,)
    ds.offsets = (0.0,)
    ds.update_tags(1, units="probability")


def write_styles(folder: Path, as_float: bool = False) -> None:
    """``probability.qml`` and ``mask.qml`` beside the prediction's rasters (and ``uncertainty.qml``, if any)."""
    del as_float  # QGIS applies the uint8 file's scale, so one ramp in 0-1 fits both kinds
    write_ramp_style(folder / "probability.tif", PROBABILITY_STOPS)
    if (folder / "uncertainty.tif").is_file():
        write_ramp_style(folder / "uncertainty.tif", UNCERTAINTY_STOPS)
    write_paletted_style(folder / "mask.tif", [(0, (255, 255, 255), 0, "background (transparent)"),
                                               (1, LANDSLIDE_RGB, 255, "landslide")])


def write_error_map_style(tif: Path) -> Path:
    """The error map's ``.qml``: TP/FP/FN in the colours of the error-map PNG, TN transparent."""
    return write_paletted_style(tif, ERROR_CLASSES)


def warn_shift(bundle: Bundle, seen: InputStats, where: str) -> list[str]:
    """Warn once per band whose input statistics are far from the bundle's training statistics.

    Returns the messages (for prediction.json). None for a bundle that standardises each input with its own
    statistics: another level or scale is then what it is made to absorb.
    """
    if bundle.meta.standardise == "scene":
        return []
    found = shift_warnings(bundle.meta.stats, seen.as_dict())
    for message in found.values():
        warnings.warn(f"{where}: {message}", ShiftWarning, stacklevel=3)
    return list(found.values())
