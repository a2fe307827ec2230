"""The parameters of a synthetic study area, checked in one place.

One model for the API, the CLI and the ``synth.json`` marker, so that the marker records exactly what
made the files. Every factor defaults to 1.0 = the study area synth has always made, whose bytes the
tests pin; sites for a transferability experiment differ by seed and by these factors.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from slidemap.errors import UserError, option_name, validation_line

# option -> (lowest, highest) accepted value of a factor, and what 1.0 means
FACTORS = {
    "relief": (0.2, 3.0, "the default relief, hills of about 480 m"),
    "bare_fields": (0.0, 10.0, "the default share of bare fields"),
    "settlements": (0.0, 10.0, "the default settled area"),
    "roads": (0.0, 10.0, "the default number of hill roads"),
    "landslide_size": (0.25, 4.0, "the default landslide areas, 200-80,000 m²"),
    "sensor_gain": (0.25, 4.0, "the default sensor: digital numbers = reflectance x 10,000"),
}


class SynthParams(BaseModel):
    """Everything that decides a synthetic study area's bytes (with the slidemap version)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    seed: int = 0
    """Random seed; the same seed gives byte-identical files."""
    size: int = 2048
    """Image width and height in pixels."""
    pixel_size: float = 5.0
    """Image pixel size in metres."""
    landslides: int = 120
    """Number of landslides to place."""
    nodata_stripe: bool = True
    """Blank a stripe of the image, declared as nodata."""
    relief: float = 1.0
    """Factor on the height of the hills (0.2-3): steeper slopes."""
    bare_fields: float = 1.0
    """Factor on the number of bare fields (0-10), the commonest look-alike of a landslide (crops and stubble
    unchanged)."""
    settlements: float = 1.0
    """Factor on the settled area (0-10)."""
    roads: float = 1.0
    """Factor on the number of hill roads (0-10); 0: no roads."""
    landslide_size: float = 1.0
    """Factor on landslide areas (0.25-4; lengths and widths scale by its root)."""
    sensor_gain: float = 1.0
    """Factor on the image's digital numbers (0.25-4): another sensor's calibration."""
    sun_elevation: float = 55.0
    """Sun elevation of the acquisition in degrees (10-90): lower suns shade slopes more."""
    pre_event: bool = False
    """Also write pre_image.tif: the area before the landslides, acquired differently, on a coarser and
    shifted grid."""

    @classmethod
    def checked(cls, **values: object) -> SynthParams:
        """The parameters, or a one-line UserError naming the first bad option."""
        try:
            params = cls(**values)
        except ValidationError as e:
            raise UserError(validation_line(e, option_name, "unknown option")) from None
        params.check()
        return params

    def check(self) -> None:
        """Refuse, in one line naming the option, a value the generator cannot work with."""
        if self.seed < 0:
            raise UserError(f"--seed {self.seed}: must be 0 or positive")
        if self.size < 256:
            raise UserError(f"--size {self.size}: too small for a train and two test areas; use at least "
                            f"256 px")
        if not 1.0 <= self.pixel_size <= 60.0:
            raise UserError(f"--pixel-size {self.pixel_size}: use a pixel size between 1 and 60 m")
        if self.landslides < 0:
            raise UserError(f"--landslides {self.landslides}: must be 0 or positive")
        if not 10.0 <= self.sun_elevation <= 90.0:  # NaN fails too
            raise UserError(f"--sun-elevation {self.sun_elevation}: use an elevation between 10 and 90 degrees")
        for name, (low, high, default) in FACTORS.items():
            value = getattr(self, name)
            if not low <= value <= high:  # NaN fails too
                raise UserError(f"{option_name([name])} {value}: use a factor between {low:g} and {high:g} "
                                f"(1 = {default})")

