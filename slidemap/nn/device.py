"""Where, in what precision and on which engine the networks run: ``--device``, ``--precision``, ``--engine``.

Training, whole-scene prediction and patch prediction resolve all three here, in :func:`resolve_run` (the
one resolver; :func:`resolve_precision` is its precision-only face), so they take the same words (``auto``,
``32``, ``bf16``, ``16``; Lightning's ``32-true``, ``bf16-mixed``, ``16-mixed`` too), agree on what ``auto``
means and word a missing GPU alike. Runs record the canonical name (``32``, ``bf16``, ``16``, ``int8``).

**``auto`` is chosen by measurement on a CPU.** Whether bf16 autocast, the channels-last layout or ONNX
Runtime pays depends on the CPU, not on what it advertises: on a Zen 4 EPYC bf16 trained U-Net-16 2.8x
faster than fp32, on a Xeon with the same ``avx512_bf16`` flag it was slower (docs/performance.md). So
``auto`` times the actual network at the actual patch or tile size in each candidate setting for a second
or two (round-robin, so a burst of load on a shared machine hits every candidate alike) and keeps the
fastest only when it beats the reference setting (fp32, channels-last, torch) by :data:`MARGIN`; otherwise
the reference. The measured rates are cached per CPU model, thread count, torch / onnxruntime / slidemap
versions, network and size in the user's cache directory (:func:`cache_dir`), so the cost is paid once per
machine and network; ``slidemap info`` lists the cache. Settings that change the numbers (bf16, int8) are
candidates only where the caller says their validation F1 was measured within 0.01 of fp32.

On a GPU ``auto`` stays a rule: mixed precision (bf16 where supported, else fp16), torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
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
MARGIN = 1.10
"""How much faster than the reference setting a candidate must be for ``auto`` to take it."""
MEASURE_SECONDS = 1.5
"""Round-robin timing budget of one ``auto`` measurement (after one warm-up call per candidate)."""
CACHE_FORMAT = 1


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
    """Whether this CPU advertises native bf16 (AVX512-BF16 or AMX); advertised is not fast (module doc)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay with fp32
        return False


# --- what a network runs as ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One way to run a network: engine, precision and (torch) memory layout."""

    engine: str = "torch"
    precision: str = "32"
    channels_last: bool = True

    @property
    def name(self) -> str:
        """How logs, caches and summaries name it: the engine, or e.g. ``torch-bf16-nchw`` for torch."""
        if self.engine != "torch":
            return self.engine
        return f"torch-{'fp32' if self.precision == '32' else self.precision}" + ("" if self.channels_last
                                                                                    else "-nchw")


REFERENCE = Setting()
"""What ``auto`` keeps unless another setting is clearly faster: torch, fp32, channels-last."""


@dataclass
class Probe:
    """What ``auto`` measures: ``step(setting)`` builds a callable that runs the network once in that setting.

    The callable (e.g. one training step, one tile pass) returns how many units (chips, pixels) it processed.

    ``candidates`` are the settings to time, the reference first; ``excluded`` says why a setting is not a
    candidate (e.g. ``onnx-int8: validation F1 0.81 vs 0.86 in fp32``). ``key`` describes the network and
    size (architecture, arguments, bands, patch or tile size, batch): with the machine it keys the cache.
    """

    kind: str  # "train" | "predict"
    key: Mapping[str, Any]
    candidates: list[Setting]
    step: Callable[[Setting], Callable[[], float]]
    unit: str = "chips/s"
    scale: float = 1.0  # rates are units/s * scale (e.g. 1e-6 for Mpx/s)
    excluded: dict[str, str] = field(default_factory=dict)


@dataclass
class RunChoice:
    """What the resolver decided, and how: ``given`` (asked for), ``measured``, ``cached`` or ``rule``."""

    setting: Setting
    how: str
    rates: dict[str, float] = field(default_factory=dict)
    unit: str = ""
    excluded: dict[str, str] = field(default_factory=dict)
    cache: str | None = None

    @property
    def engine(self) -> str:
        """``setting.engine``: torch, onnx or onnx-int8."""
        return self.setting.engine

    @property
    def precision(self) -> str:
        """``setting.precision``: 32, bf16, 16 or int8."""
        return self.setting.precision

    @property
    def channels_last(self) -> bool:
        """``setting.channels_last``: torch's memory layout (channels-last or NCHW)."""
        return self.setting.channels_last

    def record(self) -> dict[str, Any]:
        """What a run summary or prediction.json keeps of the choice."""
        out: dict[str, Any] = {"engine": self.engine, "precision": self.precision,
                               "channels_last": self.channels_last, "setting": self.setting.name,
                               "how": self.how}
        if self.rates:
            out["rates"] = {k: round(v, 4) for k, v in self.rates.items()}
            out["unit"] = self.unit
        if self.excluded:
            out["excluded"] = dict(self.excluded)
        return out


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """The precision alone, by the rule (no measurement): see :func:`resolve_run`."""
    return resolve_run(precision, device).precision


