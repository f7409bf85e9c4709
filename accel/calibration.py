"""``accel.calibrate``: Sparse-vDiT's calibration run, an API-level tool above the methods.

It installs the measuring method (:class:`accel.methods.calibration.Calibrator`) with :func:`accel.accelerate`, runs
dense generations on a few prompts, takes it off again, and lets :func:`accel.methods.calibration.choose_plan` pick
one pattern per (layer, head, step bucket); the plan is saved where ``accelerate(pipe, "sparse-vdit")`` finds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .api import accelerate, attention_method, disable, is_accelerated
from .config import COST_MODELS, AccelConfig
from .methods.calibration import CalibrationConfig, choose_plan
from .methods.sparse_vdit import Plan
from .plans import plan_path


def calibrate(
    pipe,
    prompts: str | Sequence[str | dict[str, Any]],
    *,
    path: str | None = None,
    tolerance: float = 0.05,
    step_buckets: int = 1,
    cost_model: str = "flops",
    widths: Iterable[int] | None = None,
    stripe_blocks: int | None = None,
    sample_rows: int = 64,
    dense_step_fraction: float | None = None,
    dense_layers: int | None = None,
    block_size: int = 128,
    backend: str = "auto",
    **call_kwargs,
) -> Plan:
    """Calibrate Sparse-vDiT for ``pipe`` and save the plan (JSON) that ``accelerate(pipe, "sparse-vdit")`` loads.

    ``prompts``: prompt strings, or dicts of pipeline call arguments (e.g. ``prompt_embeds``). ``call_kwargs`` go to
    every pipeline call and fix what the plan is keyed by: ``height``, ``width``, ``num_frames`` and
    ``num_inference_steps`` (``output_type`` defaults to ``"latent"``: decoding is not needed). ``path``: where to
    save (default: the plan directory, see :func:`accel.plans.plan_dir`, under a name the preset finds by
    itself). ``tolerance``: the largest relative L2 error of a head's output a pattern may have. ``step_buckets``:
    choose patterns separately for this many ranges of the sparse steps. ``cost_model``: ``"flops"`` or
    ``"measured"``. ``widths``: band half-widths in blocks to try (default: powers of two). ``stripe_blocks``: key
    blocks a stripe head attends besides its band (default: 1/16 of the blocks). ``dense_step_fraction`` /
    ``dense_layers``: the warm-up the preset will use (default: the model's). Returns the :class:`Plan`.
    """
    if is_accelerated(pipe):
        raise RuntimeError("calibrate() needs the untouched pipeline; call accel.disable(pipe) first")
    if not 0.0 <= tolerance:
        raise ValueError(f"tolerance must be >= 0 (a relative L2 error), got {tolerance}")
    if step_buckets < 1:
        raise ValueError(f"step_buckets must be >= 1, got {step_buckets}")
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model must be one of {COST_MODELS}, got {cost_model!r}")
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    if not prompts:
        raise ValueError("calibrate() needs at least one prompt")
    config = CalibrationConfig(
        dense_step_fraction=dense_step_fraction,
        dense_layers=dense_layers,
        block_size=block_size,
        backend=backend,
        widths=tuple(widths) if widths else None,
        stripe_blocks=stripe_blocks,
        sample_rows=sample_rows,
        step_buckets=step_buckets,
    )
    accelerate(pipe, AccelConfig(attention=config))
    cal = attention_method(pipe)
    try:
        for i, p in enumerate(prompts):
            kwargs = {"output_type": "latent", **call_kwargs, **(p if isinstance(p, dict) else {"prompt": p})}
            kwargs.setdefault("generator", torch.Generator().manual_seed(i))
            pipe(**kwargs)
    finally:
        disable(pipe)
    if not cal.acc:
        raise ValueError(
            "calibration saw no sparse attention call: the run was too short for the dense warm-up "
            f"(dense_step_fraction={cal.config.dense_step_fraction}, dense_layers={cal.config.dense_layers}) or the "
            f"sequence has fewer than {cal.config.min_blocks} blocks of {block_size} tokens"
        )
    names = [p if isinstance(p, str) else "<call arguments>" for p in prompts]
    probe = next(pipe.transformer.parameters())
    plan = choose_plan(cal, cal.models, tolerance, cost_model, probe, names)
    out = path if path is not None else plan_path(plan.models, plan.layout, plan.num_steps)
    plan.meta["path"] = str(plan.save(out))
    return plan
