"""Many scenes with one model: ``slidemap predict MODEL --scenes LIST --out DIR [--workers N | --ray ...]``.

For an analyst who outgrows one scene (a region of Sentinel-2 tiles): every entry of LIST is predicted as
an independent task (locally, in worker processes, or on a Ray cluster) into its own prediction folder
``DIR/<name>/``, and all landslides are merged into ``DIR/landslides.gpkg`` (with the scene each came
from). Resumable like an experiment: a scene whose prediction of this model is complete is not redone.

LIST is a text file with one entry per line: a prepared scene folder, or one or more image files
separated by commas (prepared on the fly; ``--dem`` applies to all of them); ``#`` starts a comment. Paths
are relative to the list file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.errors import UserError
from slidemap.formats.files import atomic_file, check_out, output_lock

MARKER = "scenes.json"


@dataclass(frozen=True)
class SceneJob:
    """One entry of a batch prediction, with everything a worker process needs to predict it."""

    name: str
    scene: str | None
    images: tuple[str, ...]
    dem: str | None
    models: tuple[str, ...]  # one model, or an ensemble's members
    out: str
    options: dict


def read_list(path: Path) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(name, scene folder or None, image files) per entry of a scene list; errors name the line."""
    if not path.is_file():
        raise UserError(f"--scenes {path}: no such file; give a text file with one scene or image per line")
    entries: list[tuple[str, str | None, tuple[str, ...]]] = []
    names: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = [(path.parent / p.strip()).resolve() for p in text.split(",") if p.strip()]
        missing = [p for p in parts if not p.exists()]
        if missing:
            raise UserError(f"--scenes {path}: line {n}: {missing[0]} does not exist; fix the list")
        entry: tuple[str | None, tuple[str, ...]]
        if len(parts) == 1 and parts[0].is_dir():
            if not (parts[0] / "scene.json").is_file():
                raise UserError(f"--scenes {path}: line {n}: {parts[0]} is a folder but not a prepared scene "
                                f"(no scene.json)")
            name, entry = parts[0].name, (str(parts[0]), ())
        else:
            name, entry = parts[0].stem, (None, tuple(str(p) for p in parts))
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        entries.append((name, *entry))
    if not entries:
        raise UserError(f"--scenes {path}: lists no scene; give one scene folder or image per line")
    return entries


def predict_one(job: SceneJob) -> tuple[str, str | None]:
    """Predict one entry (skipped when done); returns (name, error line or None)."""
    from slidemap.formats.prediction import models_of, read_prediction
    from slidemap.stages import predict

    out = Path(job.out) / job.name
    if (out / "prediction.json").is_file():
        try:
            if [Path(m).resolve() for m in models_of(read_prediction(out))] == \
                    [Path(m).resolve() for m in job.models]:
                return job.name, None
        except UserError:  # an unreadable or older description: predict it again
            pass
    try:
        predict.run(predict.PredictOptions(model=[Path(m) for m in job.models], out=out,
                                           scene=Path(job.scene) if job.scene else None,
                                           images=[Path(p) for p in job.images] or None,
                                           dem=Path(job.dem) if job.dem and job.images else None,
                                           **job.options))
    except UserError as e:
        return job.name, str(e)
    return job.name, None


def predict_scenes(model: Path | Sequence[Path], scenes: Path, out: Path, dem: Path | None = None, workers: int = 1,
                   ray: str | None = None, log: Callable[[str], None] = print,
                   **options: Any) -> tuple[int, int, Path]:
    """Predict every entry of ``scenes`` into ``out``; returns (done, failed, merged GeoPackage).

    ``model``: one bundle or run folder, or several (an ensemble, ``slidemap.stages.ensemble``).
    """
    from slidemap.experiments.dispatch import dispatch

    entries = read_list(scenes)
    models = [m / "bundle.pt" if m.is_dir() else m for m in ([model] if isinstance(model, Path) else model)]
    for m in models:
        if not m.is_file():
            raise UserError(f"MODEL {m}: no such model bundle; give a bundle.pt or a run folder")
    folder = check_out(out, MARKER, [scenes, *models], "batch prediction")
    folder.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    with output_lock(folder):
        with atomic_file(folder / MARKER) as tmp:
            tmp.write_text(json.dumps({"model": str(models[0].resolve()), "members": [str(m.resolve()) for m in models],
                                       "list": str(scenes.resolve()),
                                       "scenes": [e[0] for e in entries]}, indent=1) + "\n")
        jobs = [SceneJob(name, scene, images, str(dem) if dem else None, tuple(str(m) for m in models), str(folder),
                         options)
                for name, scene, images in entries]
        for name, error in dispatch(predict_one, jobs, workers, ray):
            log(f"scene {name}: {'FAILED: ' + error if error else 'done'}")
            if error:
                failed[name] = error
        merged = merge_landslides(folder, [e[0] for e in entries if e[0] not in failed])
    return len(entries) - len(failed), len(failed), merged


def merge_landslides(folder: Path, names: list[str]) -> Path:
    """All scenes' landslides in one GeoPackage (column ``scene``).

    In the first scene's CRS, or WGS 84 when the scenes' CRSs differ (e.g. Sentinel-2 tiles in several UTM zones).
    """
    import geopandas as gpd
    import pandas as pd

    frames = []
    for name in names:
        path = folder / name / "landslides.gpkg"
        if path.is_file():
            gdf = gpd.read_file(path)
            gdf.insert(0, "scene", name)
            frames.append(gdf)
    crs = {str(f.crs) for f in frames}
    target = frames[0].crs if len(crs) == 1 else "EPSG:4326"
    merged = gpd.GeoDataFrame(pd.concat([f.to_crs(target) for f in frames], ignore_index=True), crs=target) \
        if frames else gpd.GeoDataFrame({"scene": [], "id": [], "area_m2": []}, geometry=[], crs="EPSG:4326")
    out = folder / "landslides.gpkg"
    from slidemap.formats.gdal import pinned_gpkg_timestamp

    with atomic_file(out) as tmp, pinned_gpkg_timestamp():
        merged.to_file(tmp, driver="GPKG", layer="landslides")
    return out
