"""Sparse-vDiT calibration plans, for tools above the API (the CLI): where plans live, the file a preset looks for,
and loading one with its checks. The plan format itself: :class:`accel.methods.sparse_vdit.Plan`."""

from __future__ import annotations

from pathlib import Path

from .methods import sparse_vdit as _sv


def plan_dir() -> Path:
    """The folder ``accelerate(pipe, "sparse-vdit")`` and ``calibrate`` use (``$ACCEL_PLAN_DIR`` or the default)."""
    return _sv.plan_dir()


def plan_path(models: dict, layout, num_steps: int) -> Path:
    """The file in :func:`plan_dir` that the preset loads for these transformers (architecture keys by name), token
    grid and step count."""
    return plan_dir() / _sv.plan_filename(models, layout, num_steps)


def load_plan(path, models: dict | None = None, layout=None, num_steps: int | None = None, label: str | None = None):
    """The plan at ``path``, checked against the transformers' architecture keys (``models``) and, with ``layout``
    and ``num_steps``, the request it would serve; raises :class:`accel.errors.PlanError` naming ``label``."""
    plan = _sv.Plan.load(path)
    label = label or repr(str(path))
    if models is not None:
        plan.check_models(models, label)
        if layout is not None and num_steps is not None:
            plan.check(models, layout, num_steps, label)
    return plan
