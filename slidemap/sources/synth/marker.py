"""``synth.json``: the marker of a synthetic study area folder.

It says what made the files (format, slidemap version, every parameter) and what they are (name, role,
CRS, nominal pixel size), so that an experiment over several sites can read each site's settings back,
and so that ``--out`` recognises an earlier synthetic study area it may replace. No timestamps: the same
parameters give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from slidemap.errors import UserError
from slidemap.sources.synth.params import SynthParams

MARKER = "synth.json"
SYNTH_FORMAT: Final = "slidemap.synth"
SYNTH_FORMAT_VERSION: Final = 1


class SynthFile(BaseModel):
    """One file of the folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str  # image, pre_image, dem, inventory, areas
    name: str
    crs: str  # e.g. EPSG:32723
    pixel_size_m: float | None = None  # nominal pixel size of a raster in metres; None for vectors


class _Header(BaseModel):
    format: Literal["slidemap.synth"] = SYNTH_FORMAT
    format_version: Literal[1] = SYNTH_FORMAT_VERSION
    slidemap_version: str


class SynthMarker(SynthParams, _Header):
    """The header, then every parameter of :class:`SynthParams`, then the files written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: list[SynthFile]

    @property
    def params(self) -> SynthParams:
        """The parameters alone, as :func:`~slidemap.sources.synth.writing.synthesize` takes them."""
        return SynthParams(**{name: getattr(self, name) for name in SynthParams.model_fields})


def read_marker(folder: str | Path, option: str = "DATA") -> SynthMarker:
    """The marker of a synthetic study area folder, or a one-line UserError if it has none or a bad one."""
    from slidemap.formats.files import read_json, require_dir

    path = require_dir(folder, option, MARKER, "synthetic study area") / MARKER
    try:
        return SynthMarker.model_validate(read_json(path, option))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{option} {path}: not a synthetic study area marker ({where}: {err['msg']}); "
                        f"rewrite it with slidemap synth") from None
