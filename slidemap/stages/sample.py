"""``slidemap sample``: cut training chips from a scene's train area(s) into a chip set.

Two samplers, as in the studies: a regular ``grid`` (study 000: 20 % overlap, study 002: none) and
``random`` integer pixel offsets (study 000: 5000 windows, kept only where they hold a landslide when
``require_landslide``). Every window lies wholly inside ONE train area (every pixel centre inside its
polygon), holds no pixel of any test area (a guard against overlapping polygons: a chip that touches a
test area leaks it into training), at most ``max_nodata`` pixels without imagery and at most a fraction
``max_unknown`` of pixels whose truth is unknown (a label raster's unlabelled pixels: imagery is there, and
the loss ignores those pixels, so a window with some of them still teaches from the rest). Where windows may
go is decided by the pure functions of ``slidemap.raster.sampling``; this stage wires them to a scene folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from rasterio.windows import Window

from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet, ChipsMeta, open_arrays, write_chipset
from slidemap.formats.files import atomic_dir, require_file
from slidemap.formats.gdal import open_raster, read_block
from slidemap.formats.scene import NODATA_MASK, Scene
from slidemap.progress import track
from slidemap.raster.geo import Grid, area_window, masked_area_km2, row_pixel_areas_m2
from slidemap.raster.sampling import bounding_box, fitting_windows, propose_windows
from slidemap.raster.tiling import check_patch_size
from slidemap.stages.options import StageOptions, StageResult

MAX_BBOX_BYTES = 2 << 30  # read a train area's stack box in one go below this, else window by window
MAX_UNKNOWN = 0.5
"""Default ``max_unknown``: the share of a window whose truth may be unknown (docs/real-scenes.md measures it)."""


class SampleOptions(StageOptions):
    """Everything ``slidemap sample`` takes (see ``slidemap sample --help``)."""

    scene: Path
    """Scene folder from `slidemap prepare`."""
    out: Path
    """Chip set folder to write."""
    method: Literal["grid", "random"] = "grid"
    """grid: regular windows; random: random windows."""
    size: int = 128
    """Patch size in pixels (a multiple of 16, at least 32)."""
    overlap: float = Field(0.0, ge=0.0, lt=1.0)
    """Grid overlap fraction in [0, 1) (study 000: 0.2; study 002: 0)."""
    count: int = Field(5000, ge=1)
    """Random windows to draw (distinct offsets; study 000: 5000)."""
    require_landslide: bool = False
    """Keep only windows holding a landslide pixel."""
    area: str | None = None
    """Train area to sample (default: all train areas)."""
    max_nodata: int = Field(0, ge=0)
    """Most pixels without imagery a window may hold."""
    max_unknown: float = Field(MAX_UNKNOWN, ge=0.0, lt=1.0)
    """Largest share of a window whose truth may be unknown (a label raster's unlabelled pixels; training
    ignores them), in [0, 1)."""
    seed: int = Field(0, ge=0)
    """Random seed (same seed: identical chips)."""

    @field_validator("size")
    @classmethod
    def _size(cls, size: int) -> int:
        try:
            check_patch_size(size)
        except UserError as e:
            raise ValueError(str(e).split(": ", 1)[1]) from None
        return size

    @model_validator(mode="after")
    def _nodata_below_window(self) -> SampleOptions:
        if self.max_nodata >= self.size * self.size:
            raise ValueError(f"max_nodata {self.max_nodata} must be below {self.size * self.size} for "
                             f"{self.size} px windows")
        return self

    @property
    def max_unknown_pixels(self) -> int:
        """``max_unknown`` as a count of a window's pixels."""
        return int(self.max_unknown * self.size * self.size)


class SampleResult(StageResult):
    """The chip set folder written and its chips.json."""

    path: Path
    meta: ChipsMeta


@dataclass
class _AreaBox:
    """One train area's bounding box in the scene and the arrays sampling needs over it."""

    name: str
    window: Window  # the box, in scene pixels
    inside: np.ndarray  # pixel centre in this train area
    mask: np.ndarray  # mask.tif over the box (1 / 0 / 255)
    fits: np.ndarray  # window offsets inside the area, clear of test areas, nodata and unknown <= limits
    usable: np.ndarray  # pixels of the area whose truth is known: counted for the landslide fraction
    row_m2: np.ndarray  # ground area of a pixel in each row of the box

    @property
    def row_off(self) -> int:
        return int(self.window.row_off)

    @property
    def col_off(self) -> int:
        return int(self.window.col_off)


