"""From a spec to the grid of runs and the chip sets they need (and, with ``predict.ensemble``, the ensembles).

Each run is one point of the cross product scenario x dataset x sampling x size x architecture x filters x
batch size x lr x loss x epochs x patience x seed (trimmed by ``only``/``exclude``); a run's name holds
each training setting only where the spec gives it several values, so a spec that gains no axis keeps its
run folders. Chip sets are planned once per site x sampler x size
(x seed for random sampling: the grid needs none), under a content key (the site's identity and the
sampler's arguments), so every run that needs one shares it and a second experiment with the same
``cache`` reuses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from slidemap.errors import UserError
from slidemap.experiments.spec import AXES, TRAINING_AXES, Sampling, Spec

L4S_SIZE = 128


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)) or "x"


def content_key(data: Any) -> str:
    """A short, stable hash of JSON-able ``data``."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SitePlan:
    """Where a site is materialised in the experiment folder."""

    name: str
    kind: str
    folder: Path

    @property
    def scene(self) -> Path:
        """Scene sites: the prepared scene folder."""
        return self.folder / "scene"

    @property
    def train_chips(self) -> Path:
        """Landslide4Sense sites: the imported training patches."""
        return self.folder / "train"

    @property
    def test_chips(self) -> Path:
        """Landslide4Sense sites: the imported test patches."""
        return self.folder / "test"


@dataclass(frozen=True)
class ChipPlan:
    """One chip set: a site cut by one sampler at one size (and seed, for random windows)."""

    site: str
    sampling: Sampling
    size: int
    seed: int | None
    key: str
    folder: Path

    def label(self) -> str:
        """How progress lines name it: site, sampler, size and seed."""
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.site} {self.sampling.label} {self.size}px{seed}"


@dataclass(frozen=True)
class RunPlan:
    """One training run and the test areas it is evaluated on."""

    coords: dict[str, Any]
    name: str
    folder: Path
    train_sites: tuple[str, ...]
    test_sites: tuple[str, ...]
    chips: tuple[ChipPlan, ...]
    bands: tuple[str, ...] | None
    augment: bool
    model_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsemblePlan:
    """The ensemble of one grid point's seeds (``predict.ensemble``): its members' models averaged."""

    name: str
    folder: Path
    members: tuple[RunPlan, ...]

    @property
    def seeds(self) -> str:
        """The members' seeds as results.csv's ``members`` column writes them (``0+1+2``)."""
        return "+".join(str(m.coords["seed"]) for m in self.members)


@dataclass(frozen=True)
class Plan:
    """The expanded grid: every site, chip set and run the spec asks for, and where each goes."""

    spec: Spec
    out: Path
    sites: dict[str, SitePlan]
    chipsets: dict[str, ChipPlan]
    runs: list[RunPlan]
    ensembles: list[EnsemblePlan] = field(default_factory=list)


NAME_PREFIX = {"filters": "f", "batch_size": "b", "seed": "s", "lr": "lr", "epochs": "e", "patience": "p"}
"""How a run's name spells a numeric coordinate (``f16``, ``b8``, ``lr0.001``, ``e200``, ``p20``, ``s0``)."""


def run_name(coords: dict[str, Any], axes: list[str]) -> str:
    """A run's folder name: its coordinates on ``axes``, in order."""
    return "__".join(f"{NAME_PREFIX.get(a, '')}{_slug(str(coords[a]))}" for a in axes)


def _matches(coords: dict[str, Any], rule: dict[str, Any]) -> bool:
    for axis, wanted in rule.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if coords[axis] not in values and str(coords[axis]) not in [str(v) for v in values]:
            return False
    return True


def site_identity(spec: Spec, name: str) -> dict[str, Any]:
    """What makes a site's data what it is (the content key's first part)."""
    site = spec.sites[name]
    if site.synth is not None:
        return {"synth": site.synth.parameters()}
    if site.scene is not None:
        meta = Path(site.scene) / "scene.json"
        return {"scene": str(site.scene), "scene_json": meta.read_text() if meta.is_file() else ""}
    if site.prepare is not None:
        return {"prepare": site.prepare.model_dump(mode="json")}
    return {"l4s": site.l4s.model_dump(mode="json") if site.l4s else None}


