"""The precision rule: ``auto`` is bf16 only where the device runs it fast, decided once per machine."""

from __future__ import annotations

import json

import pytest
import torch

from slidemap.errors import UserError
from slidemap.nn import device


def test_given_precisions_are_kept_and_fp16_on_a_cpu_is_refused():
    assert device.choose_precision("32-true", "cpu").record() == {"precision": "32", "how": "given",
                                                                   "why": "--precision 32"}
    assert device.resolve_precision("bf16-mixed", "cpu") == "bf16"
    with pytest.raises(UserError, match="--precision 16: fp16 needs a GPU"):
        device.resolve_precision("16", "cpu")
    with pytest.raises(UserError, match="--precision half: use auto, 32, bf16 or 16"):
        device.resolve_precision("half", "cpu")


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(device, "measure_bf16", lambda *a, **k: pytest.fail("measured"))
    choice = device.choose_precision("auto", "cpu")
    assert (choice.precision, choice.how) == ("32", "rule") and "no native bf16" in choice.why


@pytest.mark.parametrize(("bf16", "expected"), [(150.0, "bf16"), (149.0, "32")])
def test_auto_on_a_cpu_with_native_bf16_takes_bf16_from_1_5_times_fp32(monkeypatch, bf16, expected):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    found = device.Bf16Measurement(device.cpu_name(), torch.__version__, 2, 100.0, bf16, "2026-01-01")
    monkeypatch.setattr(device, "bf16_measurement", lambda remeasure=False: found)
    choice = device.choose_precision("auto", "cpu")
    assert choice.precision == expected and f"{bf16 / 100:.2f}x fp32" in choice.why


def test_the_measurement_is_cached_per_cpu_model_and_torch_version(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = device.measure_bf16

    def counted(*a, **k):
        calls.append(1)
        return real(seconds=0.05, size=64)

    monkeypatch.setattr(device, "measure_bf16", counted)
    first = device.bf16_measurement()
    assert first.fp32_gflops > 0 and first.bf16_gflops > 0 and first.cpu == device.cpu_name()
    assert device.bf16_measurement() == first and len(calls) == 1  # read back, not measured again
    cached = json.loads((tmp_path / "slidemap" / "precision.json").read_text())
    assert cached["torch"] == torch.__version__
    cached["torch"] = "0.0"  # another torch: measured again
    (tmp_path / "slidemap" / "precision.json").write_text(json.dumps(cached))
    device.bf16_measurement()
    assert len(calls) == 2
    device.bf16_measurement(remeasure=True)  # slidemap info
    assert len(calls) == 3


def test_cpu_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    info = device.cpu_info()
    monkeypatch.setattr(device, "cpu_info", lambda: {**info, "flags": ["avx2", "amx_bf16"]})
    assert device.cpu_has_native_bf16()
    monkeypatch.setattr(device, "cpu_info", lambda: {**info, "flags": ["avx2", "avx512f"]})
    assert not device.cpu_has_native_bf16()
