"""The 16-px grid of the networks, without importing torch: the patch-size rule and prediction tiling.

Both networks halve the image four times (the ResU-Net three, but one rule serves both), so patches and
prediction tiles live on a 16-px grid. ``sample`` checks a size before cutting any chip, and importing the
networks (torch) for that cost about 3 s per command; the networks import the rule from here too, so there
is one rule and one wording.

**Tiling.** A region is cut into strips of tiles that overlap by ``overlap`` px. A network pass takes one
tile ``tile`` px high and ``batch_size`` tiles wide (`wide_tile`): the pixels of a batch, without computing
the overlaps between its tiles twice. Along each axis the fewest tiles that fit are shrunk evenly so the
last one is not mostly overlap (`AxisTiling.plan`); with the defaults the network computes 1.12x the pixels
of a 10,000² scene. Every tile offset is a multiple of 16: only tiles aligned to the same
16-px grid as a one-pass prediction compute the same pooled features. That is why ``tile`` and the stride
``tile - overlap`` must be multiples of 16, and why a region whose size is not a multiple of 16 is padded by
reflection at its bottom/right edge to one (and cropped back).

**Blending weights.** ``w`` is the outer product of two 1-D windows that are flat in the middle, rise as
``sin²`` across the middle of the overlap, and sit at a tiny floor (1e-6, only to keep ``w > 0``) in the
outer ``margin`` px next to a tile edge (default ``overlap // 4``). Tile sides on the region border are not
tapered. In a regular overlap the two ramps add up to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slidemap.errors import UserError

NETWORK_STRIDE = 16
"""2**4: the U-Net's four 2x down-samplings (the ResU-Net's three need 8): patches and tile offsets are
multiples of it."""
PATCH_MULTIPLE = NETWORK_STRIDE

MIN_PATCH_SIZE = 2 * NETWORK_STRIDE
"""Smallest patch or tile: the U-Net bottleneck is then 2x2 (as `UNet`'s own forward check requires)."""
MIN_TILE = MIN_PATCH_SIZE
WEIGHT_FLOOR = 1e-6

TILE = 512
"""Default prediction tile side in px (``--tile``)."""
OVERLAP = 32
"""Default overlap of neighbouring tiles in px (``--overlap``). A trained U-Net's blended probabilities stay
within 0.04/254 of the one-pass prediction; 64 px would compute 5 % more pixels of a 3,072² scene and 10 %
more of a 10,000² one (docs/performance.md)."""
BATCH = 2
"""Default tiles per forward pass (``--batch-size``). A scene's pass is one tile high and this many wide: on a
2-core CPU, passes of about 0.25-0.4 Mpx run fastest per pixel (the 16-channel maps stay in cache), and
4 x 512 px ran 20 % slower per pixel (docs/performance.md)."""


def size_rule_message(subject: str, multiple: int, minimum: int) -> str:
    """The one line that says which sizes work, shared by `check_patch_size` and the forward check.

    One wording for both keeps the error a user meets at ``sample`` time and the one a developer meets
    when feeding a tensor alike, so either points to the same fix.
    """
    examples = ", ".join(str(minimum + multiple * k) for k in range(4))
    return (f"{subject}: height and width must be multiples of {multiple} px, at least {minimum} "
            f"({examples}, ...); choose one of those")


def check_patch_size(size: int) -> None:
    """Refuse, in one line, a patch size the networks cannot take (before any chip is cut)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_PATCH_SIZE or size % PATCH_MULTIPLE:
        raise UserError(size_rule_message(f"patch size {size}", PATCH_MULTIPLE, MIN_PATCH_SIZE))


# --- prediction tiling -------------------------------------------------------------------------------

def _ceil_to(n: int, k: int) -> int:
    return -(-n // k) * k


@dataclass(frozen=True)
class AxisTiling:
    """Tile offsets along one axis of a region ``length`` px long (reflection-padded to ``padded``)."""

    length: int
    tile: int
    padded: int
    offsets: tuple[int, ...]

    @classmethod
    def plan(cls, length: int, tile: int, overlap: int) -> AxisTiling:
        """The fewest tiles of at most ``tile`` px that cover the region with ``overlap``, shrunk to share the excess.

        Offsets come every ``size - overlap`` px, the last one flush with the end.

        Shrinking matters: 10,000 px in tiles of 512 overlapping by 64 needs 23 tiles; at 512 px they would compute
        11,776 px, at the 496 px chosen here 11,408 (sizes and offsets stay multiples of 16).
        """
        padded = max(_ceil_to(length, NETWORK_STRIDE), MIN_TILE)
        if padded <= tile:
            return cls(length, padded, padded, (0,))
        n = -(-(padded - overlap) // (tile - overlap))
        size = min(tile, _ceil_to(-(-(padded - overlap) // n) + overlap, NETWORK_STRIDE))
        offsets = [k * (size - overlap) for k in range(n - 1)] + [padded - size]
        return cls(length, size, padded, tuple(sorted(set(offsets))))

    def weights(self, index: int, overlap: int, margin: int) -> np.ndarray:
        """1-D blending window of tile ``index``: tapered only on sides shared with another tile."""
        d = np.arange(self.tile, dtype=np.float64) + 0.5
        w = np.ones(self.tile)
        if index > 0:
            w *= _ramp(d, overlap, margin)
        if index < len(self.offsets) - 1:
            w *= _ramp(d[::-1], overlap, margin)
        return w.astype(np.float32)


def _ramp(distance: np.ndarray, overlap: int, margin: int) -> np.ndarray:
    """Weight by distance to a shared tile edge: floor within ``margin``, sin² up to ``overlap - margin``."""
    if overlap <= 0:
        return np.ones_like(distance)
    width = max(overlap - 2 * margin, 1)
    t = np.clip((distance - margin) / width, 0.0, 1.0)
    return WEIGHT_FLOOR + (1 - WEIGHT_FLOOR) * np.sin(np.pi / 2 * t) ** 2


def wide_tile(tile: int, overlap: int, batch_size: int) -> int:
    """Width of one network pass: ``batch_size`` tiles side by side, run as one wide tile.

    So the overlaps between them are computed once (the pixels per pass, hence the memory, stay the same).
    """
    return tile + (batch_size - 1) * (tile - overlap)


def check_tiling(tile: int, overlap: int, margin: int | None = None) -> int:
    """Validate tile/overlap for the networks' 16-px grid; returns the blending margin to use."""
    if tile < MIN_TILE or tile % NETWORK_STRIDE:
        raise UserError(f"--tile {tile}: must be a multiple of {NETWORK_STRIDE} and at least {MIN_TILE} (the "
                        f"networks halve the image 4 times), e.g. 256 or 512")
    if overlap < 0 or overlap >= tile or (tile - overlap) % NETWORK_STRIDE:
        raise UserError(f"--overlap {overlap}: must be in [0, {tile}) with --tile minus --overlap a multiple "
                        f"of {NETWORK_STRIDE} so tiles stay on the networks' pooling grid, e.g. 64")
    margin = overlap // 4 if margin is None else margin
    if overlap and not 0 <= margin < overlap / 2:
        raise UserError(f"margin {margin}: must be in [0, overlap/2 = {overlap / 2:g})")
    return margin


def reflect_index(length: int, padded: int) -> np.ndarray:
    """Source index of each padded position: identity, then reflection beyond ``length`` (as np.pad)."""
    idx = np.arange(length)
    if padded == length:
        return idx
    return np.pad(idx, (0, padded - length), mode="reflect" if length > 1 else "edge")
