"""The model bundle as the networks see it: the validated description plus a way to rebuild the network.

The file format (and its safety: no pickled code, bounded sizes) lives in ``slidemap.formats.bundle``;
here a bundle becomes the very network it was saved from, with its normaliser and decision threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slidemap.errors import UserError
from slidemap.formats.bundle import BundleMeta, read_bundle_file, write_bundle_file
from slidemap.nn.normalise import Normaliser

if TYPE_CHECKING:
    from slidemap.nn.models import SegmentationNet


@dataclass
class Bundle:
    """A loaded bundle: description, weights and where it came from."""

    meta: BundleMeta
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def name(self) -> str:
        """How errors name this model: its file, or ``<in memory>``."""
        return str(self.path.resolve()) if self.path else "<in memory>"

    @property
    def bands(self) -> list[str]:
        """The input bands the network was trained on, in channel order."""
        return list(self.meta.bands)

    @property
    def patch_size(self) -> int:
        """Side of the training chips in pixels."""
        return self.meta.patch_size

    def threshold(self, which: str | float = "best") -> float:
        """Decision threshold: ``"best"`` (validation-F1 optimum), ``"0.5"`` or a number in (0, 1)."""
        th = self.meta.thresholds
        if isinstance(which, str) and which in th:
            return float(th[which])
        if which == "best":  # a bundle without a validation optimum
            return 0.5
        try:
            x = float(which)
        except ValueError:
            raise UserError(f"--threshold {which}: give 'best', '0.5' or a number between 0 and 1") from None
        if not 0 < x < 1:
            raise UserError(f"--threshold {which}: must be between 0 and 1")
        return x

    def normaliser(self) -> Normaliser:
        """The standardisation the network was trained with, in its band order."""
        return Normaliser.from_stats(self.bands, self.meta.stats, f"MODEL {self.name}",
                                     "train it again with this slidemap")

    def build_model(self) -> SegmentationNet:
        """The network with the bundle's weights, in eval mode.

        Weights that do not fit the description are a one-line UserError.
        """
        from slidemap.nn.models import build_model

        with torch.device("meta"):  # no random initialisation of weights about to be replaced
            model = build_model(self.meta.architecture, in_channels=len(self.bands), **self.meta.model_args)
        try:
            weights = {k: v.clone(memory_format=torch.contiguous_format) for k, v in self.state_dict.items()}
            model.load_state_dict(weights, assign=True)
            meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
            if meta:
                raise RuntimeError(f"weights missing:\n{', '.join(meta[:3])}")
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)[:120]
            raise UserError(f"MODEL {self.name}: its weights do not fit the network its metadata describes "
                            f"({first[:120]}); train the model again") from None
        return model.eval()


def load_bundle(path: str | Path, option: str = "MODEL") -> Bundle:
    """Open a bundle file (or a run folder's ``bundle.pt``) without executing code from it."""
    meta, state, p = read_bundle_file(path, option)
    return Bundle(meta, state, p)


def save_bundle(path: str | Path, model: torch.nn.Module, meta: BundleMeta) -> Bundle:
    """Write ``model``'s weights with ``meta`` atomically; returns the bundle as ``load_bundle`` would read it."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    return Bundle(meta, state, write_bundle_file(path, meta, state))