def make_plan(spec: Spec, out: Path) -> Plan:
    """Expand the spec into sites, chip sets and runs (nothing is read or written but small sidecars)."""
    out = Path(out)
    cache = Path(spec.cache) if spec.cache else out / "chips"
    sites = {n: SitePlan(n, s.kind, out / "sites" / _slug(n)) for n, s in spec.sites.items()}
    identities = {n: site_identity(spec, n) for n in spec.sites}
    chipsets: dict[str, ChipPlan] = {}

    def chips_for(site: str, sampling: Sampling, size: int, seed: int) -> ChipPlan:
        if spec.sites[site].l4s is not None:
            key = content_key({"site": identities[site], "l4s": "train"})
            plan = ChipPlan(site, sampling, L4S_SIZE, None, key, sites[site].train_chips)
        else:
            used_seed = seed if sampling.method == "random" else None
            params = sampling.model_dump(exclude={"name"})
            key = content_key({"site": identities[site], "sampling": params, "size": size, "seed": used_seed})
            seed_part = "" if used_seed is None else f"__s{used_seed}"
            folder = cache / f"{_slug(site)}__{_slug(sampling.label)}__{size}{seed_part}-{key}"
            plan = ChipPlan(site, sampling, size, used_seed, key, folder)
        chipsets.setdefault(plan.key, plan)
        return chipsets[plan.key]

    runs = []
    scenarios = spec.all_scenarios()
    variants = [(m, f, b) for m in spec.models for f in m.filters for b in m.batch_size]
    training = [dict(zip(TRAINING_AXES, values, strict=True))
                for values in product(*(spec.axis_values(a) for a in TRAINING_AXES))]
    named = [a for a in AXES if a not in TRAINING_AXES or len(spec.axis_values(a)) > 1]
    for (sname, sc), (dname, ds), sampling, size, (model, filters, batch), settings, seed in product(
            scenarios.items(), spec.datasets.items(), spec.sampling, spec.sizes, variants, training,
            spec.seed_list()):
        coords = {"scenario": sname, "dataset": dname, "sampling": sampling.label, "size": size,
                  "architecture": model.architecture, "filters": filters, "batch_size": batch, **settings,
                  "seed": seed}
        if spec.only and not any(_matches(coords, r) for r in spec.only):
            continue
        if any(_matches(coords, r) for r in spec.exclude):
            continue
        l4s_train = [s for s in sc.train if spec.sites[s].l4s is not None]
        if l4s_train and size != L4S_SIZE:
            raise UserError(f"sizes: scenario {sname} trains on Landslide4Sense site {l4s_train[0]}, whose "
                            f"patches are {L4S_SIZE} px; use sizes [{L4S_SIZE}] or exclude that scenario's "
                            f"other sizes")
        name = run_name(coords, named)
        test = tuple(sc.test or list(spec.sites))
        runs.append(RunPlan(
            coords=coords, name=name, folder=out / "runs" / name, train_sites=tuple(sc.train),
            test_sites=test, chips=tuple(chips_for(s, sampling, size, seed) for s in sc.train),
            bands=tuple(ds.bands) if ds.bands else None, augment=ds.augment, model_args=dict(model.model_args)))
    if not runs:
        raise UserError("only/exclude: no run is left in the grid; loosen the filters")
    return Plan(spec, out, sites, chipsets, runs, ensembles_of(runs, named, out) if spec.predict.ensemble else [])


def ensembles_of(runs: list[RunPlan], named: list[str], out: Path) -> list[EnsemblePlan]:
    """One ensemble per grid point that has two or more seeds, named after the point and its members' seeds."""
    points: dict[str, list[RunPlan]] = {}
    for run in runs:  # the seed is the innermost axis: a point's runs are neighbours in the grid
        points.setdefault(run_name(run.coords, [a for a in named if a != "seed"]), []).append(run)
    found = []
    for point, members in points.items():
        if len(members) >= 2:
            name = f"{point}__ensemble_s{'+'.join(_slug(str(m.coords['seed'])) for m in members)}"
            found.append(EnsemblePlan(name, out / "ensembles" / name, tuple(members)))
    return found
