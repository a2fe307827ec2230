"""The precision and engine vocabulary of train, predict and experiment specs, without importing torch.

A spec or an option is checked against these words when it is read; ``slidemap.nn.device`` resolves them
on the machine (and re-exports them).
"""

from __future__ import annotations

from slidemap.errors import UserError

PRECISIONS = ("32", "bf16", "16")
"""Canonical precisions: fp32; bf16 autocast (CPU with native bf16, or GPU); fp16 autocast (GPU only)."""
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "bf16-mixed": "bf16", "16-mixed": "16", "fp16": "16"}
ENGINES = ("torch", "onnx", "onnx-int8")
"""Inference engines: torch (any precision), ONNX Runtime fp32, ONNX Runtime static int8 (QDQ)."""


def check_precision(precision: str | None) -> str:
    """The canonical name of ``precision`` (``auto`` stays ``auto``); an unknown word is a UserError."""
    if precision is None or precision == "auto":
        return "auto"
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise UserError(f"--precision {precision}: use auto, 32, bf16 or 16 (16: GPU only)")
    return name


def precision_field(precision: str) -> str:
    """:func:`check_precision` for pydantic validators: a ValueError saying what is allowed."""
    try:
        return check_precision(precision)
    except UserError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None


def check_engine(engine: str | None) -> str:
    """``torch`` (also for None), ``onnx`` or ``onnx-int8``; anything else, ``auto`` included, is a UserError.

    ONNX Runtime runs only when asked: there is no automatic choice of engine.
    """
    if engine is None:
        return "torch"
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: use torch, onnx or onnx-int8 (ONNX Runtime only when asked)")
    return engine
