"""The experiment spec: one YAML file declaring the grid of runs, validated before anything runs.

It declares sites, datasets, samplers, patch sizes, models, seeds and transferability scenarios.

Read with a safe YAML loader (no Python tags) and validated with pydantic; an unknown key, a wrong type or
an impossible value (a patch size the networks cannot take, a band a site lacks, a scenario naming an
unknown site) is one line ``SPEC.yaml: <key path>: <what is wrong and what is allowed>``. Paths are
relative to the spec file. The grid is the cross product of the axes (scenario x dataset x sampling x
size x architecture x filters x batch size x the training settings given as lists x seed), trimmed by
``only:`` and ``exclude:``.

Three parts are the stages' own options, so that a stage's option is a spec key the day it exists: a
site's ``prepare:`` is ``slidemap.stages.prepare.PrepareOptions`` (less ``out``, which the experiment sets);
a sampler holds the fields of ``slidemap.stages.sample.SampleOptions`` that no chip set sets itself, and
``training:`` those of ``slidemap.stages.train.TrainOptions`` that no axis or the runner sets, each with the
stage's default and checked by the stage's own validators.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from slidemap.errors import UserError, validation_line
from slidemap.nn.precision import precision_field
from slidemap.raster.bands import TERRAIN_LAYERS
from slidemap.raster.tiling import BATCH, OVERLAP, TILE, check_patch_size
from slidemap.stages.options import StageOptions
from slidemap.stages.prepare import PrepareOptions
from slidemap.stages.sample import SampleOptions
from slidemap.stages.train import TrainOptions

TRAINING_AXES = ("lr", "loss", "epochs", "patience", "standardise")
"""Training settings a spec may give as a list, each list an axis of the grid (e.g. a learning-rate pilot)."""
AXES = ("scenario", "dataset", "sampling", "size", "architecture", "filters", "batch_size", *TRAINING_AXES,
        "seed")
"""The grid's coordinates, in the order runs are listed and folders named."""
SET_BY_THE_GRID = ("chips", "out", "model", "filters", "batch_size", "bands", "augment", "seed", "resume",
                   "progress", "threads", "model_args", "learn_postprocess", "learning_curve",
                   "keep_checkpoints")
"""TrainOptions fields each run gets from its grid point or from the runner, so not keys of ``training:``."""
SET_BY_THE_SAMPLER = ("scene", "out", "size", "seed", "area")
"""SampleOptions fields each chip set gets from the grid (size), the site and the run's seed, so not sampler keys."""


def _checked_precision(value: str) -> str:
    precision_field(value)  # refused when the spec is read, before anything runs
    return value


Precision = Annotated[str, AfterValidator(_checked_precision)]
"""A precision word of the one vocabulary (``slidemap.nn.precision``), kept as the spec wrote it."""


class SpecModel(BaseModel):
    """A part of the spec: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthSite(SpecModel):
    """A synthetic study area (``slidemap synth``): any parameter of ``SynthParams``, checked by it.

    A spec's synthetic site is smaller by default than ``slidemap synth``'s (1024 px): grids train many runs.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    seed: int = 0
    size: int = 1024
    pixel_size: float = 5.0
    landslides: int = 120

    @model_validator(mode="after")
    def _checked(self) -> SynthSite:
        from slidemap.sources.synth.params import SynthParams

        unknown = sorted(set(self.model_extra or {}) - set(SynthParams.model_fields))
        if unknown:
            raise ValueError(f"unknown synth parameter {', '.join(unknown)}; synth takes "
                             f"{', '.join(sorted(SynthParams.model_fields))}")
        try:
            SynthParams.checked(**self.parameters())
        except UserError as e:  # the spec's line names the site, synth's the parameter
            raise ValueError(str(e)) from None
        return self

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments of ``synthesize`` this site gives (the extra keys included)."""
        return {**self.model_dump(exclude=set(self.model_extra or {})), **(self.model_extra or {})}


class PrepareSite(PrepareOptions):
    """The options of ``slidemap prepare`` for one site: every key of PrepareOptions but ``out``.

    An experiment trains and scores against truth, so ``inventory`` and one of ``areas``/``split`` are required.
    """

    out: None = None  # type: ignore[assignment]  # the experiment puts the scene in its own folder
    __init__ = BaseModel.__init__  # errors as spec keys (sites.x.prepare.key), not as prepare's --options

    @field_validator("out", mode="before")
    @classmethod
    def _no_out(cls, out: Any) -> None:
        if out is not None:
            raise ValueError("the experiment puts each site's scene in its --out; remove this key")
        return None

    @model_validator(mode="after")
    def _for_an_experiment(self) -> PrepareSite:
        if self.inventory is None:
            raise ValueError("give inventory (landslide polygons or a label raster); an experiment trains and "
                             "scores against it")
        if (self.areas is None) == (self.split is None):
            raise ValueError("give areas (a file of named train/test polygons) or split (e.g. 3:2)")
        return self

    def options(self, out: Path) -> PrepareOptions:
        """The stage's options for preparing this site into ``out``."""
        return PrepareOptions(**{**self.model_dump(exclude={"out"}), "out": out})


