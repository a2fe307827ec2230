"""slidemap: map landslides from satellite imagery and a DEM with U-Net and ResU-Net.

The package in layers, imports running downwards only: ``cli`` -> ``experiments`` -> ``stages`` (prepare,
sample, train, predict, evaluate) -> ``nn`` (networks, training task, inference) and ``sources`` (synthetic
study areas, Landslide4Sense) -> ``figures`` -> ``raster`` (grids, tiling, terrain, components, polygons,
metrics) -> ``formats`` (files on disk, validated sidecars) -> ``errors`` and ``version``.
"""

from slidemap.errors import UserError
from slidemap.version import __version__

__all__ = ["UserError", "__version__"]
