"""Materialising what the runs share: each site prepared once, each chip set sampled once.

Before anything runs, every input file is opened (headers only) and each chip set can be counted.
Every step is skipped when its output already exists (the stages write atomically, so an output folder
that exists is complete), which is what makes a killed experiment resume without redoing work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from slidemap.experiments.plan import ChipPlan, Plan, SitePlan
from slidemap.experiments.spec import Site, Spec


def scene_of(plan: Plan, name: str) -> Path | None:
    """The prepared scene folder of a site (None for a Landslide4Sense site)."""
    site = plan.spec.sites[name]
    if site.scene is not None:
        return Path(site.scene)
    if site.l4s is not None:
        return None
    return plan.sites[name].scene


def materialise_site(site_plan: SitePlan, site: Site) -> str:
    """Prepare one site unless it is ready; returns what was done (for the log)."""
    from slidemap.stages import prepare

    if site.scene is not None:
        from slidemap.formats.scene import Scene

        Scene(site.scene, f"sites.{site_plan.name}.scene")
        return "given"
    if site.l4s is not None:
        return _import_l4s(site_plan, site)
    if (site_plan.scene / "scene.json").is_file():
        return "ready"
    if site.synth is not None:
        from slidemap.sources.synth import synthesize

        data = site_plan.folder / "data"
        if not (data / "areas.gpkg").is_file():
            synthesize(data, **site.synth.parameters())
        options = prepare.PrepareOptions(images=[data / "image.tif"], out=site_plan.scene, dem=data / "dem.tif",
                                         inventory=data / "inventory.gpkg", areas=data / "areas.gpkg")
    else:
        assert site.prepare is not None
        options = site.prepare.options(site_plan.scene)
    site_plan.folder.mkdir(parents=True, exist_ok=True)
    prepare.run(options)
    return "prepared"


def _import_l4s(site_plan: SitePlan, site: Site) -> str:
    from slidemap.sources.l4s import import_l4s

    p = site.l4s
    assert p is not None
    site_plan.folder.mkdir(parents=True, exist_ok=True)
    done = []
    if not (site_plan.train_chips / "chips.json").is_file():
        import_l4s(p.folder, site_plan.train_chips, list_file=p.train)
        done.append("train")
    if (p.test is not None or p.test_folder is not None) and not (site_plan.test_chips / "chips.json").is_file():
        import_l4s(p.test_folder or p.folder, site_plan.test_chips, list_file=p.test)
        done.append("test")
    return "imported " + "+".join(done) if done else "ready"


def materialise_chips(chip: ChipPlan, scene: Path | None) -> str:
    """Sample one chip set unless it exists (Landslide4Sense chip sets come from the import)."""
    from slidemap.stages import sample

    if (chip.folder / "chips.json").is_file() or scene is None:
        return "ready"
    chip.folder.parent.mkdir(parents=True, exist_ok=True)
    sample.run(sample.SampleOptions(scene=scene, out=chip.folder, size=chip.size, seed=chip.seed or 0,
                                    **chip.sampling.options()))
    return "sampled"


# --- before anything runs: the inputs open, the chip sets counted -----------------------------------

def check_inputs(spec: Spec, strict: bool = True) -> list[str]:
    """Open every input of every site (headers only) and describe it, one line each.

    The lines say what each file is (bands, size, pixel size, CRS; features of a vector). A missing or
    unreadable input is a UserError (``strict``), or a line starting ``MISSING`` (the dry run lists them all).
    """
    from slidemap.errors import UserError

    lines = []
    for name, site in spec.sites.items():
        for check in _site_checks(name, site):
            try:
                lines.append(check())
            except UserError as e:
                if strict:
                    raise
                lines.append(f"MISSING {e}")
    return lines


def _site_checks(name: str, site: Site) -> list[Callable[[], str]]:
    """One check per input of a site, each returning its description line."""
    from slidemap.formats.files import require_dir, require_file
    from slidemap.formats.gdal import is_raster, open_raster

    where = f"sites.{name}"
    if site.scene is not None:
        scene = site.scene

        def described_scene() -> str:
            from slidemap.formats.scene import Scene

            sc = Scene(scene, f"{where}.scene")
            for path, what in ((sc.stack_path, "stack.tif"), (sc.mask_path, "mask.tif")):
                with open_raster(path, f"{where}.scene {what}"):
                    pass
            return f"{where}.scene {sc.path}: {len(sc.bands)} bands ({', '.join(sc.bands)}), {len(sc.meta.areas)} areas"

        return [described_scene]
    if site.l4s is not None:
        l4s = site.l4s
        folders = [(f"{where}.l4s.folder", l4s.folder)]
        folders += [(f"{where}.l4s.test_folder", l4s.test_folder)] if l4s.test_folder is not None else []
        files = [(f"{where}.l4s.{k}", getattr(l4s, k)) for k in ("train", "test") if getattr(l4s, k) is not None]
        l4s_checks: list[Callable[[], str]] = [partial(_described, require_dir, f, o, "a folder") for o, f in folders]
        return l4s_checks + [partial(_described, require_file, f, o, "a list file") for o, f in files]
    if site.prepare is not None:
        p = site.prepare
        rasters = [(f"images.{i}", f) for i, f in enumerate(p.images)]
        rasters += [(f"pre_images.{i}", f) for i, f in enumerate(p.pre_images)]
        rasters += [("dem", p.dem)] if p.dem is not None else []
        checks: list[Callable[[], str]] = [partial(raster_header, f, f"{where}.prepare.{k}") for k, f in rasters]
        inventory = p.inventory
        assert inventory is not None  # PrepareSite requires it

        def described_inventory() -> str:
            option = f"{where}.prepare.inventory"
            if is_raster(inventory, option):
                return raster_header(inventory, option) + " (a label raster)"
            return vector_header(inventory, option)

        checks.append(described_inventory)
        if p.areas is not None:
            areas = p.areas
            checks.append(partial(vector_header, areas, f"{where}.prepare.areas"))
        return checks
    return [lambda: f"{where}: synthetic, made when the experiment runs"]


def _described(require: Callable[[Path, str], Path], path: Path, option: str, what: str) -> str:
    return f"{option} {require(path, option)}: {what}"


def raster_header(path: Path, option: str) -> str:
    """A raster's bands, size, pixel size in metres and CRS, read from its header (a UserError if it won't open)."""
    from slidemap.formats.gdal import open_raster
    from slidemap.raster.geo import pixel_size_m

    with open_raster(path, option) as ds:
        dx, dy = pixel_size_m(ds.crs, ds.transform, ds.height)
        return (f"{option} {path}: {ds.count} band(s), {ds.width} x {ds.height} px of {dx:.3g} x {dy:.3g} m, "
                f"{ds.crs.to_string()}")


def vector_header(path: Path, option: str) -> str:
    """A vector file's feature count, geometry type and CRS, from its header (a UserError if it won't open)."""
    import pyogrio

    from slidemap.errors import UserError
    from slidemap.formats.files import require_file

    require_file(path, option)
    try:
        info = pyogrio.read_info(path)
    except Exception as e:  # noqa: BLE001 - any reason OGR gives is the user's file; say it in one line
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"{option} {path}: not a vector file OGR can read ({reason})") from None
    return f"{option} {path}: {info['features']} {info['geometry_type'] or 'feature'}(s), {info['crs']}"


@dataclass(frozen=True)
class ChipCount:
    """A chip set's size and the split of its chips that training draws (for one seed)."""

    chips: int
    train: int
    val: int
    buffer: int


