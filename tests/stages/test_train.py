"""`slidemap train`: reproducible, resumable runs, honest validation split, safe bundles, clear errors.

Chip sets are tiny and built here (seeded): a 6x6 grid of 32 px windows with 25 % overlap over a noisy
3-band scene whose first band is brighter on landslide discs. Networks have 8 filters and run 2-3 epochs.
"""

from __future__ import annotations

import filecmp
import json
import pickle
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slidemap.cli import main
from slidemap.errors import UserError
from slidemap.formats.chips import ChipSet, write_chipset
from slidemap.formats.files import atomic_dir
from slidemap.nn.augment import apply_symmetries, draw_symmetries, transform
from slidemap.nn.bundle import load_bundle
from slidemap.nn.device import resolve_precision
from slidemap.nn.losses import build_loss, masked_bce
from slidemap.nn.models import build_model
from slidemap.nn.task import predict_chips
from slidemap.raster.metrics import best_threshold
from slidemap.raster.split import overlap_pairs, split_chips
from slidemap.stages import train as train_stage
from slidemap.stages.train import TrainOptions, TrainResult

BANDS = ("red", "nir", "dem")
FAST = dict(model="unet", filters=8, batch_size=8, epochs=3, progress=False, seed=3, min_chips=1)


def train(chips, out: Path, callbacks=(), **options) -> TrainResult:
    """Run the train stage with ``options`` (TrainOptions fields) and extra Lightning ``callbacks``."""
    return train_stage.run(TrainOptions(chips=chips, out=out, **options), callbacks=callbacks)


