"""Moved to accel.methods.sparse_vdit (temporary alias while the CLI package is rebuilt)."""

from accel.methods.sparse_vdit import *  # noqa: F401,F403
from accel.methods.sparse_vdit import CALIBRATE_HOW, Plan, PlanError, PlanNotFoundError, plan_dir, plan_filename  # noqa: F401
