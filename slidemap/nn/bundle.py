"""The model bundle: one file with everything prediction needs, and nothing that executes on load.

A bundle is a ``torch.save`` of a plain dict ``{"meta_json": str, "state_dict": {name: tensor}}``. It is
opened with ``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and
primitive containers, so a bundle shared between users cannot run code. ``meta`` holds:
``architecture`` (``unet``/``resunet``), ``model_args`` (keyword arguments of ``build_model``), ``bands``
(input names in order), ``stats`` (per-band mean/std used for standardisation), ``patch_size``,
``thresholds`` (``{"0.5": 0.5, "best": x}``), ``training`` (summary) and ``slidemap_version``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slidemap import __version__
from slidemap.errors import UserError
from slidemap.formats.files import atomic_file, require_file

BUNDLE_FORMAT = "slidemap.bundle"
BUNDLE_FORMAT_VERSION = 1


@dataclass
class Bundle:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    def threshold(self, which: str | float = "best") -> float:
        """Decision threshold: ``"best"`` (validation-F1 optimum), ``"0.5"`` or a number in (0, 1)."""
        th = self.meta.get("thresholds", {})
        if isinstance(which, str) and which in th:
            return float(th[which])
        try:
            x = float(which)
        except ValueError:
            raise UserError(f"--threshold {which}: give 'best', '0.5' or a number between 0 and 1") from None
        if not 0 < x < 1:
            raise UserError(f"--threshold {which}: must be between 0 and 1")
        return x

    def build_model(self) -> torch.nn.Module:
        """The network with the bundle's weights, in eval mode."""
        from slidemap.nn.models import build_model

        model = build_model(self.meta["architecture"], in_channels=len(self.bands), **self.meta["model_args"])
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_bundle(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write a bundle atomically; ``meta`` must be JSON-serialisable."""
    full = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "slidemap_version": __version__, **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"meta_json": json.dumps(full), "state_dict": state}, tmp)
    return Path(path)


def load_bundle(path: str | Path, option: str = "MODEL") -> Bundle:
    """Open a bundle without executing code from it; anything else is a one-line UserError."""
    p = Path(path)
    if p.is_dir():  # a run folder: take its bundle
        p = p / "bundle.pt"
    p = require_file(p, option)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{option} {p}: refused, it holds pickled Python objects, not only weights; "
                        f"a slidemap bundle never does (it may be unsafe)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{option} {p}: not a readable model bundle ({str(e).splitlines()[0][:120]}); "
                        f"it may be truncated, copy it again") from None
    if not isinstance(obj, dict) or "meta_json" not in obj or "state_dict" not in obj:
        raise UserError(f"{option} {p}: not a slidemap model bundle")
    meta = json.loads(obj["meta_json"])
    if meta.get("format") != BUNDLE_FORMAT or meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise UserError(f"{option} {p}: bundle format {meta.get('format')} v{meta.get('format_version')} "
                        f"is not {BUNDLE_FORMAT} v{BUNDLE_FORMAT_VERSION}; train it again")
    return Bundle(meta=meta, state_dict=obj["state_dict"])