def make_chipset(folder: Path, n_side: int = 6, size: int = 32, step: int = 24, seed: int = 0,
                 landslides: bool = True, version: int | None = None) -> Path:
    """A grid chip set over a seeded synthetic scene; nodata in one corner (NaN image, 255 mask)."""
    rng = np.random.default_rng(seed)
    extent = step * (n_side - 1) + size
    scene = rng.normal(0, 1, (len(BANDS), extent, extent)).astype(np.float32)
    yy, xx = np.mgrid[0:extent, 0:extent]
    mask = np.zeros((extent, extent), np.uint8)
    if landslides:
        for _ in range(12):
            cy, cx, r = int(rng.integers(0, extent)), int(rng.integers(0, extent)), int(rng.integers(3, 8))
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    scene[0][mask == 1] += 2.5
    scene[0, :5, :5] = np.nan
    mask[:3, :3] = 255
    images, masks, windows = [], [], []
    for i in range(n_side):
        for j in range(n_side):
            r, c = i * step, j * step
            images.append(scene[:, r:r + size, c:c + size])
            masks.append(mask[r:r + size, c:c + size])
            windows.append({"row": r, "col": c, "size": size, "area": "train"})
    images = np.stack(images) * np.array([100, 50, 10], np.float32)[:, None, None] + 500
    stats = {b: {"mean": float(np.nanmean(images[:, k])), "std": float(np.nanstd(images[:, k])),
                 "min": float(np.nanmin(images[:, k])), "max": float(np.nanmax(images[:, k]))}
             for k, b in enumerate(BANDS)}
    with atomic_dir(folder, "chips.json") as tmp:
        write_chipset(tmp, images, np.stack(masks), windows,
                      {"bands": list(BANDS), "stats": stats, "sampler": {"method": "grid", "seed": seed}})
    if version is not None:
        meta = json.loads((folder / "chips.json").read_text())
        meta["format_version"] = version
        (folder / "chips.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    return make_chipset(tmp_path_factory.mktemp("chips") / "chips")


@pytest.fixture(scope="module")
def reference(chips, tmp_path_factory) -> Path:
    """One uninterrupted run, shared by the tests that compare against it (treat as read-only)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    train(chips, out, **FAST)
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- the run folder ----------------------------------------------------------------------------------

def test_run_folder_holds_everything(reference):
    names = {p.name for p in reference.iterdir()}
    assert {"bundle.pt", "config.yaml", "metrics.csv", "timing.csv", "learning_curve.png",
            "checkpoints"} <= names
    assert {p.name for p in (reference / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    lines = (reference / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_precision,val_recall,val_f1,val_iou,lr"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
    losses = [float(line.split(",")[1]) for line in lines[1:]]
    assert losses[-1] < losses[0]  # it learns something
    assert (reference / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_identical_metrics_and_weights(chips, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # and Lightning leaves nothing in the working directory
    again = tmp_path / "again"
    result = train(chips, again, **FAST)
    assert filecmp.cmp(reference / "metrics.csv", again / "metrics.csv", shallow=False)
    assert _same_weights(reference, again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    assert result.run == again and result.bundle == again / "bundle.pt"
    s = result.summary
    assert s.epochs_run == 3 and s.train_chips + s.val_chips + s.buffer_chips == 36
    assert 0 < s.best_threshold < 1 and s.val_f1_at_best >= s.val_f1_at_half
    # summary.json is the same summary
    assert train_stage.TrainSummary.model_validate_json((again / "summary.json").read_text()) == s


class _Interrupt(pl.Callback):
    """Fails as a killed process would: at the end of epoch ``at_epoch`` (default: the second), after its
    validation and metrics.csv row but before its checkpoints (Lightning runs checkpoint callbacks last), or
    at the first step of epoch 0 (``at_epoch=0``: no epoch finished)."""

    def __init__(self, at_epoch: int = 1):
        self.at_epoch = at_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.at_epoch == 0:
            raise RuntimeError("simulated crash")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_then_resumed_equals_uninterrupted(chips, reference, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(chips, out, callbacks=[_Interrupt()], **FAST)
    assert not (out / "bundle.pt").exists() and (out / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(UserError, match="unfinished run; pass --resume"):
        train(chips, out, **FAST)
    train(chips, out, resume=True, **FAST)
    assert _same_weights(reference, out)
    assert filecmp.cmp(reference / "metrics.csv", out / "metrics.csv", shallow=False)
    bundles = load_bundle(out).state_dict, load_bundle(reference).state_dict
    assert all(torch.equal(bundles[0][k], bundles[1][k]) for k in bundles[1])


def test_interrupt_after_training_says_how_to_finish(chips, reference, tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM between the last epoch and the bundle: the hint to --resume, which then writes the
    bundle of the uninterrupted run."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    best = train_stage.best_threshold
    monkeypatch.setattr(train_stage, "best_threshold", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(chips, out, **FAST)
    assert f"training interrupted; continue it with --resume --out {out}" in capsys.readouterr().err
    assert not (out / "bundle.pt").exists()
    monkeypatch.setattr(train_stage, "best_threshold", best)
    train(chips, out, resume=True, **FAST)
    a, b = load_bundle(out).state_dict, load_bundle(reference).state_dict
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_grid_runs_keep_only_the_bundle(chips, reference, tmp_path):
    """What the experiment runner asks for: no checkpoints left behind, no learning curve; the bundle and the
    log equal a default run's."""
    out = tmp_path / "lean"
    train(chips, out, keep_checkpoints=False, learning_curve=False, **FAST)
    names = {p.name for p in out.iterdir()}
    assert {"bundle.pt", "summary.json", "metrics.csv"} <= names
    assert "checkpoints" not in names and "learning_curve.png" not in names
    a, b = load_bundle(out).state_dict, load_bundle(reference).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert filecmp.cmp(reference / "metrics.csv", out / "metrics.csv", shallow=False)


def test_a_killed_run_has_a_checkpoint_of_every_finished_epoch_and_resumes_to_the_same_run(chips, reference,
                                                                                         tmp_path):
    """Stock Lightning checkpoints: best.ckpt and last.ckpt hold the whole training state after every epoch
    (written atomically, after the epoch's metrics.csv row). Killed at the end of the second epoch, before its
    checkpoint, the run has the first epoch's checkpoint and two rows, and resumes to the uninterrupted bundle
    and log."""
    out = tmp_path / "lean"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(chips, out, keep_checkpoints=False, learning_curve=False, callbacks=[_Interrupt()], **FAST)
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and "optimizer_states" in last and "loops" in last
    assert best["state_dict"].keys() == last["state_dict"].keys() and best["epoch"] <= last["epoch"]
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".ckpt")] == []
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # the header and the two finished epochs
    train(chips, out, keep_checkpoints=False, learning_curve=False, resume=True, **FAST)
    a, b = load_bundle(out).state_dict, load_bundle(reference).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert filecmp.cmp(reference / "metrics.csv", out / "metrics.csv", shallow=False)


