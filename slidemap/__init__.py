"""slidemap: map landslides from satellite imagery and a DEM with U-Net and ResU-Net."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting burn the other core on a shared machine (measured: a 2-thread
# training step took 5.6x the CPU time of a 1-thread step at load 9, see docs/performance.md). Sleeping
# waiters cost nothing measurable on an idle machine. Must be set before torch loads libgomp.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slidemap.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
