"""The networks: shapes, size errors, capacity (overfit one batch), rebuild from config, fast CPU paths."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta
from slidemap.nn.bundle import load_bundle, save_bundle
from slidemap.nn.models import (
    MODELS,
    build_model,
    check_patch_size,
    count_layers,
    count_parameters,
    parameter_table,
)

L4S = Path(__file__).resolve().parents[3] / "shared" / "data" / "landslide4sense-sample"


def blob_batch(seed: int, n: int = 4, size: int = 32, bands: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images and masks of two random discs each: nothing to learn but the batch itself."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(2):
            cy, cx = torch.randint(4, size - 4, (2,), generator=g)
            radius = 2 + 4 * torch.rand(1, generator=g)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2).float()
            masks[i, 0] = torch.maximum(masks[i, 0], disc)
    return torch.randn(n, bands, size, size, generator=g), masks


def overfit(name: str, filters: int, steps: int = 400) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
    x, y = blob_batch(0)
    model = build_model(name, in_channels=3, filters=filters)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.02:
            break
    return model, losses


# Measured on CPU: unet (8 filters) reaches BCE < 0.02 in ~260-280 Adam steps, resunet (8) in ~85.
OVERFIT = {"unet": 8, "resunet": 8}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on shared, busy cores two threads wait on each other (10x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def overfitted() -> dict[str, tuple[torch.nn.Module, list[float]]]:
    return {name: overfit(name, filters) for name, filters in OVERFIT.items()}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("bands", [3, 5, 6, 14])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shape_is_input_shape(name, bands, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels=bands, filters=8).eval()
    with torch.no_grad():
        out = model(torch.randn(2 if size < 128 else 1, bands, size, size))
    assert out.shape == (2 if size < 128 else 1, 1, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_non_square_input(name):
    model = build_model(name, in_channels=4, filters=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 4, 32, 96)).shape == (1, 1, 32, 96)


@pytest.mark.parametrize("size", [0, 16, 20, 31, 33, 40, 100, 127])
def test_bad_patch_size_is_one_line(size):
    with pytest.raises(UserError) as err:
        check_patch_size(size)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"patch size {size}:")
    assert "multiples of 16 px, at least 32 (32, 48, 64, 80, ...)" in message


@pytest.mark.parametrize("size", [32, 48, 64, 128, 256])
def test_good_patch_sizes(size):
    check_patch_size(size)


def test_forward_refuses_sizes_in_the_same_words():
    unet = build_model("unet", in_channels=3, filters=4)
    with pytest.raises(ValueError, match=r"unet cannot take a 40x40 px input: height and width must be "
                                         r"multiples of 16 px, at least 32 \(32, 48, 64, 80, \.\.\.\)"):
        unet(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match="cannot take a 16x64 px"):
        unet(torch.zeros(1, 3, 16, 64))
    resunet = build_model("resunet", in_channels=3, filters=4).eval()
    assert resunet(torch.zeros(1, 3, 40, 40)).shape == (1, 1, 40, 40)  # 3 down-sampling steps: 8 px
    with pytest.raises(ValueError, match=r"resunet cannot take a 36x36 px input: .* multiples of 8 px"):
        resunet(torch.zeros(1, 3, 36, 36))
    with pytest.raises(ValueError, match="built for 3 bands"):
        unet(torch.zeros(1, 5, 32, 32))


def test_build_model_errors():
    with pytest.raises(UserError, match="--model segformer: unknown architecture; use one of unet, resunet"):
        build_model("segformer", 3)
    with pytest.raises(UserError, match="--filters 0"):
        build_model("unet", 3, filters=0)
    with pytest.raises(UserError, match="model option dropout: resunet takes only filters"):
        build_model("resunet", 3, dropout=0.1)
    with pytest.raises(UserError, match="dropout 1.0"):
        build_model("unet", 3, dropout=1.0)


@pytest.mark.parametrize("name,kwargs", [("unet", {"filters": 4, "batch_norm": True, "dropout": 0.2}),
                                         ("unet", {"filters": 4, "batch_norm": False, "dropout": 0.0}),
                                         ("resunet", {"filters": 4})])
def test_config_rebuilds_the_same_network(name, kwargs):
    torch.manual_seed(3)
    model = build_model(name, in_channels=5, **kwargs)
    assert model.config == kwargs  # every constructor argument but in_channels, nothing else
    args = json.loads(json.dumps(model.config))  # what the bundle stores and reads back
    torch.manual_seed(3)
    again = build_model(name, in_channels=5, **args)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded init: same weights
    torch.manual_seed(4)
    other = build_model(name, in_channels=5, **args).state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


@pytest.mark.parametrize("name", list(MODELS))
def test_bundle_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, in_channels=4, filters=4).eval()
    bands = ["b", "g", "r", "dem"]
    meta = BundleMeta(architecture=name, model_args=model.config, bands=bands, patch_size=32,
                      stats={b: {"mean": 0.0, "std": 1.0} for b in bands})  # a bundle now needs stats
    save_bundle(tmp_path / "bundle.pt", model, meta)
    rebuilt = load_bundle(tmp_path / "bundle.pt").build_model()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)


def test_layer_and_parameter_counts():
    # Study 002: U-Net 19 conv + 4 transposed conv, 512 maps after the last encoder block (filters 32);
    # ResU-Net 15 conv layers.
    unet32 = build_model("unet", in_channels=4, filters=32)
    assert count_layers(unet32) == {"conv": 19, "projection": 0, "transposed": 4}
    assert unet32.bottleneck[-2].out_channels == 512
    assert count_layers(build_model("resunet", 4)) == {"conv": 15, "projection": 7, "transposed": 3}
    assert count_parameters(build_model("unet", 5, 16)) == 1_941_393
    assert count_parameters(build_model("resunet", 5, 16)) == 505_633
    # Batch norm in the U-Net: conv biases dropped, BN scale and shift added (18 BN layers).
    with_bn = build_model("unet", 5, 16, batch_norm=True)
    bn_channels = sum(m.num_features for m in with_bn.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert count_parameters(with_bn) == 1_941_393 + bn_channels
    assert "| unet | 16 | 1,941,393 |" in parameter_table(band_counts=(5,), filter_counts=(16,))


@pytest.mark.parametrize("name", list(OVERFIT))
@pytest.mark.slow
def test_overfits_one_batch(name, overfitted):
    _, losses = overfitted[name]
    assert losses[0] > 0.5
    assert losses[-1] < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OVERFIT))
def test_channels_last_and_bf16_agree_with_fp32(name, overfitted):
    model, _ = overfitted[name]
    model.eval()
    x, y = blob_batch(0)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        fast = model_cl(x_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model_cl(x_cl)
    assert reference.abs().max() > 2  # trained logits, not the near-constant output of a fresh network
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
    assert half.dtype == torch.bfloat16
    prob, prob_half = reference.sigmoid(), half.float().sigmoid()
    assert (prob_half - prob).abs().max() < 0.05
    assert ((prob_half > 0.5) == (prob > 0.5)).float().mean() > 0.995


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_under_bf16_autocast_and_channels_last(name):
    torch.manual_seed(0)
    kwargs = {"batch_norm": True, "dropout": 0.1} if name == "unet" else {}
    model = build_model(name, in_channels=3, filters=4, **kwargs).to(memory_format=torch.channels_last)
    x, y = blob_batch(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.binary_cross_entropy_with_logits(model(x.to(memory_format=torch.channels_last)).float(), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif(not L4S.is_dir(), reason="needs ../shared/data/landslide4sense-sample (real patches)")
@pytest.mark.parametrize("name", list(MODELS))
def test_real_landslide4sense_patch(name):
    h5py = pytest.importorskip("h5py")
    with h5py.File(L4S / "img" / "image_1.h5", "r") as f:
        image = np.asarray(f["img"], dtype=np.float32)  # (128, 128, 14), channels last
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    torch.manual_seed(0)
    model = build_model(name, in_channels=14, filters=8).eval()
    with torch.no_grad():
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (1, 1, 128, 128)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs", [{}, {"batch_norm": True}])
def test_unet_inference_path_computes_the_same_function(kwargs):
    """Without autograd the U-Net pools by element-wise maxima and splits the decoder's first convolution
    instead of concatenating: the same logits up to float rounding, NaN propagated alike."""
    torch.manual_seed(0)
    net = build_model("unet", in_channels=5, filters=8, **kwargs).eval()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 96, 64)
    with torch.enable_grad():
        reference = net(x)
    with torch.inference_mode():
        fast = net(x)
        fast_cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert reference.requires_grad and not fast.requires_grad
    assert reference.abs().max() > 0.01  # a live network, not all zeros
    torch.testing.assert_close(fast, reference.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_cl, reference.detach(), rtol=0, atol=1e-5)
    x[0, :, 10, 10] = float("nan")
    with torch.inference_mode():
        assert torch.isnan(net(x)[0]).any() and not torch.isnan(net(x)[1]).any()


@pytest.mark.slow
def test_resunet_trains_channels_last_at_any_batch_size():
    """torch 2.13's CPU backward of a stride-2 1x1 convolution on channels-last tensors corrupts the heap
    at some batch sizes (a ResU-Net quick grid died with "double free or corruption"); the ResU-Net's
    projection shortcut samples first instead. Run in a subprocess: a heap corruption kills the process."""
    import subprocess
    import sys

    code = """
import torch
from slidemap.nn.models import build_model
torch.manual_seed(0)
net = build_model("resunet", 4, 8).to(memory_format=torch.channels_last)
opt = torch.optim.Adam(net.parameters(), 1e-3)
for b in [16, 5, 3, 1, 7, 9, 11, 13]:
    x = torch.randn(b, 4, 32, 32).contiguous(memory_format=torch.channels_last)
    opt.zero_grad(); net(x).float().mean().backward(); opt.step()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