def test_threshold_is_chosen_on_fp32_probabilities_of_the_best_weights(chips, tmp_path):
    """The threshold and its F1 come from one fp32 pass of the bundle's network over the validation chips."""
    from slidemap.nn.task import load_chip_tensors
    from slidemap.raster.metrics import confusion, scores

    out = tmp_path / "fp32"
    summary = train(chips, out, precision="32", **FAST).summary
    bundle, chipset = load_bundle(out), ChipSet(chips)
    val = torch.as_tensor(train_stage._split([chipset], 0.3, FAST["seed"]).val)
    images, masks = load_chip_tensors([chipset], bundle.bands, bundle.normaliser())
    prob, truth = predict_chips(bundle.build_model(), images, val, 32, torch.device("cpu")), masks[val].numpy()
    threshold, f1 = best_threshold(prob, truth)
    f1_half = scores(confusion(prob >= 0.5, truth))["f1"]
    if f1 <= f1_half:  # as train keeps 0.5 when no threshold beats it
        threshold, f1 = 0.5, f1_half
    assert (summary.best_threshold, summary.val_f1_at_best) == (round(threshold, 4), round(f1, 4))
    assert summary.val_f1_at_half == round(f1_half, 4)


def test_a_run_killed_in_its_first_epoch_starts_afresh_on_resume(chips, reference, tmp_path):
    """No epoch finished, so no checkpoint: --resume says so and trains from the start, to the same weights."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(chips, out, callbacks=[_Interrupt(at_epoch=0)], **FAST)
    assert not list(out.glob("checkpoints/*.ckpt"))
    with pytest.warns(UserWarning, match=r"stopped before its first epoch ended; starting it afresh"):
        train(chips, out, resume=True, **FAST)
    assert _same_weights(reference, out)


def test_finished_run_trained_on_with_resume_equals_longer_run(chips, reference, tmp_path):
    out = tmp_path / "run"
    train(chips, out, **{**FAST, "epochs": 2})
    finished = (out / "bundle.pt").read_bytes()
    with pytest.raises(UserError, match="finished run; choose another --out, or pass --resume"):
        train(chips, out, **FAST)
    with pytest.raises(UserError, match="lr was 0.001, now 0.01"):
        train(chips, out, resume=True, **{**FAST, "lr": 0.01})
    # a refused --resume leaves the finished run's bundle as it was
    assert (out / "bundle.pt").read_bytes() == finished
    train(chips, out, resume=True, **FAST)
    assert _same_weights(reference, out)


# --- the bundle ----------------------------------------------------------------------------------------

def test_bundle_round_trip(reference, chips):
    bundle = load_bundle(reference)
    meta = bundle.meta
    assert meta.architecture == "unet" and meta.model_args["filters"] == 8
    assert bundle.bands == list(BANDS) and bundle.patch_size == 32
    assert set(meta.stats) == set(BANDS) and meta.stats["red"].mean is not None
    assert meta.thresholds["0.5"] == 0.5 and 0 < meta.thresholds["best"] < 1
    assert meta.training["epochs_run"] == 3
    # --precision auto (the default) trains by the machine's rule, recorded by its canonical name
    assert meta.training["precision"] == resolve_precision("auto", "cpu")
    best = torch.load(reference / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    net = build_model("unet", in_channels=3, filters=8)
    net.load_state_dict({k.removeprefix("net."): v for k, v in best["state_dict"].items()})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(bundle.build_model()(x), net.eval()(x))


_EXECUTED = []


def _mark_executed():
    _EXECUTED.append(True)
    return {}


class _Payload:
    """An object whose unpickling would run code (here, harmlessly, `_mark_executed`)."""

    def __reduce__(self):
        return (_mark_executed, ())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bundle_with_pickled_payload_is_refused(reference, tmp_path):
    good = torch.load(reference / "bundle.pt", map_location="cpu", weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({**good, "extra": _Payload()}, evil)
    with pytest.raises(UserError, match="refused, it holds pickled Python objects"):
        load_bundle(evil)
    assert not _EXECUTED
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"meta_json": good["meta_json"], "payload": _Payload()}))
    with pytest.raises(UserError):
        load_bundle(raw)
    assert not _EXECUTED


# --- the split -----------------------------------------------------------------------------------------

def _check_split(windows, split):
    n = len(windows)
    train_, val, buf = set(split.train.tolist()), set(split.val.tolist()), set(split.buffer.tolist())
    assert not (train_ & val) and not (train_ & buf) and not (val & buf)
    assert train_ | val | buf == set(range(n)) and train_ and val
    for i in train_:
        for j in val:
            a, b = windows[i], windows[j]
            overlap = (a["row"] < b["row"] + b["size"] and b["row"] < a["row"] + a["size"]
                       and a["col"] < b["col"] + b["size"] and b["col"] < a["col"] + a["size"])
            assert not overlap, (a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offsets=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=2, max_size=60),
       val_fraction=st.floats(0.1, 0.5), seed=st.integers(0, 2**31))
def test_split_never_puts_overlapping_windows_on_both_sides(offsets, val_fraction, seed):
    windows = [{"row": r, "col": c, "size": 32} for r, c in offsets]
    try:
        split = split_chips(windows, val_fraction, seed)
    except UserError:
        assume(False)  # too few separate places to split at all: refused, which is right
    _check_split(windows, split)


def test_split_of_overlapping_grid_uses_blocks_and_buffer():
    windows = [{"row": 24 * i, "col": 24 * j, "size": 32} for i in range(12) for j in range(12)]
    split = split_chips(windows, 0.3, seed=1)
    _check_split(windows, split)
    assert split.method == "spatial blocks with buffer" and split.buffer.size > 0
    assert 0.2 <= split.val.size / len(windows) <= 0.4
    assert np.array_equal(split.val, split_chips(windows, 0.3, seed=1).val)  # seeded
    assert not np.array_equal(split.val, split_chips(windows, 0.3, seed=2).val)


def test_split_of_separate_windows_and_of_patches():
    separate = [{"row": 40 * i, "col": 0, "size": 32} for i in range(20)]
    split = split_chips(separate, 0.3, seed=0)
    assert split.method == "overlap groups" and split.val.size == 6 and split.buffer.size == 0
    patches = [{"source": f"image_{i}.h5"} for i in range(20)]
    split = split_chips(patches, 0.3, seed=0)
    assert split.method == "random patches" and (split.train.size, split.val.size) == (14, 6)
    pairs = overlap_pairs(np.array([0, 31, 32]), np.array([0, 0, 0]), np.array([32, 32, 32]))
    assert pairs.tolist() == [[0, 1], [1, 2]]  # 0 and 32 only touch


# --- augmentation and losses ---------------------------------------------------------------------------

def test_augmentation_gives_the_8_symmetries_same_for_image_and_mask():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert len({tuple(transform(x, s).flatten().tolist()) for s in range(8)}) == 8
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 2, 8, 8, generator=g)
    masks = (images[:, 0] > 0).to(torch.uint8)
    syms = draw_symmetries(40, torch.Generator().manual_seed(5))
    assert set(syms.tolist()) == set(range(8))
    out_images, out_masks = apply_symmetries(images, masks, syms)
    assert torch.equal(out_masks, (out_images[:, 0] > 0).to(torch.uint8))
    for i in range(40):
        assert torch.equal(out_images[i], transform(images[i], int(syms[i])))
    assert torch.equal(syms, draw_symmetries(40, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("name", ["bce", "bce+dice", "focal"])
def test_losses_ignore_nodata(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    mask = (torch.rand(2, 8, 8, generator=g) < 0.3).to(torch.uint8)
    mask[:, :2] = 255
    other = logits.clone()
    other[:, 0, :2] = 50.0  # changes only nodata pixels
    fn = build_loss(name)
    assert torch.isclose(fn(logits, mask), fn(other, mask))
    assert fn(logits, mask) > 0


def test_bce_matches_torch_on_valid_pixels_and_pos_weight_weighs_landslides():
    logits = torch.tensor([[[[0.3, -1.0], [2.0, 0.0]]]])
    mask = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.3, -1.0, 0.0]),
                                                                    torch.tensor([1.0, 0.0, 1.0]))
    assert torch.isclose(masked_bce(logits, mask), expected)
    assert masked_bce(logits, mask, pos_weight=5.0) > 2 * masked_bce(logits, mask)


# --- bad input -------------------------------------------------------------------------------------------

def _scene_chipset_without_windows(folder: Path) -> Path:
    """A chip set cut from a scene (chips.json names it) whose windows.csv was lost."""
    make_chipset(folder)
    meta = json.loads((folder / "chips.json").read_text())
    meta["scene"] = str(folder.parent / "scene")
    (folder / "chips.json").write_text(json.dumps(meta))
    (folder / "windows.csv").unlink()
    return folder


def test_bad_inputs_are_one_line_user_errors(chips, tmp_path):
    cases = [
        (dict(chips=tmp_path / "nope"), "no such chip set"),
        (dict(chips=make_chipset(tmp_path / "v9", version=9)), "slidemap.chips version 9 is not 1"),
        (dict(bands=["red", "swir"]), "--bands: swir not in chip set"),
        (dict(chips=make_chipset(tmp_path / "empty", landslides=False)), "no landslide pixel in the"),
        (dict(chips=_scene_chipset_without_windows(tmp_path / "nowin")),
         "nowin: windows.csv is missing, so overlapping chips cannot be kept apart"),
        (dict(loss="dice"), "--loss dice: use one of bce, bce\\+dice, focal"),
        (dict(pos_weight=-1.0), "--pos-weight -1.0: must be greater than 0"),
        (dict(val_fraction=1.0), "--val-fraction 1.0: must be less than 1"),
        (dict(epochs=0), "--epochs 0: must be greater than or equal to 1"),
        (dict(model="vgg"), "--model vgg: use one of unet, resunet"),
        (dict(precision="8"), "--precision 8"),
        (dict(resume=True), "holds no run to continue"),
    ]
    if not torch.cuda.is_available():
        cases.append((dict(device="cuda"), "--device cuda: torch sees no CUDA GPU"))
    for i, (kw, message) in enumerate(cases):
        args = {**FAST, "chips": chips, "out": tmp_path / f"run{i}", **kw}
        with pytest.raises(UserError, match=message) as err:
            train(**args)
        assert "\n" not in str(err.value)
        assert not (tmp_path / f"run{i}" / "bundle.pt").exists()


def test_batch_larger_than_training_set_warns_and_cli_runs(chips, tmp_path, capsys):
    with pytest.warns(UserWarning, match="--batch-size 500 is larger than the"):
        result = train(chips, tmp_path / "big", **{**FAST, "batch_size": 500, "epochs": 1})
    assert result.summary.epochs_run == 1
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: CHIPS")


# --- a real learning check on the synthetic study area ----------------------------------------------------

@pytest.mark.slow
def test_unet16_beats_brightness_baseline_on_synthetic_scene(tmp_path):
    from slidemap.sources.synth import synthesize
    from slidemap.stages import prepare, sample

    paths = synthesize(tmp_path / "synth", seed=0, size=1024, landslides=80)
    prepare.run(prepare.PrepareOptions(images=[paths["image"]], out=tmp_path / "scene", dem=paths["dem"],
                                       inventory=paths["inventory"], areas=paths["areas"]))
    chipset = sample.run(sample.SampleOptions(scene=tmp_path / "scene", out=tmp_path / "chips", method="grid",
                                              size=64, overlap=0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(chipset.path, tmp_path / "run", model="unet", filters=16, epochs=20, batch_size=16,
                       patience=0, progress=False, seed=0)
    # the baseline: mean optical brightness at its F1-best threshold on the same validation chips (the
    # same favour the network's best threshold gets)
    cs = ChipSet(chipset.path)
    split = split_chips(cs.windows, 0.3, seed=0)
    optical = [cs.bands.index(b) for b in ("blue", "green", "red", "red_edge", "nir")]
    brightness = np.nanmean(np.asarray(cs.images)[split.val][:, optical], axis=1)
    low, high = np.nanmin(brightness), np.nanmax(brightness)
    _, baseline_f1 = best_threshold(np.nan_to_num((brightness - low) / (high - low)),
                                    np.asarray(cs.masks)[split.val])
    unet_f1 = result.summary.val_f1_at_best
    # measured on 2 cores: U-Net 0.719 (BCE, 20 epochs, 244 chips of 64 px: 130 training, 73 validation,
    # 41 buffer), baseline 0.270; slack for other thread counts and later tuning of the synthetic scene
    assert unet_f1 == pytest.approx(0.719, abs=0.15), (unet_f1, baseline_f1)
    assert unet_f1 > baseline_f1 + 0.25, (unet_f1, baseline_f1)



# --- the levers for transfer between sites ----------------------------------------------------------

def test_photometric_augmentation_changes_image_bands_only_and_keeps_nodata():
    from slidemap.nn.augment import apply_photometric, draw_photometric

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g)
    x[:, :, 0, 0] = 0  # nodata: 0 in every band after standardising
    draws = draw_photometric(4, 3, torch.Generator().manual_seed(1))
    assert draws.shape == (4, 3, 3)
    gain, offset, gamma = draws[..., 0], draws[..., 1], draws[..., 2]
    assert float(gain.min()) >= 1 / (1.1 * 1.2) - 1e-6 and float(gain.max()) <= 1.1 * 1.2 + 1e-6
    assert float(offset.abs().max()) <= 0.1 and torch.all(gamma == gamma[:, :1])  # one tone curve per chip
    ratio = torch.tensor([5.0, 4.0, 0.0])  # the third band: terrain (no sensor gain)
    y = apply_photometric(x, draws, ratio)
    assert torch.equal(y[:, 2], x[:, 2]) and torch.all(y[:, :, 0, 0] == 0)
    assert not torch.allclose(y[:, :2], x[:, :2])
    # the identity draw (gain 1, offset 0, gamma 1) returns the chips as they were
    identity = torch.stack([torch.ones(4, 3), torch.zeros(4, 3), torch.ones(4, 3)], dim=-1)
    assert torch.allclose(apply_photometric(x, identity, ratio), x, atol=1e-5)
    # raw-space meaning: gain g on band value r = mean + std * x, gamma 1, offset 0 -> g * r
    k = 5.0
    one = torch.stack([torch.full((1, 3), 1.2), torch.zeros(1, 3), torch.ones(1, 3)], dim=-1)
    xs = torch.full((1, 3, 1, 1), 0.5)
    raw = k + xs  # in units of std: mean k, value k + x
    expected = (1.2 * raw - k)[0, 0]
    assert torch.allclose(apply_photometric(xs, one, torch.tensor([k, k, k]))[0, 0], expected)


def test_cosine_schedule_with_warmup_reaches_lr_then_falls_to_zero(chips, tmp_path):
    out = tmp_path / "cos"
    train(chips, out, lr_schedule="cosine", warmup_epochs=1, photometric=True, **{**FAST, "epochs": 4})
    lrs = [float(r.split(",")[-1]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    lr = FAST.get("lr", 1e-3)
    assert lrs[0] == pytest.approx(lr / 2) and lrs[1] == pytest.approx(lr)
    assert lrs[2] == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi / 3)))
    assert lrs[3] == pytest.approx(lr * 0.25)
    config = (out / "config.yaml").read_text()
    assert "lr_schedule: cosine" in config and "photometric: true" in config


def test_early_stopping_waits_for_min_epochs_and_watches_the_smoothed_loss(chips, tmp_path):
    from slidemap.nn.task import smoothed

    seen = []
    for loss in (1.0, 0.5, 0.9):
        seen.append(smoothed(seen[-1] if seen else None, loss, 0.5))
    assert seen == [1.0, 0.75, 0.825]  # the noisy third epoch still counts as better than the first
    assert smoothed(1.0, 0.5, 0.0) == 0.5
    quick = train(chips, tmp_path / "a", patience=1, **{**FAST, "epochs": 6, "lr": 0.5}).summary
    waited = train(chips, tmp_path / "b", patience=1, min_epochs=6, stop_smoothing=0.5,
                   **{**FAST, "epochs": 6, "lr": 0.5}).summary
    assert quick.epochs_run < 6 and waited.epochs_run == 6


def test_a_run_with_too_few_training_chips_stops_with_one_line_before_writing(chips, tmp_path):
    """36 chips, 30 % held out in spatial blocks: fewer than the default 32 left to train on."""
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(chips, out, **{**FAST, "min_chips": 32})
    message = str(e.value)
    assert message.startswith("--min-chips 32: ") and "training chips after the validation split" in message
    assert f"{chips} holds 36 chips" in message and "or lower --min-chips" in message
    assert "\n" not in message and not out.exists()
