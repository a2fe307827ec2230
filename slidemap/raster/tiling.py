"""The patch-size rule of the networks, without importing torch.

``sample`` checks a size before cutting any chip, and importing the networks (torch) for that cost about
3 s per command; the networks import the rule from here too, so there is one rule and one wording.
"""

from __future__ import annotations

from slidemap.errors import UserError

PATCH_MULTIPLE = 16
"""The public patch-size rule for both networks (the U-Net's 4 poolings need it; the ResU-Net needs 8)."""

MIN_PATCH_SIZE = 32
"""Smallest patch: the U-Net bottleneck is then 2x2 (as `UNet`'s own forward check requires)."""


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