def resolve_run(precision: str | None, device: torch.device | str, engine: str | None = "torch",
                channels_last: bool | None = None, probe: Probe | None = None,
                measure_seconds: float = MEASURE_SECONDS, use_cache: bool = True) -> RunChoice:
    """The one resolver: engine, precision and layout to run in on ``device``.

    - Given values are kept (checked): fp16 on a CPU, or an ONNX engine on a GPU or with a precision other
      than ``32``/``auto`` is a UserError.
    - ``auto`` on a GPU: mixed precision (bf16 where supported, else fp16), torch.
    - ``auto`` on a CPU with a ``probe``: the candidates the given values leave open are timed (or their
      rates read from the cache) and the fastest kept if it beats the reference by :data:`MARGIN`.
    - ``auto`` on a CPU without a probe (callers that cannot measure): fp32, torch, channels-last, the
      setting that is never much slower and never less exact.
    """
    name, engine = check_precision(precision), check_engine(engine)
    kind = torch.device(device).type
    if name == "16" and kind == "cpu":
        raise UserError("--precision 16: fp16 needs a GPU; on a CPU use 32 or bf16")
    if engine in ("onnx", "onnx-int8"):
        if kind != "cpu":
            raise UserError(f"--engine {engine}: slidemap runs ONNX Runtime on the CPU; use --device cpu or "
                            f"--engine torch")
        if name not in ("auto", "32"):
            raise UserError(f"--engine {engine} --precision {precision}: the ONNX engines run in their own "
                            f"precision (fp32, int8); leave --precision at auto or use --engine torch")
        return RunChoice(Setting(engine, "int8" if engine == "onnx-int8" else "32", False), "given")
    if kind == "cuda":
        if name == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "16"
        return RunChoice(Setting("torch", name, True if channels_last is None else channels_last),
                         "given" if precision not in (None, "auto") else "rule")
    fixed_engine = engine != "auto"
    if name != "auto" and (fixed_engine or probe is None) and channels_last is not None:
        return RunChoice(Setting("torch", name, channels_last), "given")
    if probe is None:
        return RunChoice(Setting("torch", "32" if name == "auto" else name,
                                 True if channels_last is None else channels_last),
                         "rule" if name == "auto" else "given")
    candidates = [s for s in probe.candidates
                  if (name == "auto" or s.precision == name)
                  and (not fixed_engine or s.engine == engine)
                  and (channels_last is None or s.engine != "torch" or s.channels_last == channels_last)]
    if not candidates:
        return RunChoice(Setting("torch", "32" if name == "auto" else name,
                                 True if channels_last is None else channels_last), "given")
    if len(candidates) == 1:
        return RunChoice(candidates[0], "given" if name != "auto" else "rule", excluded=dict(probe.excluded))
    rates, how, path = _rates(probe, candidates, measure_seconds, use_cache)
    best = pick(rates, candidates)
    return RunChoice(best, how, {s.name: rates[s.name] for s in candidates}, probe.unit,
                     dict(probe.excluded), str(path) if path else None)


def pick(rates: Mapping[str, float], candidates: list[Setting], margin: float = MARGIN) -> Setting:
    """The fastest candidate if it beats the first (the reference) by ``margin``, else the reference."""
    reference = candidates[0]
    fastest = max(candidates, key=lambda s: rates.get(s.name, 0.0))
    if rates.get(fastest.name, 0.0) >= margin * rates.get(reference.name, 0.0):
        return fastest
    return reference


def measure(steps: Mapping[str, Callable[[], float]], seconds: float = MEASURE_SECONDS,
            min_rounds: int = 2, max_rounds: int = 50) -> dict[str, float]:
    """Units per second of each step, timed in round-robin rounds.

    One warm-up call each, then rounds until ``seconds`` have passed (at least ``min_rounds``); the rate is units
    over time summed across the rounds.
    """
    for fn in steps.values():
        fn()
    units = dict.fromkeys(steps, 0.0)
    spent = dict.fromkeys(steps, 0.0)
    start = time.perf_counter()
    for rounds in range(1, max_rounds + 1):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            units[k] += fn()
            spent[k] += time.perf_counter() - t0
        if rounds >= min_rounds and time.perf_counter() - start >= seconds:
            break
    return {k: units[k] / spent[k] if spent[k] > 0 else 0.0 for k in steps}


