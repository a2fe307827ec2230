"""Where the networks run: the device (``--device``) and whether this CPU has bf16 (``--precision auto``).

Training, whole-scene prediction and Landslide4Sense patch prediction resolve both here, so the three
agree on what ``auto`` means and word a missing GPU alike.
"""

from __future__ import annotations

import torch

from slidemap.errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a UserError."""
    if isinstance(device, torch.device):
        return device
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU here; use --device cpu (or auto)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), which is when ``--precision auto``
    picks bf16 autocast: there it trains 1.4-3.2x and predicts 1.6x faster than fp32 (docs/performance.md);
    elsewhere bf16 would be emulated, slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay with fp32
        return False
