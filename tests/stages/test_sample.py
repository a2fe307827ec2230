"""``slidemap sample``: window proposals (property tests) and chip sets cut from small hand-made scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet
from slidemap.formats.scene import Scene
from slidemap.raster import sampling as sampling_mod
from slidemap.raster.sampling import (
    draw_offsets,
    fitting_windows,
    grid_candidates,
    grid_offsets,
    grid_stride,
    propose_windows,
    windows_within,
)
from slidemap.stages import sample as sample_mod
from slidemap.stages.sample import SampleOptions

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SETTINGS = settings(max_examples=30, deadline=None)


def sample_chips(scene: Path, out: Path, **options) -> ChipSet:
    """Run the sample stage and open the chip set it wrote (its result describes that very folder)."""
    result = sample_mod.run(SampleOptions(scene=scene, out=out, **options))
    chips = ChipSet(result.path)
    assert result.path == Path(out) and result.meta == chips.meta
    return chips


# --- random area masks for property tests ------------------------------------------------------------

def random_masks(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular area (union of rectangles minus a hole), a forbidden patch and sparse nodata."""
    rng = np.random.default_rng(seed)
    area = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        area[r0:r0 + rng.integers(2, h + 1), c0:c0 + rng.integers(2, w + 1)] = True
    hr, hc = rng.integers(0, h), rng.integers(0, w)
    area[hr:hr + 2, hc:hc + 2] = False
    forbidden = np.zeros((h, w), bool)
    fr, fc = rng.integers(0, h), rng.integers(0, w)
    forbidden[fr:fr + 3, fc:fc + 3] = True
    nodata = rng.random((h, w)) < 0.03
    return area, forbidden, nodata


def grid_windows(area, size, overlap, nodata=None, max_nodata=0, forbidden=None) -> tuple[np.ndarray, np.ndarray]:
    """The grid windows (row, col) of one area, through the function ``slidemap sample`` calls."""
    fits = fitting_windows(area, size, nodata, max_nodata, forbidden)
    return propose_windows([np.asarray(area, dtype=bool)], [fits], "grid", size, overlap)[1:3]


