"""Materialising what the runs share: each site prepared once, each chip set sampled once.

Every step is skipped when its output already exists (the stages write atomically, so an output folder
that exists is complete), which is what makes a killed experiment resume without redoing work.
"""

from __future__ import annotations

from pathlib import Path

from slidemap.experiments.plan import ChipPlan, Plan, SitePlan
from slidemap.experiments.spec import Site


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
        p = site.prepare
        assert p is not None
        options = prepare.PrepareOptions(images=p.images, out=site_plan.scene, dem=p.dem, inventory=p.inventory,
                                         areas=p.areas, split=p.split, split_axis=p.split_axis,
                                         terrain=p.terrain, band_names=p.band_names)
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
    s = chip.sampling
    chip.folder.parent.mkdir(parents=True, exist_ok=True)
    sample.run(sample.SampleOptions(scene=scene, out=chip.folder, method=s.method, size=chip.size,
                                    overlap=s.overlap, count=s.count, require_landslide=s.require_landslide,
                                    max_nodata=s.max_nodata, seed=chip.seed or 0))
    return "sampled"
