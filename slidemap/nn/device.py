"""Where and in what precision the networks run: ``--device`` and ``--precision``.

Training, whole-scene prediction and patch prediction resolve both here, so they take the same words
(``auto``, ``32``, ``bf16``, ``16``; Lightning's ``32-true``, ``bf16-mixed``, ``16-mixed`` too), agree on what
``auto`` means and word a missing GPU alike. Runs record the canonical name (``32``, ``bf16``, ``16``).

**``auto`` is a rule, not a race.** bf16 autocast where the device runs it fast, fp32 otherwise:

- on a CUDA GPU, bf16 where the GPU supports it;
- on a CPU, bf16 where the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo) *and* its
  bf16 matrix multiply runs at least :data:`BF16_SPEEDUP` times its fp32 one. Advertised is not fast (a Xeon
  with ``avx512_bf16`` trained slower in bf16, docs/performance.md), so the ratio is measured once per CPU
  model and torch version (about a second), kept in the user's cache directory and shown, measured again,
  by ``slidemap info``.

The rule never depends on the network, the patch size or the load of the moment, so every run of an
experiment gets the same precision (an experiment resolves it once and records it).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from slidemap.errors import UserError
from slidemap.nn.precision import (  # noqa: F401 - the vocabulary, re-exported where it was
    ENGINES,
    PRECISION_ALIASES,
    PRECISIONS,
    check_engine,
    check_precision,
    precision_field,
)

LIGHTNING_PRECISION: dict[str, Literal["32-true", "bf16-mixed", "16-mixed"]] = {
    "32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
AUTOCAST_DTYPE = {"32": None, "bf16": torch.bfloat16, "16": torch.float16, "int8": None}
BF16_SPEEDUP = 1.5
"""How many times its fp32 matmul rate a CPU's bf16 matmul must reach for ``auto`` to train and predict in bf16."""
MATMUL_SIZE = 1024
"""Side of the square matrices timed for the bf16/fp32 ratio."""
CACHE_FILE = "precision.json"


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


def cpu_info() -> dict[str, Any]:
    """The CPU as /proc/cpuinfo names it (model name, vendor, family, model) and the flags that matter.

    The flags are those that decide which kernels the networks get.
    """
    info: dict[str, Any] = {"model_name": platform.processor() or platform.machine(), "vendor": "",
                            "family": "", "model": "", "flags": []}
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
              "amx_tile", "avx_vnni")
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in first.splitlines()))
    info.update(model_name=fields.get("model name", info["model_name"]), vendor=fields.get("vendor_id", ""),
                family=fields.get("cpu family", ""), model=fields.get("model", ""))
    flags = set(fields.get("flags", "").split())
    info["flags"] = [f for f in wanted if f in flags]
    return info


def cpu_has_native_bf16() -> bool:
    """Whether this CPU advertises native bf16 arithmetic (AVX512-BF16 or AMX-BF16); advertised is not fast."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_info()["flags"]))


def cpu_name() -> str:
    """One line naming the CPU for figures and records: model name, vendor, family and model numbers."""
    c = cpu_info()
    return f"{c['model_name']} ({c['vendor']} family {c['family']} model {c['model']})"


def versions() -> dict[str, str]:
    """torch, onnxruntime (if installed) and slidemap versions: a new one can change what runs fastest."""
    from importlib.metadata import PackageNotFoundError, version

    from slidemap.version import __version__

    out = {"torch": torch.__version__, "slidemap": __version__}
    try:
        out["onnxruntime"] = version("onnxruntime")
    except PackageNotFoundError:
        pass
    return out


def cache_dir() -> Path:
    """Where slidemap keeps what it measured on this machine: ``$XDG_CACHE_HOME/slidemap`` or ``~/.cache/slidemap``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slidemap"


# --- the CPU's bf16 rule ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Bf16Measurement:
    """The bf16 and fp32 matmul rates of one CPU model under one torch version, and their ratio."""

    cpu: str
    torch: str
    threads: int
    fp32_gflops: float
    bf16_gflops: float
    measured: str

    @property
    def speedup(self) -> float:
        """bf16 rate over fp32 rate."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0


def measure_bf16(seconds: float = 1.0, size: int = MATMUL_SIZE) -> Bf16Measurement:
    """Time ``size``² matrix multiplies in fp32 and bf16, alternating, for about ``seconds`` in all."""
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    pairs = {"32": (a32, b32), "bf16": (a16, b16)}
    spent = dict.fromkeys(pairs, 0.0)
    count = dict.fromkeys(pairs, 0)
    for a, b in pairs.values():  # warm-up: kernels chosen, memory touched
        torch.mm(a, b)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(count.values()) < 3:
        for k, (a, b) in pairs.items():
            t0 = time.perf_counter()
            torch.mm(a, b)
            spent[k] += time.perf_counter() - t0
            count[k] += 1
    flops = 2.0 * size ** 3
    rate = {k: count[k] * flops / spent[k] / 1e9 for k in pairs}
    return Bf16Measurement(cpu_name(), torch.__version__, torch.get_num_threads(), round(rate["32"], 1),
                           round(rate["bf16"], 1), time.strftime("%Y-%m-%d"))


def bf16_measurement(remeasure: bool = False) -> Bf16Measurement:
    """This CPU's bf16/fp32 rates: from the cache when it holds this CPU and torch version, else measured.

    A cache that cannot be read or written (a read-only home) only means measuring again next time.
    """
    path = cache_dir() / CACHE_FILE
    if not remeasure:
        try:
            cached = Bf16Measurement(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            cached = None
        if cached is not None and cached.cpu == cpu_name() and cached.torch == torch.__version__:
            return cached
    found = measure_bf16()
    try:
        from slidemap.formats.files import atomic_file

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(asdict(found), indent=1) + "\n")
    except OSError:
        pass
    return found


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why: ``given`` (asked for) or ``rule`` (``auto``), with the rule's evidence."""

    precision: str
    how: str
    why: str

    def record(self) -> dict[str, str]:
        """What summaries, prediction.json and experiment.json keep of the choice."""
        return asdict(self)


def choose_precision(precision: str | None, device: torch.device | str) -> PrecisionChoice:
    """The precision to run in on ``device``: a given one checked, ``auto`` by the rule (module doc)."""
    name = check_precision(precision)
    kind = torch.device(device).type
    if name == "16" and kind == "cpu":
        raise UserError("--precision 16: fp16 needs a GPU; on a CPU use 32 or bf16")
    if name != "auto":
        return PrecisionChoice(name, "given", f"--precision {name}")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "rule", "CUDA GPU with bf16")
        return PrecisionChoice("32", "rule", "CUDA GPU without bf16")
    if not cpu_has_native_bf16():
        return PrecisionChoice("32", "rule", "this CPU has no native bf16 (avx512_bf16 or amx_bf16)")
    m = bf16_measurement()
    fast = m.speedup >= BF16_SPEEDUP
    return PrecisionChoice("bf16" if fast else "32", "rule",
                           f"bf16 matmul {m.speedup:.2f}x fp32 on this CPU ({'at least' if fast else 'below'} "
                           f"{BF16_SPEEDUP}x; measured {m.measured}, slidemap info)")


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """The canonical precision (``32``, ``bf16`` or ``16``) to run in on ``device``: see :func:`choose_precision`."""
    return choose_precision(precision, device).precision
