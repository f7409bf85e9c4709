"""Sparse-vDiT runtime: per-(layer, head) patterns read from a calibration plan (see accel.calibrate)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.attention_kernels import TokenLayout
from accel.attention_kernels.sparse_vdit import HeadPattern, pattern_density, sparse_vdit_attention

from ..config import SparseVDiTConfig
from ..errors import PlanError, PlanNotFoundError
from ..state import LayerKey, Stats, StepInfo
from . import register_method
from .base import WarmupMethod, checked_sparse, kernel_backend, pays, runs_dense

CALIBRATE_HOW = "accel.calibrate(pipe, prompts, ...) (command line: diffusion-fast calibrate)"

PLAN_FORMAT = "diffusion-fast/sparse-vdit-plan"
PLAN_VERSION = 1


def plan_dir() -> Path:
    """Where calibration plans are saved and looked up: ``$ACCEL_PLAN_DIR`` or ``~/.cache/diffusion-fast/plans``."""
    env = os.environ.get("ACCEL_PLAN_DIR")
    return Path(env) if env else Path.home() / ".cache" / "diffusion-fast" / "plans"


def _layout_json(layout: TokenLayout) -> dict[str, Any]:
    return {
        "frames": layout.frames,
        "height": layout.height,
        "width": layout.width,
        "text_len": layout.text_len,
        "text_pos": layout.text_pos,
    }


def _describe(layout: TokenLayout, num_steps: int | None) -> str:
    text = f" + text {layout.text_pos}" if layout.text_len else ""
    return f"{layout.frames}x{layout.height}x{layout.width} latent tokens{text}, {num_steps} steps"


def plan_grid(layout: TokenLayout) -> tuple:
    """What a plan is keyed by: the video grid and where text sits, not the text length (padded text is removed
    per prompt, :mod:`accel.core`; text rows and columns stay dense in every pattern)."""
    return (layout.frames, layout.height, layout.width, layout.text_pos if layout.text_len else "none")


def plan_filename(models: dict[str, dict], layout: TokenLayout, num_steps: int) -> str:
    first = models[sorted(models)[0]]
    text = f"-text{layout.text_pos}" if layout.text_len else ""
    grid = f"{layout.frames}x{layout.height}x{layout.width}{text}"
    return f"{first['spec']}-{first['config_sha1']}-{grid}-{num_steps}steps.json"


@dataclass
class Plan:
    """A calibrated Sparse-vDiT plan: the pattern of every head of every sparse layer, per step bucket.

    ``patterns[transformer][layer][bucket]`` is a tuple with one :class:`HeadPattern` per head; ``buckets`` are the
    ``[start, stop)`` step ranges the buckets cover (steps before the first run dense).
    """

    models: dict[str, dict]
    layout: TokenLayout
    num_steps: int
    block_size: int
    buckets: list[tuple[int, int]]
    patterns: dict[str, dict[int, list[tuple[HeadPattern, ...]]]]
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- lookup -----------------------------------------------------------------------------------------------
    def bucket(self, step_index: int) -> int:
        for i, (start, stop) in enumerate(self.buckets):
            if start <= step_index < stop:
                return i
        return 0 if step_index < self.buckets[0][0] else len(self.buckets) - 1

    def patterns_for(self, transformer: str, layer: int, step_index: int) -> tuple[HeadPattern, ...] | None:
        layers = self.patterns.get(transformer, {})
        if layer not in layers:
            return None
        return layers[layer][self.bucket(step_index)]

    def check_models(self, models: dict[str, dict], source: str) -> None:
        """Raise a ValueError unless the plan was calibrated on these transformers."""
        for name, key in models.items():
            if name in self.patterns and self.models.get(name) != key:
                raise PlanError(
                    f"Sparse-vDiT plan {source} was calibrated for another model ({self.models.get(name)}), not "
                    f"pipe.{name} ({key}); run {CALIBRATE_HOW} for this model"
                )
        if not set(self.patterns) & set(models):
            raise PlanError(
                f"Sparse-vDiT plan {source} covers {sorted(self.patterns)}, none of this pipeline's transformers "
                f"{sorted(models)}; run {CALIBRATE_HOW} for this pipeline"
            )

    def check(self, models: dict[str, dict], layout: TokenLayout, num_steps: int | None, source: str) -> None:
        """Raise a ValueError saying what differs and how to get a matching plan."""
        self.check_models(models, source)
        how = f"run {CALIBRATE_HOW} at this resolution, frame count and step count"
        if plan_grid(layout) != plan_grid(self.layout) or (num_steps is not None and num_steps != self.num_steps):
            raise PlanError(
                f"Sparse-vDiT plan {source} was calibrated for {_describe(self.layout, self.num_steps)}, but this "
                f"call has {_describe(layout, num_steps)}; {how}"
            )

    # ---- JSON -------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "models": self.models,
            "layout": _layout_json(self.layout),
            "num_steps": self.num_steps,
            "block_size": self.block_size,
            "buckets": [list(b) for b in self.buckets],
            "patterns": {
                t: {str(layer): [[p.to_json() for p in heads] for heads in buckets] for layer, buckets in ls.items()}
                for t, ls in self.patterns.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        if d.get("format") != PLAN_FORMAT or d.get("version") != PLAN_VERSION:
            raise PlanError(f"not a Sparse-vDiT plan (format {PLAN_FORMAT!r} version {PLAN_VERSION})")
        return cls(
            models=d["models"],
            layout=TokenLayout(**d["layout"]),
            num_steps=int(d["num_steps"]),
            block_size=int(d["block_size"]),
            buckets=[tuple(b) for b in d["buckets"]],
            patterns={
                t: {
                    int(layer): [tuple(HeadPattern.from_json(p) for p in heads) for heads in per_bucket]
                    for layer, per_bucket in ls.items()
                }
                for t, ls in d["patterns"].items()
            },
            meta=d.get("meta", {}),
        )

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise PlanNotFoundError(
                f"Sparse-vDiT plan {str(path)!r} does not exist; create it with accel.calibrate(pipe, prompts, "
                "path=...) at the resolution, frame count and step count you will render"
            )
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"{str(path)!r} is not a valid Sparse-vDiT plan ({exc}); calibrate it again") from exc


@register_method(SparseVDiTConfig)
class SparseVDiTMethod(WarmupMethod):
    name = "sparse-vdit"
    config: SparseVDiTConfig

    def __init__(self, config: SparseVDiTConfig, models: dict[str, dict]):
        super().__init__(config, models)
        self._explicit = Plan.load(config.plan) if config.plan is not None else None
        if self._explicit is not None:
            self._explicit.check_models(models, repr(config.plan))
        self._found: dict[tuple, Plan] = {}

    def plan_for(self, step: StepInfo) -> Plan:
        if self._explicit is not None:
            self._explicit.check(self.models, step.layout, step.num_steps, repr(self.config.plan))
            return self._explicit
        key = (plan_grid(step.layout), step.num_steps)
        if key not in self._found:
            if step.num_steps is None:
                raise PlanError(
                    "Sparse-vDiT needs the step count to find its plan, and this call has none; pass plan=PATH"
                )
            path = plan_dir() / plan_filename(self.models, step.layout, step.num_steps)
            if not path.is_file():
                raise PlanNotFoundError(
                    f"no Sparse-vDiT plan for this model at {_describe(step.layout, step.num_steps)} (looked for "
                    f"{str(path)!r}); run {CALIBRATE_HOW} with the same height, width, frames "
                    "and num_inference_steps first, or pass plan=PATH"
                )
            plan = Plan.load(path)
            plan.check(self.models, step.layout, step.num_steps, repr(str(path)))
            self._found[key] = plan
        return self._found[key]

    def attend(self, q, k, v, step: StepInfo, layer: LayerKey, scale, stats: Stats):
        cfg = self.config
        if runs_dense(cfg, step, layer, stats):
            return None
        plan = self.plan_for(step)
        patterns = plan.patterns_for(layer.transformer, layer.index, step.step_index)
        if patterns is None:
            stats.add("dense", "not_in_plan")
            return None
        heads = step.num_heads if step.num_heads is not None else q.shape[2]
        if len(patterns) != heads or step.head_offset + q.shape[2] > heads:
            raise PlanError(
                f"Sparse-vDiT plan has {len(patterns)} heads for layer {layer.index}, the model has {heads}"
            )
        # Decisions (plan_full, density, pays) over every head of the model, so that under context parallelism all
        # ranks decide alike (the single-process decision); the call then runs its own heads' patterns (global
        # indices ``head_offset ..``).
        local = patterns[step.head_offset : step.head_offset + q.shape[2]]
        if all(p.kind == "full" for p in patterns):
            stats.add("dense", "plan_full")
            return None
        density = sum(pattern_density(p, step.layout, plan.block_size) for p in patterns) / len(patterns)
        # Heads on the position-major order add a token reorder of q, k, v and the output (about 2% of dense work).
        reorder = 0.02 if any(p.order() == "position" for p in patterns) else 0.0
        if not pays(cfg, density + reorder, q, stats):
            return None
        backend = kernel_backend(cfg.backend, q)
        bs = plan.block_size
        out = checked_sparse(
            stats,
            lambda: (
                sparse_vdit_attention(
                    q, k, v, step.layout, local, block_size=bs, scale=scale, backend=backend, require_keys=True
                ),
                density,
            ),
        )
        if out is not None:
            # Skip heads output zeros by design (the plan says so): counted apart from any mask check.
            stats.counts["skipped_heads"] += sum(p.kind == "skip" for p in local)
        return out
