"""slidemap: map landslides from satellite imagery and a DEM with U-Net and ResU-Net."""

__version__ = "0.1.0"

from slidemap.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