def random_windows(area, size, count, rng, nodata=None, max_nodata=0, forbidden=None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random windows (row, col) of one area, through the function ``slidemap sample`` calls."""
    fits = fitting_windows(area, size, nodata, max_nodata, forbidden)
    return propose_windows([np.asarray(area, dtype=bool)], [fits], "random", size, count=count, rng=rng)[1:3]


def brute_fits(area, size, nodata=None, max_nodata=0, forbidden=None) -> np.ndarray:
    h, w = area.shape
    out = np.zeros((max(h - size + 1, 0), max(w - size + 1, 0)), bool)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            win = np.s_[r:r + size, c:c + size]
            ok = area[win].all()
            if forbidden is not None:
                ok &= not forbidden[win].any()
            if nodata is not None:
                ok &= nodata[win].sum() <= max_nodata
            out[r, c] = ok
    return out


@SETTINGS
@given(seed=st.integers(0, 10**6), h=st.integers(1, 24), w=st.integers(1, 24), size=st.integers(1, 7),
       limit=st.integers(0, 3))
def test_windows_within_equals_brute_force(seed, h, w, size, limit):
    mask = np.random.default_rng(seed).random((h, w)) < 0.2
    got = windows_within(mask, size, limit)
    want = np.array([[mask[r:r + size, c:c + size].sum() <= limit for c in range(w - size + 1)]
                     for r in range(h - size + 1)], bool).reshape(max(h - size + 1, 0), max(w - size + 1, 0))
    np.testing.assert_array_equal(got, want)


def test_windows_within_in_strips_equals_one_block(monkeypatch):
    mask = np.random.default_rng(3).random((300, 50)) < 0.1
    whole = windows_within(mask, 8, 2)
    monkeypatch.setattr(sampling_mod, "_STRIP_PIXELS", 64)  # strips of 4 * size rows
    np.testing.assert_array_equal(windows_within(mask, 8, 2), whole)
    assert whole.shape == (293, 43) and 0 < whole.sum() < whole.size


@pytest.mark.parametrize("start,stop,size,stride,want", [
    (0, 10, 4, 4, [0, 4, 6]),      # last window shifted back inside, not dropped
    (0, 12, 4, 4, [0, 4, 8]),      # exact fit: nothing added
    (5, 9, 4, 2, [5]),             # span == size: one window
    (0, 3, 4, 1, []),              # span shorter than a window
    (2, 130, 32, 26, [2, 28, 54, 80, 98]),
])
def test_grid_offsets(start, stop, size, stride, want):
    assert grid_offsets(start, stop, size, stride).tolist() == want


def test_grid_stride_follows_the_studies():
    assert grid_stride(128, 0.2) == 102 and grid_stride(64, 0.2) == 51 and grid_stride(32, 0.2) == 26
    assert grid_stride(128, 0.0) == 128 and grid_stride(16, 0.99) == 1


@SETTINGS
@given(seed=st.integers(0, 10**6), h=st.integers(4, 40), w=st.integers(4, 40),
       size=st.sampled_from([2, 3, 4, 8]), overlap=st.sampled_from([0.0, 0.2, 0.5, 0.75]),
       max_nodata=st.integers(0, 2))
def test_grid_windows_fit_and_follow_the_lattice(seed, h, w, size, overlap, max_nodata):
    area, forbidden, nodata = random_masks(seed, h, w)
    rows, cols = grid_windows(area, size, overlap, nodata, max_nodata, forbidden)
    for r, c in zip(rows, cols, strict=True):
        win = np.s_[r:r + size, c:c + size]
        assert area[win].all() and not forbidden[win].any() and nodata[win].sum() <= max_nodata
    # exactly the lattice windows that fit: none lost, none added
    cr, cc = grid_candidates(area, size, overlap)
    fits = brute_fits(area, size, nodata, max_nodata, forbidden)
    want = {(r, c) for r, c in zip(cr.tolist(), cc.tolist(), strict=True) if fits[r, c]}
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == want
    # the lattice steps by the stride and reaches the bounding box's far edges
    r_idx, c_idx = np.flatnonzero(area.any(1)), np.flatnonzero(area.any(0))
    if r_idx.size == 0 or min(r_idx[-1] - r_idx[0], c_idx[-1] - c_idx[0]) + 1 < size:
        assert cr.size == 0 and rows.size == 0
        return
    stride = grid_stride(size, overlap)
    for offsets, idx in ((np.unique(cr), r_idx), (np.unique(cc), c_idx)):
        assert offsets[0] == idx[0] and offsets[-1] + size == idx[-1] + 1
        steps = np.diff(offsets)
        assert (steps[:-1] == stride).all() and (steps[-1:] <= stride).all() and (steps > 0).all()


@SETTINGS
@given(r0=st.integers(0, 5), c0=st.integers(0, 5), h=st.integers(8, 40), w=st.integers(8, 40),
       size=st.sampled_from([4, 8]), overlap=st.sampled_from([0.0, 0.2, 0.5]))
def test_grid_covers_a_rectangle_to_its_edges(r0, c0, h, w, size, overlap):
    area = np.zeros((r0 + h + 3, c0 + w + 3), bool)
    area[r0:r0 + h, c0:c0 + w] = True
    rows, cols = grid_windows(area, size, overlap)
    covered = np.zeros_like(area)
    for r, c in zip(rows, cols, strict=True):
        covered[r:r + size, c:c + size] = True
    np.testing.assert_array_equal(covered, area)
    stride = grid_stride(size, overlap)
    per_axis = [int(np.ceil((n - size) / stride)) + 1 for n in (h, w)]
    assert rows.size == per_axis[0] * per_axis[1]


@SETTINGS
@given(seed=st.integers(0, 10**6), h=st.integers(4, 40), w=st.integers(4, 40),
       size=st.sampled_from([2, 4, 8]), count=st.integers(1, 60))
def test_random_windows_fit_distinct_and_counted(seed, h, w, size, count):
    area, forbidden, nodata = random_masks(seed, h, w)
    rows, cols = random_windows(area, size, count, np.random.default_rng(seed), nodata, 1, forbidden)
    fits = brute_fits(area, size, nodata, 1, forbidden)
    assert rows.size == min(count, int(fits.sum()))
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == rows.size
    assert fits[rows, cols].all()
    assert np.all(np.diff(rows * w + cols) > 0)  # sorted row-major
    again = random_windows(area, size, count, np.random.default_rng(seed), nodata, 1, forbidden)
    np.testing.assert_array_equal(np.stack(again), np.stack([rows, cols]))


@SETTINGS
@given(seed=st.integers(0, 10**6), n_areas=st.integers(1, 4), size=st.sampled_from([2, 3, 4]),
       overlap=st.sampled_from([0.0, 0.25, 0.5]), count=st.integers(1, 80), max_nodata=st.integers(0, 1))
def test_propose_windows_over_several_areas(seed, n_areas, size, overlap, count, max_nodata):
    """The function `slidemap sample` calls, given several areas (each its own box and masks) at once."""
    rng = np.random.default_rng(seed)
    shapes = rng.integers(4, 30, size=(n_areas, 2))
    masks = [random_masks(seed + k, int(h), int(w)) for k, (h, w) in enumerate(shapes)]
    areas = [a for a, _, _ in masks]
    fits = [fitting_windows(a, size, nodata, max_nodata, forbidden) for a, forbidden, nodata in masks]
    brute = [brute_fits(a, size, nodata, max_nodata, forbidden) for a, forbidden, nodata in masks]
    for f, b in zip(fits, brute, strict=True):
        np.testing.assert_array_equal(f, b)

    # grid: per area, the lattice windows that fit, area by area and row-major; ``proposed`` counts the
    # lattice before the fit check
    which, rows, cols, proposed = propose_windows(areas, fits, "grid", size, overlap)
    assert which.size == rows.size == cols.size and np.all(np.diff(which) >= 0)
    assert proposed == sum(grid_candidates(a, size, overlap)[0].size for a in areas)
    for i, (a, forbidden, nodata) in enumerate(masks):
        sel = which == i
        want_rows, want_cols = grid_windows(a, size, overlap, nodata, max_nodata, forbidden)
        np.testing.assert_array_equal(rows[sel], want_rows)
        np.testing.assert_array_equal(cols[sel], want_cols)
        assert brute[i][rows[sel], cols[sel]].all()
        cr, cc = grid_candidates(a, size, overlap)
        lattice = set(zip(cr.tolist(), cc.tolist(), strict=True))
        assert set(zip(rows[sel].tolist(), cols[sel].tolist(), strict=True)) == \
            {(r, c) for r, c in lattice if brute[i][r, c]}

    # random: min(count, all fitting offsets) distinct windows drawn over all areas at once, each fitting
    # its area, sorted by area then row-major, the same for the same seed
    which, rows, cols, drawn = propose_windows(areas, fits, "random", size, count=count,
                                               rng=np.random.default_rng(seed))
    total = sum(int(b.sum()) for b in brute)
    assert drawn == rows.size == min(count, total)
    keys = [(int(i), int(r), int(c)) for i, r, c in zip(which, rows, cols, strict=True)]
    assert keys == sorted(set(keys))  # distinct and ordered
    for i, r, c in keys:
        assert brute[i][r, c]
    again = propose_windows(areas, fits, "random", size, count=count, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(np.stack(again[:3]), np.stack([which, rows, cols]))
    with pytest.raises(ValueError, match="unknown sampler"):
        propose_windows(areas, fits, "poisson", size)


def test_draw_offsets_takes_every_cell_once_when_count_exceeds_them():
    rng = np.random.default_rng(0)
    maps = [rng.random((7, 9)) < 0.3, np.zeros((3, 3), bool), rng.random((5, 4)) < 0.5]
    which, rows, cols = draw_offsets(maps, 10**6, np.random.default_rng(1))
    got = sorted(zip(which.tolist(), rows.tolist(), cols.tolist(), strict=True))
    want = sorted((i, int(r), int(c)) for i, m in enumerate(maps) for r, c in np.argwhere(m))
    assert got == want


def test_random_draws_are_spread_uniformly():
    fits = np.ones((50, 50), bool)
    rows, cols = draw_offsets([fits], 1000, np.random.default_rng(7))[1:]
    assert rows.size == 1000
    # each 25 x 25 quadrant gets about a quarter of the draws
    quadrants = np.bincount((rows // 25) * 2 + cols // 25, minlength=4)
    assert quadrants.min() > 200 and quadrants.max() < 300


def test_fitting_windows_counts_unknown_truth_apart_from_nodata():
    area = np.ones((6, 6), bool)
    nodata = np.zeros((6, 6), bool)
    nodata[5, 5] = True
    unknown = np.zeros((6, 6), bool)
    unknown[:, :2] = True  # two unlabelled columns: a 3 px window at column c holds 3 * max(0, 2 - c)
    got = [fitting_windows(area, 3, nodata, 0, unknown_mask=unknown, max_unknown=k)[0, :4].tolist()
           for k in (0, 3, 6)]
    assert got == [[False, False, True, True], [False, True, True, True], [True, True, True, True]]
    # image nodata is its own limit, whatever the unknown truth allows
    assert not fitting_windows(area, 3, nodata, 0, unknown_mask=unknown, max_unknown=9)[3, 3]
    assert fitting_windows(area, 3, nodata, 1, unknown_mask=unknown, max_unknown=9)[3, 3]


def test_fitting_windows_counts_nodata_limit():
    area = np.ones((6, 6), bool)
    nodata = np.zeros((6, 6), bool)
    nodata[0, 0] = nodata[0, 1] = True
    assert fitting_windows(area, 3, nodata, 0)[0, :3].tolist() == [False, False, True]
    assert fitting_windows(area, 3, nodata, 1)[0, :3].tolist() == [False, True, True]
    assert fitting_windows(area, 3, nodata, 2)[0, :3].tolist() == [True, True, True]


# --- hand-made scene folders (the contract of slidemap/scene.py) -------------------------------------

def make_scene(folder: Path, *, width: int = 192, height: int = 160, crs: str = "EPSG:32633",
               transform: Affine | None = None, areas: list | None = None, landslides: bool = True,
               nodata_rows: tuple[int, int] = (140, 148), seed: int = 0) -> Path:
    """Write a tiny scene folder: 3-band stack, mask with landslide blocks and a nodata patch, areas.

    ``areas`` lists (name, role, (row0, row1, col0, col1)) boxes in pixels; by default a train area on the
    left and a test area on the right that overlaps it by 8 columns (to exercise the test-area guard).
    The nodata patch spans ``nodata_rows`` and columns 20-60.
    """
    import geopandas as gpd
    from shapely.geometry import box

    folder.mkdir(parents=True, exist_ok=True)
    transform = transform or from_origin(500000.0, 4100000.0, 10.0, 10.0)
    areas = areas if areas is not None else [("west", "train", (0, height, 0, 120)),
                                             ("east", "test", (0, height, 112, width))]
    rng = np.random.default_rng(seed)
    bands = ["red", "nir", "dem"]
    stack = rng.normal(100, 20, (3, height, width)).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    if landslides:
        for r, c in rng.integers(0, [height - 10, width - 10], size=(30, 2)):
            mask[r:r + rng.integers(3, 10), c:c + rng.integers(3, 10)] = 1
    mask[nodata_rows[0]:nodata_rows[1], 20:60] = 255
    stack[:, mask == 255] = np.nan
    profile = {"driver": "GTiff", "width": width, "height": height, "crs": crs, "transform": transform}
    with rasterio.open(folder / "stack.tif", "w", count=3, dtype="float32", nodata=np.nan, **profile) as ds:
        ds.write(stack)
        for i, name in enumerate(bands, 1):
            ds.set_band_description(i, name)
    with rasterio.open(folder / "mask.tif", "w", count=1, dtype="uint8", nodata=255, **profile) as ds:
        ds.write(mask, 1)
    geoms = [box(*(transform * (c0, r1)), *(transform * (c1, r0))) for _, _, (r0, r1, c0, c1) in areas]
    gpd.GeoDataFrame({"name": [a[0] for a in areas], "role": [a[1] for a in areas]}, geometry=geoms,
                     crs=crs).to_file(folder / "areas.gpkg", driver="GPKG")
    stats = {b: {"mean": float(np.nanmean(x)), "std": float(np.nanstd(x)), "min": float(np.nanmin(x)),
                 "max": float(np.nanmax(x))} for b, x in zip(bands, stack, strict=True)}
    meta = {"format": "slidemap.scene", "format_version": 1, "bands": bands, "crs": crs,
            "transform": list(transform)[:6], "width": width, "height": height,
            "pixel_size_m": [abs(transform.a), abs(transform.e)], "stats": stats,
            "areas": [{"name": a[0], "role": a[1]} for a in areas],
            "inventory": {"landslides": 30} if landslides else None}
    (folder / "scene.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def scene(tmp_path) -> Path:
    return make_scene(tmp_path / "scene")


def check_chips_match_scene(chips: ChipSet, scene_path: Path) -> None:
    """Every chip equals the scene's pixels at its window; no window leaves its train area or touches a
    test area."""
    sc = Scene(scene_path)
    stack, mask = sc.read(), sc.read_mask()
    tests = np.zeros((sc.height, sc.width), bool)
    for t in sc.areas_with_role("test"):
        tests |= sc.area_mask(t.name)
    inside = {a.name: sc.area_mask(a.name) for a in sc.areas_with_role("train")}
    assert len(chips.windows) == len(chips) > 0
    for i, w in enumerate(chips.windows):
        assert w["id"] == i and w["size"] == chips.size and w["source"] == ""
        win = np.s_[w["row"]:w["row"] + w["size"], w["col"]:w["col"] + w["size"]]
        np.testing.assert_array_equal(chips.images[i], stack[(slice(None), *win)])
        np.testing.assert_array_equal(chips.masks[i], mask[win])
        assert inside[w["area"]][win].all()
        assert not tests[win].any()


def test_grid_chips_equal_the_stack_and_stay_in_the_train_area(scene, tmp_path):
    chips = sample_chips(scene, tmp_path / "chips", method="grid", size=32, overlap=0.2)
    check_chips_match_scene(chips, scene)
    # stride 26 over the train box (160 x 120 px); the test area takes columns 112+, so the shifted last
    # column (88) is refused, and the nodata patch (rows 140-148, cols 20-60) leaves one window in row 128
    assert sorted({w["row"] for w in chips.windows}) == [0, 26, 52, 78, 104, 128]
    assert sorted({w["col"] for w in chips.windows}) == [0, 26, 52, 78]
    assert [w["col"] for w in chips.windows if w["row"] == 128] == [78]
    assert chips.images.dtype == np.float32 and chips.images.shape == (21, 3, 32, 32)
    assert not np.isnan(chips.images).any() and not (chips.masks == 255).any()  # max_nodata 0
    meta = chips.meta
    assert meta.bands == ["red", "nir", "dem"] and meta.size == 32 and meta.count == 21
    assert meta.stats == Scene(scene).stats
    assert meta.sampler == {"method": "grid", "overlap": 0.2, "count": None, "require_landslide": False,
                            "area": None, "max_nodata": 0, "max_unknown": 0.5, "seed": 0}
    assert meta.scene == str(scene.resolve()) and meta.scene_crs == "EPSG:32633"
    assert meta.scene_transform == list(Scene(scene).transform)[:6]
    s = meta.summary
    assert (s["chips"], s["kept"], s["drawn"], s["fitting_windows"]) == (21, 21, 30, 21)
    ls, valid = (chips.masks == 1).sum(), (chips.masks != 255).sum()
    assert s["landslide_fraction_chips"] == pytest.approx(ls / valid)
    sc = Scene(scene)
    m = sc.read_mask()
    usable = sc.area_mask("west") & ~sc.area_mask("east") & (m != 255)
    assert usable.sum() == 160 * 112 - 8 * 40
    assert s["landslide_fraction_train_area"] == pytest.approx((m[usable] == 1).mean())
    # km² of known truth: 10 m pixels; the chips' pixels counted once where windows overlap
    assert s["known_truth_km2_train_area"] == pytest.approx(usable.sum() * 100 / 1e6)
    covered = np.zeros_like(usable)
    for w in chips.windows:
        covered[w["row"]:w["row"] + 32, w["col"]:w["col"] + 32] = True
    assert s["known_truth_km2"] == pytest.approx((covered & (m != 255)).sum() * 100 / 1e6)
    assert 0 < s["known_truth_km2"] < s["known_truth_km2_train_area"]


def test_grid_edge_windows_shift_back_inside(tmp_path):
    # a 100 x 80 px train area, 32 px windows without overlap: 10, 42, 74 and the shifted 78 / 6, 38, 54
    scene = make_scene(tmp_path / "s", width=128, height=128, nodata_rows=(120, 124),
                       areas=[("t", "train", (10, 110, 6, 86)), ("x", "test", (112, 128, 0, 128))])
    chips = sample_chips(scene, tmp_path / "c", method="grid", size=32, overlap=0.0)
    assert sorted({w["row"] for w in chips.windows}) == [10, 42, 74, 78]
    assert sorted({w["col"] for w in chips.windows}) == [6, 38, 54]
    assert len(chips) == 12 and chips.meta.summary["drawn"] == 12
    check_chips_match_scene(chips, scene)


def test_random_chips_seeded_and_select_by_landslide(scene, tmp_path):
    def run(name: str, seed: int) -> ChipSet:
        return sample_chips(scene, tmp_path / name, method="random", size=32, count=40,
                            require_landslide=True, seed=seed)

    a, b, c = run("a", 3), run("b", 3), run("c", 4)
    for name in ("images.npy", "masks.npy", "windows.csv"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    assert a.windows != c.windows
    check_chips_match_scene(a, scene)
    s = a.meta.summary
    assert s["drawn"] == 40 and s["kept"] == len(a) < 40
    assert all((a.masks[i] == 1).any() for i in range(len(a)))
    assert len({(w["row"], w["col"]) for w in a.windows}) == len(a)  # distinct offsets
    assert s["landslide_fraction_chips"] > s["landslide_fraction_train_area"]  # why sampling selects


def test_random_without_selection_keeps_every_draw(scene, tmp_path):
    chips = sample_chips(scene, tmp_path / "c", method="random", size=32, count=25, seed=0)
    s = chips.meta.summary
    assert len(chips) == s["drawn"] == s["kept"] == 25 and s["fitting_windows"] > 1000
    assert chips.meta.sampler["overlap"] is None
    check_chips_match_scene(chips, scene)


def test_random_asks_more_than_fit(tmp_path):
    scene = make_scene(tmp_path / "s", width=80, height=80, nodata_rows=(76, 78),
                       areas=[("t", "train", (0, 40, 0, 40)), ("x", "test", (40, 80, 0, 80))])
    chips = sample_chips(scene, tmp_path / "c", method="random", size=32, count=100)
    assert len(chips) == 81 and chips.meta.summary["fitting_windows"] == 81  # all 9 x 9 offsets
    assert len({(w["row"], w["col"]) for w in chips.windows}) == 81


def test_nodata_limit(tmp_path):
    # one row of 40 nodata pixels (row 40, cols 20-60); 32 px windows every 16 px hold 0, 12 or 28 of them
    scene = make_scene(tmp_path / "s", width=128, height=96, nodata_rows=(40, 41),
                       areas=[("t", "train", (0, 96, 0, 128))])
    strict = sample_chips(scene, tmp_path / "a", method="grid", size=32, overlap=0.5, max_nodata=0)
    loose = sample_chips(scene, tmp_path / "b", method="grid", size=32, overlap=0.5, max_nodata=27)
    looser = sample_chips(scene, tmp_path / "c", method="grid", size=32, overlap=0.5, max_nodata=28)
    assert (len(strict), len(loose), len(looser)) == (5 * 7 - 2 * 4, 5 * 7 - 2 * 2, 5 * 7)
    assert not (strict.masks == 255).any()
    assert sorted({int((m == 255).sum()) for m in looser.masks}) == [0, 12, 28]
    np.testing.assert_array_equal(np.isnan(looser.images).all(axis=1), looser.masks == 255)


def test_unknown_truth_is_limited_apart_from_nodata_and_keeps_its_imagery(tmp_path):
    """A label raster's unlabelled pixels (255 in mask.tif over valid imagery) count against max_unknown,
    a share of the window, not against max_nodata; their imagery goes into the chips, their truth stays 255."""
    scene = make_scene(tmp_path / "s", width=128, height=64, nodata_rows=(60, 61),
                       areas=[("t", "train", (0, 64, 0, 128))])
    with rasterio.open(scene / "mask.tif", "r+") as ds:
        mask = ds.read(1)
        mask[0:32, 0:48] = 255  # unlabelled; the stack keeps its values there
        ds.write(mask, 1)
    meta = json.loads((scene / "scene.json").read_text())
    meta["inventory"] = {"kind": "raster", "labelled_km2": 0.05, "unknown_km2": 0.0154}
    (scene / "scene.json").write_text(json.dumps(meta))
    # 32 px windows at rows 0, 32 x cols 0, 32, 64, 96; the nodata row (60, cols 20-60) refuses (32, 0) and
    # (32, 32); of the unknown block (0, 0) holds 100 %, (0, 32) 50 %
    counts = {}
    for share in (0.0, 0.25, 0.5, 0.99):
        chips = sample_chips(scene, tmp_path / f"c{share}", method="grid", size=32, max_unknown=share)
        counts[share] = sorted((w["row"], w["col"]) for w in chips.windows)
        check_chips_match_scene(chips, scene)
    plain = [(0, 64), (0, 96), (32, 64), (32, 96)]
    assert counts == {0.0: plain, 0.25: plain, 0.5: sorted([*plain, (0, 32)]), 0.99: sorted([*plain, (0, 32)])}
    i = [(w["row"], w["col"]) for w in chips.windows].index((0, 32))
    assert (chips.masks[i] == 255).sum() == 16 * 32 and not np.isnan(chips.images[i]).any()
    s = chips.meta.summary
    assert s["known_truth_km2"] == pytest.approx((5 * 32 * 32 - 16 * 32) * 100 / 1e6)
    assert chips.meta.sampler["max_unknown"] == 0.99
    with rasterio.open(scene / "mask.tif", "r+") as ds:
        mask[10, 100] = 255  # now no 64 px window is free of unknown truth
        ds.write(mask, 1)
    with pytest.raises(UserError, match=r"at most 0 px without imagery, at most 0% of unknown truth; the truth is "
                                        r"known on 0.05 of 0.0654 km²\); try a smaller --size or a larger "
                                        r"--max-unknown or a larger --max-nodata"):
        sample_chips(scene, tmp_path / "none", method="grid", size=64, max_unknown=0.0)
    with pytest.raises(UserError, match="--max-unknown 1.0: must be less than 1"):
        SampleOptions(scene=scene, out=tmp_path / "x", max_unknown=1.0)


def test_per_window_reads_give_the_same_bytes(scene, tmp_path, monkeypatch):
    a = sample_chips(scene, tmp_path / "a", method="random", size=32, count=30, seed=1)
    monkeypatch.setattr(sample_mod, "MAX_BBOX_BYTES", 0)
    b = sample_chips(scene, tmp_path / "b", method="random", size=32, count=30, seed=1)
    assert (a.path / "images.npy").read_bytes() == (b.path / "images.npy").read_bytes()


def test_several_train_areas_and_a_named_one(tmp_path):
    areas = [("north", "train", (0, 64, 0, 128)), ("mid", "test", (64, 80, 0, 128)),
             ("south", "train", (80, 160, 0, 128))]
    scene = make_scene(tmp_path / "s", width=128, height=160, areas=areas, nodata_rows=(156, 158))
    both = sample_chips(scene, tmp_path / "a", method="grid", size=32)
    # north: rows 0, 32 x cols 0-96 = 8; south: rows 80, 112, 128 (shifted) minus 2 on the nodata patch = 10
    assert [w["area"] for w in both.windows] == ["north"] * 8 + ["south"] * 10
    check_chips_match_scene(both, scene)
    south = sample_chips(scene, tmp_path / "b", method="random", size=32, count=50, area="south")
    assert {w["area"] for w in south.windows} == {"south"} and len(south) == 50
    assert south.meta.sampler["area"] == "south"
    check_chips_match_scene(south, scene)


def test_geographic_scene(tmp_path):
    scene = make_scene(tmp_path / "s", crs="EPSG:4326", transform=from_origin(91.76, 22.49, 9e-5, 9e-5))
    chips = sample_chips(scene, tmp_path / "c", method="random", size=32, count=20, seed=2)
    assert len(chips) == 20 and chips.meta.scene_crs == "EPSG:4326"
    check_chips_match_scene(chips, scene)


def test_out_is_replaced_atomically(scene, tmp_path):
    out = tmp_path / "chips"
    sample_chips(scene, out, method="random", size=32, count=5)
    chips = sample_chips(scene, out, method="random", size=64, count=3)
    assert len(chips) == 3 and chips.size == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips", "scene"]  # no temporary left


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 20}, "--size 20: height and width must be multiples of 16"),
    ({"size": 16}, "--size 16: height and width must be multiples of 16"),
    ({"area": "east"}, "--area east: is a test area; sampling it leaks"),
    ({"area": "nowhere"}, "--area nowhere: no such area"),
    ({"overlap": 1.0}, "--overlap 1.0"),
    ({"method": "poisson"}, "--method poisson"),
    ({"method": "random", "count": 0}, "--count 0"),
    ({"max_nodata": -1}, "--max-nodata -1"),
    ({"size": 256}, "no 256 px grid window fits"),
])
def test_bad_options_are_one_line_errors(scene, tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match) as e:
        sample_chips(scene, tmp_path / "c", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "c").exists()


def test_bad_scenes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such scene folder"):
        sample_chips(tmp_path / "missing", tmp_path / "c")
    no_train = make_scene(tmp_path / "a", areas=[("x", "test", (0, 160, 0, 192))])
    with pytest.raises(UserError, match="has no train area"):
        sample_chips(no_train, tmp_path / "c", size=32)
    no_inventory = make_scene(tmp_path / "b", landslides=False)
    with pytest.raises(UserError, match="no landslide pixel in train area"):
        sample_chips(no_inventory, tmp_path / "c", size=32)
    scene = make_scene(tmp_path / "d")
    with pytest.raises(UserError, match="--out .*d: is an input of this command"):
        sample_chips(scene, scene, size=32)
    (scene / "mask.tif").unlink()
    with pytest.raises(UserError, match="mask.tif"):
        sample_chips(scene, tmp_path / "c", size=32)
    assert not (tmp_path / "c").exists()


def test_cli_prints_the_summary(scene, tmp_path, capsys):
    rc = main(["sample", str(scene), "--out", str(tmp_path / "c"), "--method", "random", "--size", "32",
               "--count", "30", "--require-landslide", "--seed", "5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "30 drawn" in out and "% in the chips" in out and "% in the train area" in out
    assert "km² in the chips of 1.76 km² in the train area" in out  # (160 x 112 - 8 x 40) px of 100 m²
    assert main(["sample", str(scene), "--out", str(tmp_path / "e"), "--size", "32", "--max-unknown", "0.25"]) == 0
    assert ChipSet(tmp_path / "e").meta.sampler["max_unknown"] == 0.25
    assert main(["sample", str(scene), "--out", str(tmp_path / "d"), "--area", "east"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --area east") and err.count("\n") == 1


def test_cli_defaults_are_the_stage_defaults():
    """The sample command's defaults are SampleOptions' own, so a user gets the same chips from either."""
    import typer.main

    from slidemap.cli import app

    command = typer.main.get_command(app).commands["sample"]
    for param in command.params:
        field = SampleOptions.model_fields.get(param.name)
        if field is not None and not field.is_required():
            assert param.default == field.default, param.name


def test_scene_from_prepare(tiny_scene, tmp_path):
    """The end-to-end contract: a scene `slidemap prepare` wrote (conftest's tiny study area: train area
    64 x 128 px on the left, two landslides in it, two test areas on the right)."""
    grid = sample_chips(tiny_scene, tmp_path / "g", method="grid", size=32)
    assert len(grid) == 8 and sorted({w["col"] for w in grid.windows}) == [0, 32]
    check_chips_match_scene(grid, tiny_scene)
    rand = sample_chips(tiny_scene, tmp_path / "r", method="random", size=32, count=200,
                        require_landslide=True, seed=0)
    s = rand.meta.summary
    assert s["drawn"] == 200 and 0 < s["kept"] < 200
    assert all((m == 1).any() for m in rand.masks)
    assert s["landslide_fraction_chips"] > 2 * s["landslide_fraction_train_area"]
    check_chips_match_scene(rand, tiny_scene)


@pytest.mark.skipif(not (DATA / "chattogram-s2" / "s2_4band.tif").exists(), reason="../shared/data absent")
def test_real_geographic_scene_with_irregular_nodata(tmp_path):
    """A crop of the real Sentinel-2 scene (EPSG:4326, nodata 0 over an irregular footprint)."""
    from rasterio.windows import Window

    with rasterio.open(DATA / "chattogram-s2" / "s2_4band.tif") as src:
        win = Window(256, 768, 256, 256)
        pixels = src.read(window=win).astype(np.float32)
        transform, crs = src.window_transform(win), src.crs.to_string()
    nodata = (pixels == 0).all(axis=0)
    assert 0.05 < nodata.mean() < 0.95, "crop should straddle the footprint edge"
    folder = make_scene(tmp_path / "s", width=256, height=256, crs=crs, transform=transform,
                        areas=[("t", "train", (0, 256, 0, 160)), ("x", "test", (0, 256, 160, 256))])
    mask = np.where(nodata, 255, 0).astype(np.uint8)
    mask[~nodata & (pixels[3] > np.percentile(pixels[3][~nodata], 97))] = 1  # bright NIR as "landslides"
    pixels[:, nodata] = np.nan
    with rasterio.open(folder / "stack.tif", "r+") as ds:
        ds.write(pixels[:3])
    with rasterio.open(folder / "mask.tif", "r+") as ds:
        ds.write(mask, 1)
    chips = sample_chips(folder, tmp_path / "c", method="random", size=32, count=50, require_landslide=True)
    s = chips.meta.summary
    assert 0 < len(chips) <= 50 and s["drawn"] == 50
    assert not (chips.masks == 255).any() and not np.isnan(chips.images).any()
    check_chips_match_scene(chips, folder)
