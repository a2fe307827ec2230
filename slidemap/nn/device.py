"""Where and in what precision the networks run: ``--device`` and ``--precision``, resolved once.

Training, whole-scene prediction and patch prediction resolve both here, so the three take the same words
(``auto``, ``32``, ``bf16``, ``16``; Lightning's ``32-true``, ``bf16-mixed``, ``16-mixed`` too), agree on
what ``auto`` means and word a missing GPU alike. Runs record the canonical name (``32``, ``bf16``, ``16``).
"""

from __future__ import annotations

import torch

from slidemap.errors import UserError

PRECISIONS = ("32", "bf16", "16")
"""Canonical precisions: fp32; bf16 autocast (CPU with native bf16, or GPU); fp16 autocast (GPU only)."""
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "bf16-mixed": "bf16", "16-mixed": "16", "fp16": "16"}
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
AUTOCAST_DTYPE = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


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
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay with fp32
        return False


def check_precision(precision: str | None) -> str:
    """The canonical name of ``precision`` (``auto`` stays ``auto``); an unknown word is a UserError."""
    if precision is None or precision == "auto":
        return "auto"
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise UserError(f"--precision {precision}: use auto, 32, bf16 or 16 (16: GPU only)")
    return name


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """The precision to run in on ``device``: ``auto`` is mixed precision on a GPU (bf16 where supported,
    else fp16), bf16 on a CPU with native bf16 and fp32 elsewhere; fp16 on a CPU is a UserError."""
    name = check_precision(precision)
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "16"
        return "bf16" if cpu_has_native_bf16() else "32"
    if name == "16" and kind == "cpu":
        raise UserError("--precision 16: fp16 needs a GPU; on a CPU use 32 or bf16")
    return name
