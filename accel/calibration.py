"""Moved to accel.methods.calibration (temporary alias while the CLI package is rebuilt)."""

from accel.methods.calibration import *  # noqa: F401,F403
from accel.methods.calibration import calibrate  # noqa: F401
