"""The model bundle on disk: weights and a validated description, and nothing that executes on load.

A bundle is a ``torch.save`` of a plain dict ``{"meta_json": str, "state_dict": {name: tensor}}``. It is
opened with ``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and
primitive containers, so a bundle shared between users cannot run code. The description
(:class:`BundleMeta`) is validated with bounds on every size, so a stranger's bundle cannot ask for a
network of hundreds of gigabytes, nor a threshold outside [0, 1].
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from slidemap.errors import UserError
from slidemap.formats.base import Record, Sidecar
from slidemap.formats.files import atomic_file, require_file
from slidemap.formats.scene import BandStats, Recipe

MAX_FILTERS = 256
"""Largest first-block width a bundle may ask for (the studies used 16-64; 256 is already 900 M weights)."""
MAX_BANDS = 64
Standardise = Literal["training", "scene"]
"""Whose statistics standardise a model's input: the training area's (in the bundle) or each scene's own."""


class PostProcess(Record):
    """Post-processing of the thresholded mask, chosen on the validation chips after training.

    See ``slidemap.raster.postprocess``: threshold, opening and closing radii (px), holes of at most
    ``fill_holes`` px filled, objects of fewer than ``min_pixels`` px dropped. ``validation`` holds what it
    scored there (``f1``, ``false_alarms``, ``objects``) and the same for the pixel-F1 threshold alone
    (``reference_*``).
    """

    threshold: float = Field(0.5, ge=0, le=1)
    opening: int = Field(0, ge=0, le=16)
    closing: int = Field(0, ge=0, le=16)
    fill_holes: int = Field(0, ge=0, le=4096)
    min_pixels: int = Field(0, ge=0)
    min_area_m2: float | None = Field(None, ge=0)  # min_pixels on the training grid, where it is known
    validation: dict[str, float] = {}


class BundleMeta(Sidecar):
    """What prediction needs besides the weights: the network, its input bands and their statistics."""

    REDO = "train the model again with this slidemap"

    format: str = "slidemap.bundle"
    architecture: Literal["unet", "resunet"]
    model_args: dict[str, Any] = {}
    bands: list[str] = Field(min_length=1, max_length=MAX_BANDS)
    stats: dict[str, BandStats]
    patch_size: int = Field(ge=32, le=4096)
    thresholds: dict[str, float] = {"0.5": 0.5}
    postprocess: PostProcess | None = None
    training: dict[str, Any] = {}
    recipe: Recipe | None = None  # how the training scene's layers were made: predict --image redoes it
    standardise: Standardise = "training"  # "scene": predict standardises each input with its own statistics

    @field_validator("model_args")
    @classmethod
    def _bounded(cls, args: dict[str, Any]) -> dict[str, Any]:
        filters = args.get("filters", 16)
        if isinstance(filters, bool) or not isinstance(filters, int) or not 1 <= filters <= MAX_FILTERS:
            raise ValueError(f"filters {filters!r} is not a whole number in 1..{MAX_FILTERS}")
        dropout = args.get("dropout", 0.0)
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"dropout {dropout!r} is not in [0, 1)")
        return args

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, th: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in th.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"threshold {next(iter(bad))} = {next(iter(bad.values()))} is outside [0, 1]")
        return th

    @model_serializer(mode="wrap")
    def _default_standardise_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a bundle of the default kind is written byte for byte as before the option existed
        data = handler(self)
        if self.standardise == "training":
            data.pop("standardise", None)
        return data

    @model_validator(mode="after")
    def _stats_for_every_band(self) -> BundleMeta:
        missing = [b for b in self.bands if b not in self.stats]
        if missing:
            raise ValueError(f"stats: no statistics for band(s) {', '.join(missing)}")
        return self


def read_bundle_file(path: str | Path, option: str = "MODEL") -> tuple[BundleMeta, dict[str, Any], Path]:
    """Open a bundle (or a run folder's ``bundle.pt``) without executing code from it.

    Returns the validated description, the state dict and the file's path; anything else is a one-line
    UserError naming the file.
    """
    import torch

    p = Path(path)
    if p.is_dir():  # a run folder: take its bundle
        p = p / "bundle.pt"
    p = require_file(p, option)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":  # torch.save writes a zip archive; anything else is not a bundle
        raise UserError(f"{option} {p}: not a model bundle (not a torch archive); give the bundle.pt a "
                        f"slidemap run wrote, or its run folder")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{option} {p}: refused, it holds pickled Python objects, not only weights; "
                        f"a slidemap bundle never does (it may be unsafe)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"{option} {p}: not a readable model bundle ({reason}); it may be truncated, copy "
                        f"it again") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("meta_json"), str) \
            or not isinstance(obj.get("state_dict"), dict):
        raise UserError(f"{option} {p}: not a slidemap model bundle (no metadata and weights inside)")
    try:
        data = json.loads(obj["meta_json"])
    except json.JSONDecodeError:
        raise UserError(f"{option} {p}: its metadata is not JSON; train the model again") from None
    meta = BundleMeta.from_data(data, f"{option} {p}")
    if not all(isinstance(v, torch.Tensor) for v in obj["state_dict"].values()):
        raise UserError(f"{option} {p}: its weights are not all tensors; train the model again")
    return meta, obj["state_dict"], p


def write_bundle_file(path: str | Path, meta: BundleMeta, state_dict: dict[str, Any]) -> Path:
    """Write a bundle atomically (the same meta and weights give the same bytes)."""
    import torch

    # through a file object: torch names the archive inside after a path it is given (here the
    # temporary's, with its pid), which would make the same model's bundles differ
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        torch.save({"meta_json": meta.model_dump_json(), "state_dict": state_dict}, f)
    return Path(path)
