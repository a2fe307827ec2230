"""Bare images (with a DEM and pre-event images) prepared into a scene exactly as a model's training scenes were.

``slidemap predict MODEL --image ...`` runs this before predicting, into a folder inside its ``--out``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from slidemap.errors import UserError
from slidemap.formats.gdal import open_raster
from slidemap.formats.scene import Scene
from slidemap.nn.bundle import Bundle
from slidemap.raster.bands import CHANGE_PREFIX, layer_kinds
from slidemap.stages.runners import PredictWarning


def prepare_like_training(bundle: Bundle, images: list[Path], dem: Path | None, pre_images: list[Path],
                          folder: Path) -> Scene:
    """Prepare bare images (+ DEM, + pre-event images) into a scene in ``folder`` exactly as at training time.

    By the bundle's recipe (band names, resolution, pre-event band names), else by what its band names say (image
    bands, indices, pre_* and d* layers, terrain); a missing input is a one-line UserError.
    """
    from slidemap.stages.prepare import PrepareOptions
    from slidemap.stages.prepare import run as prepare_run

    kinds, recipe = layer_kinds(bundle.bands), bundle.meta.recipe
    wanted_images = list(recipe.image_bands) if recipe is not None and recipe.image_bands else kinds.image
    terrain = kinds.terrain
    n = band_count(images, "--image")
    if n != len(wanted_images):
        raise UserError(f"--image: the images hold {n} band(s) but model {bundle.name} expects "
                        f"{len(wanted_images)} image band(s) ({', '.join(wanted_images)}), in that order")
    if terrain and dem is None:
        raise UserError(f"--dem: model {bundle.name} uses terrain layer(s) {', '.join(terrain)}; give the "
                        f"DEM")
    if dem is not None and not terrain:
        warnings.warn(f"--dem {dem}: model {bundle.name} uses no terrain layer; the DEM is not used",
                      PredictWarning, stacklevel=3)
    needs_pre = kinds.needs_pre_image
    if needs_pre and not pre_images:
        raise UserError(f"--pre-image: model {bundle.name} uses pre-event layer(s) {', '.join(needs_pre)}; "
                        f"give the pre-event image(s) it was trained with")
    if pre_images and not needs_pre:
        warnings.warn(f"--pre-image: model {bundle.name} uses no pre-event layer; the pre-event image(s) are "
                      f"not used", PredictWarning, stacklevel=3)
        pre_images = []
    pre_names = list(recipe.pre_bands) if recipe is not None and recipe.pre_bands and pre_images else None
    if pre_names is not None and band_count(pre_images, "--pre-image") != len(pre_names):
        raise UserError(f"--pre-image: the pre-event images hold {band_count(pre_images, '--pre-image')} "
                        f"band(s) but model {bundle.name} was trained with {len(pre_names)} "
                        f"({', '.join(pre_names)}), in that order")
    try:
        prepare_run(PrepareOptions(
            images=list(images), out=folder, dem=dem if terrain else None, terrain=terrain,
            band_names=wanted_images, indices=kinds.indices_to_compute, pre_images=pre_images,
            pre_band_names=pre_names, change=[c[len(CHANGE_PREFIX):] for c in kinds.change],
            resolution=recipe.resolution_m if recipe is not None else None))
    except UserError as e:
        raise UserError(f"model {bundle.name} (bands {', '.join(bundle.bands)}): {e}") from None
    return Scene(folder)


def band_count(paths: list[Path], option: str) -> int:
    """Bands of the rasters ``paths`` together (an unreadable one is a UserError naming ``option``)."""
    n = 0
    for p in paths:
        with open_raster(p, option) as ds:
            n += ds.count
    return n