def _rates(probe: Probe, candidates: list[Setting], seconds: float,
           use_cache: bool) -> tuple[dict[str, float], str, Path | None]:
    """Rates of ``candidates``, from the cache when every one is there, else measured (and cached)."""
    key = cache_key(probe.kind, probe.key)
    path = cache_dir() / "choices.json" if use_cache else None
    entries = load_cache(path) if path else {}
    cached = entries.get(key, {}).get("rates", {})
    if all(s.name in cached for s in candidates):
        return {s.name: float(cached[s.name]) for s in candidates}, "cached", path
    with torch.random.fork_rng(devices=[]):
        steps = {s.name: probe.step(s) for s in candidates}
        raw = measure(steps, seconds)
    rates = {k: v * probe.scale for k, v in raw.items()}
    if path:
        entry = entries.get(key, {"kind": probe.kind, "network": dict(probe.key), "machine": machine()})
        entry["rates"] = {**entry.get("rates", {}), **{k: round(v, 6) for k, v in rates.items()}}
        entry["unit"] = probe.unit
        entry["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        entries[key] = entry
        with contextlib.suppress(OSError):  # a read-only home: measure again next time
            save_cache(path, entries)
    return rates, "measured", path


# --- the machine and the cache ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
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


def threads() -> int:
    """Threads torch runs a network on."""
    return torch.get_num_threads()


def versions() -> dict[str, str]:
    """torch, onnxruntime (if installed) and slidemap versions: a new one can change every rate."""
    from slidemap import __version__

    out = {"torch": torch.__version__, "slidemap": __version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def machine() -> dict[str, Any]:
    """What a cached rate depends on besides the network: CPU, threads, versions."""
    cpu = cpu_info()
    return {"cpu": cpu["model_name"], "vendor": cpu["vendor"], "family": cpu["family"], "model": cpu["model"],
            "flags": cpu["flags"], "threads": threads(), **versions()}


def cache_key(kind: str, network: Mapping[str, Any]) -> str:
    """One line naming the machine, the versions, the network and the size."""
    return json.dumps({"kind": kind, **machine(), **dict(network)}, sort_keys=True, default=str)


def cache_dir() -> Path:
    """Where slidemap keeps what it measured and built for this user.

    ``$SLIDEMAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/slidemap``, else ``~/.cache/slidemap``.
    """
    if os.environ.get("SLIDEMAP_CACHE_DIR"):
        return Path(os.environ["SLIDEMAP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slidemap"


def load_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; a missing, unreadable or foreign file is an empty cache (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"),
                                                                                           dict):
        return {}
    return data["entries"]


def save_cache(path: Path, entries: Mapping[str, Any]) -> None:
    """Write the measurement cache atomically (entries as :func:`load_cache` returns them)."""
    from slidemap.formats.files import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": dict(entries)}, indent=1,
                                  sort_keys=True))


def describe_cache(path: Path | None = None) -> list[dict[str, Any]]:
    """The cached measurements, newest first, each with its pick (for ``slidemap info``)."""
    path = path or cache_dir() / "choices.json"
    rows = []
    for key, entry in load_cache(path).items():
        rates = entry.get("rates", {})
        net = entry.get("network", {})
        rows.append({"kind": entry.get("kind", "?"), "network": net, "rates": rates,
                     "unit": entry.get("unit", ""), "measured": entry.get("measured", ""),
                     "fastest": max(rates, key=rates.get) if rates else None,
                     "this_machine": _same_machine(key)})
    return sorted(rows, key=lambda r: r["measured"], reverse=True)


def _same_machine(key: str) -> bool:
    try:
        k = json.loads(key)
    except ValueError:
        return False
    return all(k.get(f) == v for f, v in machine().items())


def describe_setting(name: str) -> str:
    """A word on a setting's name for tables: ``torch-bf16`` -> ``torch, bf16 autocast, channels-last``."""
    if name in ("onnx", "onnx-int8"):
        return {"onnx": "ONNX Runtime, fp32", "onnx-int8": "ONNX Runtime, int8 (static, per channel)"}[name]
    m = re.fullmatch(r"torch-(fp32|bf16|16)(-nchw)?", name)
    if not m:
        return name
    prec = {"fp32": "fp32", "bf16": "bf16 autocast", "16": "fp16 autocast"}[m.group(1)]
    return f"torch, {prec}, {'NCHW' if m.group(2) else 'channels-last'}"
