"""What a band is called: one table of aliases for the spectral bands, and the terrain layers' names.

Scenes come with generic names (``red``), Sentinel-2 names (``B4``, ``B04``), Landsat 8/9 surface
reflectance names (``SR_B4``) or RapidEye's order; everything that needs a band by meaning (the true-colour
renderer, spectral indices) looks it up here, so a B4/B3/B2 scene is drawn in true colour everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

TERRAIN_LAYERS = ("dem", "slope", "aspect", "hillshade")
"""Layers prepare derives from a DEM, in the order they may be requested."""

BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "b", "b2", "b02", "sr_b2"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "red_edge": ("red_edge", "rededge", "re", "b5", "b05"),
    "nir": ("nir", "n", "b8", "b08", "sr_b5", "nir08"),
    "swir1": ("swir1", "swir16", "b11", "sr_b6"),
    "swir2": ("swir2", "swir22", "b12", "sr_b7"),
}
"""Canonical band -> names it goes by (lower case), in order of preference: generic, Sentinel-2, Landsat
8/9 (where Landsat's SR_B5 is near infrared while Sentinel-2's B5 is red edge)."""


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
        return found  # type: ignore[return-value]
    if len(bands) >= 3:
        return [0, 1, 2]
    return [0, 0, 0]


def terrain_bands(bands: Sequence[str]) -> list[str]:
    """The bands among ``bands`` that prepare derives from a DEM, in order."""
    return [b for b in bands if b in TERRAIN_LAYERS]


def image_bands(bands: Sequence[str]) -> list[str]:
    """The bands among ``bands`` that come from the images, in order."""
    return [b for b in bands if b not in TERRAIN_LAYERS]