class L4SSite(SpecModel):
    """A Landslide4Sense folder: patches to train on and patches to evaluate on.

    ``train``: a list file, or every patch; ``test``: a list file, or a second folder.
    """

    folder: Path
    train: Path | None = None
    test: Path | None = None
    test_folder: Path | None = None


class Site(SpecModel):
    """A named study area: exactly one of a prepared scene, inputs to prepare one, a synthetic one or L4S.

    L4S: a Landslide4Sense folder.
    """

    scene: Path | None = None
    prepare: PrepareSite | None = None
    synth: SynthSite | None = None
    l4s: L4SSite | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Site:
        given = [k for k in ("scene", "prepare", "synth", "l4s") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of scene, prepare, synth, l4s")
        return self

    @property
    def kind(self) -> str:
        """Which of scene, prepare, synth, l4s this site is."""
        return next(k for k in ("scene", "prepare", "synth", "l4s") if getattr(self, k) is not None)


class Dataset(SpecModel):
    """A named band subset (None: every band of the sites) with augmentation on or off."""

    bands: list[str] | None = None
    augment: bool = False


class Model(SpecModel):
    """An architecture with one or several filter counts and batch sizes (each a grid axis).

    Names, defaults and bounds are TrainOptions' (``model``, ``filters``, ``batch_size``).
    """

    architecture: str = TrainOptions.model_fields["model"].default
    filters: list[int] = [TrainOptions.model_fields["filters"].default]
    batch_size: list[int] = [TrainOptions.model_fields["batch_size"].default]
    model_args: dict[str, Any] = {}

    @field_validator("filters", "batch_size", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, v: str) -> str:
        return _train_value("model", v)

    @field_validator("filters", "batch_size")
    @classmethod
    def _each(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if not v:
            raise ValueError("give one or more whole numbers, e.g. [16, 32, 64]")
        for x in v:
            try:
                _train_value(str(info.field_name), x)
            except ValueError as e:
                raise ValueError(f"{x}: {e}") from None
        return v


def _train_value(name: str, value: Any) -> Any:
    return _stage_value(TrainOptions, {"chips": ["."], "out": "."}, name, value)


def _stage_value(options: type[StageOptions], required: dict[str, Any], name: str, value: Any) -> Any:
    """``value`` of the stage option ``name`` as the stage's options model validates it (types, bounds, checks)."""
    try:
        return getattr(options(**required, **{name: value}), name)
    except UserError as e:  # "--lr -1: must be ...": the spec's own line names the key and the value
        raise ValueError(str(e).split(": ", 1)[-1]) from None


def _derived_model(name: str, options: type[StageOptions], required: dict[str, Any], left_out: Sequence[str],
                   base: type[SpecModel], axes: Sequence[str] = (), doc: str = "") -> type[SpecModel]:
    """A spec section holding a stage's options but ``left_out``, with the stage's defaults and checks.

    Each field is checked by building the stage's options with it (``required`` fills the options the spec
    section does not hold); a field in ``axes`` may also be a list of distinct values.
    """
    names = [n for n in options.model_fields if n not in left_out]
    fields: dict[str, Any] = {n: (Any, options.model_fields[n].get_default(call_default_factory=True))
                              for n in names}

    def check(cls: type, value: Any, info: ValidationInfo) -> Any:
        key = str(info.field_name)
        if key not in axes or not isinstance(value, list):
            return _stage_value(options, required, key, value)
        if not value or len(set(map(str, value))) != len(value):
            raise ValueError("give one value or a list of distinct values, e.g. [0.01, 0.001, 0.0001]")
        checked = []
        for v in value:
            try:
                checked.append(_stage_value(options, required, key, v))
            except ValueError as e:
                raise ValueError(f"{v!r}: {e}") from None
        return checked

    model = create_model(name, __base__=base, __validators__={"_stage_checks": field_validator(*names)(check)},
                         **fields)
    model.__doc__ = doc
    return model


class _SamplerName(SpecModel):
    """What a sampler of the spec adds to the sample stage's options: a name for tables and folders."""

    name: str | None = None

    @property
    def label(self) -> str:
        """How tables and folders name the sampler: its ``name``, else its method."""
        return self.name or str(getattr(self, "method"))  # noqa: B009 - the field comes from SampleOptions

    def options(self) -> dict[str, Any]:
        """The sample stage's options this sampler sets."""
        return self.model_dump(exclude={"name"})


if TYPE_CHECKING:  # built from the stages' options at import time; their fields are the stages' (docstrings)
    Sampling = Any
    Training = Any
else:
    Sampling = _derived_model(
        "Sampling", SampleOptions, {"scene": ".", "out": "."}, SET_BY_THE_SAMPLER, _SamplerName,
        doc="A sampler: the options of slidemap.stages.sample.SampleOptions but those each chip set sets "
            "(scene, out, size, seed, area), and a name.")
    Training = _derived_model(
        "Training", TrainOptions, {"chips": ["."], "out": "."}, SET_BY_THE_GRID, SpecModel, TRAINING_AXES,
        doc="What every run shares (each of lr, loss, epochs, patience, standardise may be a list: an axis of the "
            "grid): the fields of slidemap.stages.train.TrainOptions that no axis or runner sets.")


class Scenario(SpecModel):
    """Which sites train one model (one, several, all) and whose test areas it is evaluated on.

    By default every site's test areas.
    """

    train: list[str] = Field(min_length=1)
    test: list[str] | None = None

    @field_validator("train", "test", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Predict(SpecModel):
    """How each run predicts its test areas (the options of ``slidemap predict``)."""

    tile: int = TILE
    overlap: int = OVERLAP
    threshold: str | float = "best"
    min_area: float = Field(0.0, ge=0)
    # the studies scored the thresholded mask as it came; "auto" applies the clean-up learned on validation
    postprocess: Literal["auto", "bundle", "none"] = "none"
    batch_size: int = Field(BATCH, ge=1)
    # torch in fp32 by default: every run of a grid is scored the same way by its own network (not by a
    # quantised or bf16 copy); ONNX Runtime runs only when asked
    engine: Literal["torch", "onnx", "onnx-int8"] = "torch"
    precision: Precision = "32"
    tta: Literal[1, 2, 4, 8] = 1
    """Test-time augmentation: the probabilities averaged over 1, 2, 4 or 8 symmetries of each tile."""
    ensemble: bool = False
    """Also predict, per grid point with two or more seeds, the ensemble of its seeds' models (once they all
    finished): rows with seed "ensemble" and members "0+1+...", which the report's statistics leave out."""
    # "metrics": each test area keeps mask.tif, prediction.json and its metrics (no probabilities, polygons,
    # styles or error maps, which grow with the area: 0.15 MB of quick.yaml's 154 x 192-px areas); the report
    # draws the error maps it shows from the masks. "all": every output of predict and evaluate but the PNGs
    outputs: Literal["all", "metrics"] = "all"


class Resources(SpecModel):
    """What one run asks of a worker: CPU threads and a GPU fraction.

    Threads default to this machine's cores / workers; the GPU fraction is for Ray (0.25 lets four small U-Nets
    share one GPU).
    """

    cpus: int | None = Field(None, ge=1)
    gpu: float = Field(0.0, ge=0, le=8)


class Spec(SpecModel):
    """The whole experiment."""

    name: str = "experiment"
    description: str = ""
    sites: dict[str, Site] = Field(min_length=1)
    datasets: dict[str, Dataset] = {"all": Dataset()}
    sampling: list[Sampling] = [Sampling(method="grid")]
    sizes: list[int] = [128]
    models: list[Model] = [Model()]
    training: Training = Training()
    repeats: int = Field(1, ge=1)
    seeds: list[int] | None = None
    scenarios: dict[str, Scenario] | None = None
    only: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    predict: Predict = Predict()
    resources: Resources = Resources()
    cache: Path | None = None

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        for s in sizes:
            try:
                check_patch_size(s)
            except UserError as e:
                raise ValueError(str(e)) from None
        return sizes

    @field_validator("sampling")
    @classmethod
    def _sampling_names(cls, sampling: list[Sampling]) -> list[Sampling]:
        labels = [s.label for s in sampling]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"two samplers are called {dup[0]}; give each a name:")
        return sampling

    @field_validator("only", "exclude")
    @classmethod
    def _filters(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for rule in rules:
            unknown = sorted(set(rule) - set(AXES))
            if unknown:
                raise ValueError(f"unknown axis {', '.join(unknown)}; axes are {', '.join(AXES)}")
        return rules

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        for i, sampler in enumerate(self.sampling):  # what depends on the patch size (max_nodata's bound)
            for size in self.sizes:
                try:
                    SampleOptions(scene=".", out=".", size=size, **sampler.options())
                except UserError as e:
                    raise ValueError(f"sampling.{i} at size {size}: {e}") from None
        for name, sc in self.all_scenarios().items():
            for role, sites in (("train", sc.train), ("test", sc.test or [])):
                unknown = [s for s in sites if s not in self.sites]
                if unknown:
                    raise ValueError(f"scenarios.{name}.{role}: unknown site {unknown[0]}; sites are "
                                     f"{', '.join(self.sites)}")
        return self

    def all_scenarios(self) -> dict[str, Scenario]:
        """The scenarios; without any, one per site trained on itself alone... or the only site."""
        if self.scenarios:
            return self.scenarios
        return {name: Scenario(train=[name], test=[name]) for name in self.sites}

    def axis_values(self, name: str) -> list[Any]:
        """The values of a training axis (``TRAINING_AXES``: ``lr``, ``loss``, ...): a list of one or more."""
        value = getattr(self.training, name)
        return list(value) if isinstance(value, list) else [value]

    def seed_list(self) -> list[int]:
        """The seeds to run: ``seeds`` as given, else 0 .. ``repeats`` - 1."""
        return list(self.seeds) if self.seeds else list(range(self.repeats))

    def resolved(self, base: Path) -> Spec:
        """The spec with every path made absolute against ``base`` (the spec file's folder)."""
        data = self.model_dump(mode="python", exclude_unset=False)

        def fix(obj: Any) -> Any:
            if isinstance(obj, Path):
                return obj if obj.is_absolute() else (base / obj).resolve()
            if isinstance(obj, dict):
                return {k: fix(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [fix(v) for v in obj]
            return obj

        return Spec.model_validate(fix(data))


UNKNOWN_KEY = "unknown key; check its spelling (docs/experiments.md lists every key)"


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; every problem is one line naming the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such spec file; check the path")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}: not valid YAML{where} ({problem}); fix the file") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file; give a YAML spec") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: holds a YAML {type(data).__name__}, not a mapping of sites, datasets, ...; "
                        f"see examples/quick.yaml")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{p}: {validation_line(e, unknown=UNKNOWN_KEY)}") from None
    spec = spec.resolved(p.parent.resolve())
    check_bands(spec, p)
    return spec


def site_bands(spec: Spec, name: str) -> list[str] | None:
    """The bands a site will offer, known without preparing it (None where it cannot be told cheaply)."""
    site = spec.sites[name]
    if site.synth is not None:
        from slidemap.sources.synth import BANDS

        return [*BANDS, "dem", "slope"]
    if site.l4s is not None:
        from slidemap.sources.l4s import L4S_BANDS

        return list(L4S_BANDS)
    if site.scene is not None:
        meta = Path(site.scene) / "scene.json"
        if meta.is_file():
            from slidemap.formats.scene import SceneMeta

            return list(SceneMeta.load(meta).bands)
        return None
    p = site.prepare
    assert p is not None
    if p.indices or p.pre_images:  # derived layers: their order is prepare's to tell
        return None
    terrain = [t for t in p.terrain if t in TERRAIN_LAYERS] if p.dem is not None else []
    if p.band_names:
        return [*p.band_names, *terrain]
    return None


def check_bands(spec: Spec, path: Path) -> None:
    """Every dataset's bands exist in every site that trains or is tested with it."""
    for dname, ds in spec.datasets.items():
        if not ds.bands:
            continue
        for sname in spec.sites:
            have = site_bands(spec, sname)
            if have is None:
                continue
            missing = [b for b in ds.bands if b not in have]
            if missing:
                raise UserError(f"{path}: datasets.{dname}.bands: site {sname} has no band "
                                f"{', '.join(missing)}; it has {', '.join(have)}")