def count_chips(plan: Plan, chip: ChipPlan, seed: int) -> ChipCount | None:
    """The chips of a chip set and their split at ``seed``: read if sampled, sampled aside if its scene exists.

    Landslide4Sense patches are counted in their folder. None while the site is not prepared yet (the count
    comes after preparing). Sampling aside writes into a
    temporary folder that is removed, never into the experiment.
    """
    import tempfile

    from slidemap.errors import UserError
    from slidemap.formats.chips import ChipSet
    from slidemap.raster.split import split_chips

    def counted(folder: Path) -> ChipCount:
        cs = ChipSet(folder)
        s = split_chips(cs.windows or [{} for _ in range(len(cs))], plan.spec.training.val_fraction, seed)
        return ChipCount(len(cs), int(s.train.size), int(s.val.size), int(s.buffer.size))

    if (chip.folder / "chips.json").is_file():
        return counted(chip.folder)
    l4s = plan.spec.sites[chip.site].l4s
    if l4s is not None:  # independent patches: split patch by patch
        from slidemap.sources.l4s import find_patches

        try:
            n = len(find_patches(l4s.folder, l4s.train))
        except UserError:  # the folder is missing: the dry run lists it
            return None
        s = split_chips([{} for _ in range(n)], plan.spec.training.val_fraction, seed)
        return ChipCount(n, int(s.train.size), int(s.val.size), int(s.buffer.size))
    scene = scene_of(plan, chip.site)
    if scene is None or not (scene / "scene.json").is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="slidemap-dry-run-") as tmp:
        materialise_chips(ChipPlan(chip.site, chip.sampling, chip.size, chip.seed, chip.key, Path(tmp) / "chips"),
                          scene)
        return counted(Path(tmp) / "chips")
