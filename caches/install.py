"""The feature cache wires itself: which modules of a transformer it hooks, for a ModelSpec and a config."""

from __future__ import annotations

from collections.abc import Callable

from accel.errors import UnsupportedModelError
from accel.hosts.diffusers_internals import StateManager

from .taylorseer import CacheSchedule, LiteBlockHook, MemoryMeter, TaylorSeerHook, TaylorState


def cache_schedule(cfg, force_full: Callable[[int, int | None], bool] | None = None) -> CacheSchedule:
    """The full-step schedule of ``cfg`` (a resolved TaylorSeerConfig), forcing the steps ``force_full`` names."""
    return CacheSchedule(cfg.interval, cfg.warmup_steps, cfg.final_full_steps, force_full=force_full)


def cache_hooks(transformer, spec, cfg, schedule: CacheSchedule, *, step_source, count, meter: MemoryMeter):
    """``(module, hook)`` pairs of the feature cache for one transformer.

    ``step_source()``: the current StepInfo (None: pass through); ``count(event)``: where cache events are counted.
    Full mode hooks the modules TaylorSeer caches for the family (``spec.cache_module_patterns``); lite mode hooks
    the block stack (``spec.blocks``) and caches one residual of it.
    """
    from accel.pipelines.spec import modules_matching

    if not cfg.lite:
        targets = modules_matching(transformer, spec.cache_module_patterns)
        if not targets:
            raise UnsupportedModelError(
                f"no cacheable modules found in {type(transformer).__name__} (ModelSpec {spec.name!r})"
            )
        return [(m, TaylorSeerHook(cfg, schedule, step_source, count, meter)) for _, m in targets]
    blocks = spec.blocks(transformer)
    if not blocks:
        raise UnsupportedModelError(
            f"lite caching needs the transformer blocks (cache_block_pattern) of ModelSpec {spec.name!r}"
        )
    shared = StateManager(TaylorState, init_kwargs={"meter": meter})
    hooks = []
    for i, block in enumerate(blocks):
        pos = "only" if len(blocks) == 1 else "first" if i == 0 else "last" if i == len(blocks) - 1 else "middle"
        hooks.append((block, LiteBlockHook(cfg, schedule, step_source, count, meter, pos, shared)))
    return hooks
