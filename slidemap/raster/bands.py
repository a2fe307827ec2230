"""What a band is called: one table of aliases for the spectral bands, and the terrain layers' names.

Scenes come with generic names (``red``), Sentinel-2 names (``B4``, ``B04``), Landsat 8/9 surface
reflectance names (``SR_B4``) or RapidEye's order; everything that needs a band by meaning (the true-colour
renderer, spectral indices) looks it up here, so a B4/B3/B2 scene is drawn in true colour everywhere.

A scene's layers are, by name: image bands (anything else), spectral indices (``ndvi``, ...; the names
of SPECTRAL_INDICES, computed by ``slidemap.raster.indices``), pre-event bands (``pre_<band>``), change
layers (``d<index>``: the index after the event minus before) and terrain layers (TERRAIN_LAYERS).
:func:`layer_kinds` sorts a model's bands into these kinds, which is how prediction knows what to derive
from bare images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

TERRAIN_LAYERS = ("dem", "slope", "aspect", "hillshade")
"""Layers prepare derives from a DEM, in the order they may be requested."""

BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "b", "b2", "b02", "sr_b2"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "red_edge": ("red_edge", "rededge", "re", "b5", "b05"),
    "nir": ("nir", "n", "b8", "b08", "b8a", "sr_b5", "nir08"),
    "swir1": ("swir1", "swir16", "b11", "sr_b6"),
    "swir2": ("swir2", "swir22", "b12", "sr_b7"),
}
"""Canonical band -> names it goes by (lower case), in order of preference: generic, Sentinel-2, Landsat
8/9 (where Landsat's SR_B5 is near infrared while Sentinel-2's B5 is red edge)."""


SPECTRAL_INDICES: dict[str, tuple[str, ...]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
    "brightness": ("red", "green", "blue"),
    "nbr": ("nir", "swir2"),
}
"""Spectral index -> the canonical bands (keys of BAND_ALIASES) it is computed from (formulas in
``slidemap.raster.indices``): NDVI (nir - red) / (nir + red); NDWI (McFeeters) (green - nir) / (green + nir);
brightness, the mean of the visible bands; NBR (nir - swir2) / (nir + swir2)."""

PRE_PREFIX = "pre_"
"""Layers of a pre-event image are its band names with this prefix (``pre_red``)."""
CHANGE_PREFIX = "d"
"""Change layers are an index's name with this prefix (``dndvi`` = NDVI after minus NDVI before)."""


def find_band(bands: Sequence[str], name: str) -> int | None:
    """0-based index of the band that means ``name`` (a key of BAND_ALIASES), by any of its aliases."""
    lower = [b.lower() for b in bands]
    for alias in BAND_ALIASES.get(name, (name,)):
        if alias in lower:
            return lower.index(alias)
    return None


def rgb_band_indexes(bands: Sequence[str]) -> list[int]:
    """0-based indexes of the red, green and blue bands, found by name; else the first three bands.

    Fewer than three bands give a grey view of the first band.
    """
    found = [find_band(bands, colour) for colour in ("red", "green", "blue")]
    if all(i is not None for i in found):
        return cast(list[int], found)
    if len(bands) >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def image_bands(bands: Sequence[str]) -> list[str]:
    """The bands among ``bands`` that come from the (post-event) images, in order.

    That is, neither terrain layers nor indices, pre-event bands or change layers.
    """
    return layer_kinds(bands).image


def change_name(index: str) -> str:
    """The change layer of ``index`` (after minus before): ``d`` + its name."""
    return CHANGE_PREFIX + index


def is_change(name: str) -> bool:
    """Whether ``name`` is a change layer, i.e. the change prefix followed by a known spectral index."""
    return name.startswith(CHANGE_PREFIX) and name[len(CHANGE_PREFIX):] in SPECTRAL_INDICES


@dataclass(frozen=True)
class LayerKinds:
    """A list of layer names sorted by what makes them (each in the order given)."""

    image: list[str]
    indices: list[str]
    pre: list[str]  # with the prefix
    change: list[str]
    terrain: list[str]

    @property
    def needs_pre_image(self) -> list[str]:
        """The layers that only a pre-event image can give."""
        return self.pre + self.change

    @property
    def indices_to_compute(self) -> list[str]:
        """Every index the layers need: those used directly and those behind a change layer."""
        wanted = self.indices + [c[len(CHANGE_PREFIX):] for c in self.change]
        return list(dict.fromkeys(wanted))


def layer_kinds(bands: Sequence[str]) -> LayerKinds:
    """Sort ``bands`` into image bands, indices, pre-event bands, change layers and terrain layers."""
    kinds: dict[str, list[str]] = {"image": [], "indices": [], "pre": [], "change": [], "terrain": []}
    for b in bands:
        if b in TERRAIN_LAYERS:
            kinds["terrain"].append(b)
        elif b in SPECTRAL_INDICES:
            kinds["indices"].append(b)
        elif b.startswith(PRE_PREFIX):
            kinds["pre"].append(b)
        elif is_change(b):
            kinds["change"].append(b)
        else:
            kinds["image"].append(b)
    return LayerKinds(**kinds)