def run(options: SampleOptions) -> SampleResult:
    """Sample chips from the train area(s) of a scene into a chip set folder (replaced atomically)."""
    scene = Scene(options.scene)
    for p, what in ((scene.stack_path, "stack.tif"), (scene.mask_path, "mask.tif"), (scene.areas_path, "areas.gpkg")):
        require_file(p, f"SCENE {scene.path}: {what}")
    train_names = _train_areas(scene, options.area)
    found = [_area_box(scene, name, options.size, options.max_nodata, options.max_unknown_pixels)
             for name in train_names]
    boxes = [b for b in found if b is not None]
    if not boxes:
        raise UserError(f"SCENE {scene.path}: train area(s) {', '.join(train_names)} cover no pixel of the "
                        f"scene; check areas.gpkg")
    ls_pixels = sum(int(((b.mask == 1) & b.usable).sum()) for b in boxes)
    if not scene.has_inventory or ls_pixels == 0:
        raise UserError(f"SCENE {scene.path}: no landslide pixel in train area(s) {', '.join(train_names)}; "
                        f"prepare the scene with an --inventory that covers the train area")
    fraction_area = ls_pixels / max(1, sum(int(b.usable.sum()) for b in boxes))

    rng = np.random.default_rng(options.seed)
    which, rows, cols, drawn = propose_windows([b.inside for b in boxes], [b.fits for b in boxes], options.method,
                                               options.size, options.overlap, options.count, rng)
    fitting = int(sum(int(b.fits.sum()) for b in boxes)) if options.method == "random" else int(rows.size)
    if options.require_landslide and rows.size:
        keep = np.array([_has_landslide(boxes[i], r, c, options.size)
                         for i, r, c in zip(which, rows, cols, strict=True)], dtype=bool)
        which, rows, cols = which[keep], rows[keep], cols[keep]
    if rows.size == 0:
        raise UserError(_no_window_message(scene, options, train_names))

    windows = [{"id": i, "row": boxes[w].row_off + int(r), "col": boxes[w].col_off + int(c), "size": options.size,
                "area": boxes[w].name, "source": ""}
               for i, (w, r, c) in enumerate(zip(which, rows, cols, strict=True))]
    sampler = {"method": options.method, "overlap": options.overlap if options.method == "grid" else None,
               "count": options.count if options.method == "random" else None,
               "require_landslide": options.require_landslide, "area": options.area, "max_nodata": options.max_nodata,
               "max_unknown": options.max_unknown, "seed": options.seed}
    with atomic_dir(options.out, "chips.json", [scene.path], "chip set") as tmp:
        images, masks = open_arrays(tmp, len(windows), len(scene.bands), options.size)
        assert masks is not None  # open_arrays makes masks unless told not to
        _fill_chips(scene, boxes, which, rows, cols, options.size, images, masks)
        ls = int(np.count_nonzero(masks == 1))
        valid = int(masks.size - np.count_nonzero(masks == NODATA_MASK))
        images.flush()
        masks.flush()
        summary = {"chips": len(windows), "drawn": drawn, "kept": len(windows), "fitting_windows": fitting,
                   "landslide_fraction_chips": ls / max(1, valid),
                   "landslide_fraction_train_area": fraction_area,
                   "known_truth_km2": _known_km2_in_chips(boxes, which, rows, cols, options.size),
                   "known_truth_km2_train_area": sum(masked_area_km2(b.usable, b.row_m2) for b in boxes)}
        meta = {"bands": scene.bands, "stats": scene.stats, "size": options.size, "sampler": sampler,
                "scene": str(scene.path.resolve()), "scene_crs": scene.meta.crs,
                "scene_transform": list(scene.transform)[:6], "summary": summary, "recipe": scene.meta.recipe}
        write_chipset(tmp, images, masks, windows, meta)
        del images, masks
    chips = ChipSet(options.out)
    return SampleResult(path=chips.path, meta=chips.meta)


def _train_areas(scene: Scene, area: str | None) -> list[str]:
    """Names of the areas to sample; a named test area is refused (its pixels would leak into training)."""
    if area is not None:
        a = scene.area(area)
        if a.role != "train":
            train = ", ".join(t.name for t in scene.areas_with_role("train")) or "none"
            raise UserError(f"--area {area}: is a {a.role} area; sampling it leaks it into training, "
                            f"name a train area ({train})")
        return [a.name]
    names = [a.name for a in scene.areas_with_role("train")]
    if not names:
        raise UserError(f"SCENE {scene.path}: has no train area; prepare it with --areas (role=train) or "
                        f"--split")
    return names


def _area_box(scene: Scene, name: str, size: int, max_nodata: int, max_unknown: int) -> _AreaBox | None:
    """Rasterise one train area over its bounding box, with the test-area guard and the nodata and unknown maps."""
    win = area_window(scene.area_geometry(name), Grid(scene.crs, scene.transform, scene.width, scene.height))
    if win is None:
        return None
    inside = scene.area_mask(name, window=win)
    box = bounding_box(inside)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    win = Window(int(win.col_off) + c0, int(win.row_off) + r0, c1 - c0, r1 - r0)
    inside = inside[r0:r1, c0:c1]
    test = np.zeros_like(inside)
    for t in scene.areas_with_role("test"):
        test |= scene.area_mask(t.name, window=win)
    mask = scene.read_mask(window=win)
    no_truth = mask == NODATA_MASK
    if scene.mask_marks_unknown:  # 255 in mask.tif is also imagery whose truth is unknown: the stack tells
        with open_raster(scene.stack_path, f"SCENE {scene.path}: stack.tif", need_crs=False) as ds:
            nodata = ds.read_masks(1, window=win) == 0  # stack.tif's nodata is NaN in every band at once
        unknown = no_truth & ~nodata
    else:
        nodata, unknown = no_truth, None
    fits = fitting_windows(inside, size, nodata, max_nodata, forbidden_mask=test, unknown_mask=unknown,
                           max_unknown=max_unknown)
    row_m2 = row_pixel_areas_m2(scene.crs, scene.transform, int(win.row_off), int(win.height))
    return _AreaBox(name, win, inside, mask, fits, inside & ~test & ~no_truth, row_m2)


def _known_km2_in_chips(boxes: list[_AreaBox], which: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                        size: int) -> float:
    """Ground area of the pixels with known truth that the chips hold, each pixel once (windows overlap)."""
    km2 = 0.0
    for i, box in enumerate(boxes):
        covered = np.zeros(box.mask.shape, dtype=bool)
        for r, c in zip(rows[which == i], cols[which == i], strict=True):
            covered[r:r + size, c:c + size] = True
        km2 += masked_area_km2(covered & (box.mask != NODATA_MASK), box.row_m2)
    return km2


def _has_landslide(box: _AreaBox, row: int, col: int, size: int) -> bool:
    return bool((box.mask[row:row + size, col:col + size] == 1).any())


def _fill_chips(scene: Scene, boxes: list[_AreaBox], which: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                size: int, images: np.ndarray, masks: np.ndarray) -> None:
    """Copy every window's stack and mask pixels into the (memory-mapped) chip arrays."""
    n_bands = len(scene.bands)
    where = f"SCENE {scene.path}: stack.tif"
    with open_raster(scene.stack_path, where, need_crs=False) as ds:
        if ds.count != n_bands:
            raise UserError(f"SCENE {scene.path}: stack.tif has {ds.count} bands but scene.json names "
                            f"{n_bands}; prepare the scene again")
        for i, box in enumerate(boxes):
            idx = np.flatnonzero(which == i)
            if idx.size == 0:
                continue
            nbytes = n_bands * int(box.window.height) * int(box.window.width) * 4
            stack = read_block(ds, where, None, box.window, "float32") if nbytes < MAX_BBOX_BYTES else None
            # a bar only where it is worth drawing: thousands of chips
            for j in track(idx, f"chips of {box.name}") if idx.size >= 2000 else idx:
                r, c = int(rows[j]), int(cols[j])
                if stack is not None:
                    chip = stack[:, r:r + size, c:c + size]
                else:
                    window = Window(box.col_off + c, box.row_off + r, size, size)
                    chip = read_block(ds, where, None, window, "float32")
                images[j] = chip  # NaN where there is no imagery; kept where only the truth is unknown
                masks[j] = box.mask[r:r + size, c:c + size]


def _no_window_message(scene: Scene, options: SampleOptions, names: list[str]) -> str:
    why = "holds a landslide pixel" if options.require_landslide else "fits"
    limits, known, wider = f"at most {options.max_nodata} px without imagery", "", []
    inv = scene.meta.inventory
    if scene.mask_marks_unknown and inv is not None:  # a label raster's unlabelled pixels
        limits += f", at most {options.max_unknown:.0%} of unknown truth"
        labelled, unknown = inv.labelled_km2 or 0.0, inv.unknown_km2 or 0.0
        known = f"; the truth is known on {labelled:g} of {labelled + unknown:g} km²"
        wider.append("a larger --max-unknown")
    if options.max_nodata == 0:
        wider.append("a larger --max-nodata")
    if options.method == "random" and options.require_landslide:
        wider.append("more --count")
    return (f"SCENE {scene.path}: no {options.size} px {options.method} window {why} in train area(s) "
            f"{', '.join(names)} "
            f"(wholly inside, clear of test areas, {limits}{known}); try a smaller --size"
            f"{''.join(' or ' + w for w in wider)}")
