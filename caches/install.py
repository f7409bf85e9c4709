"""The feature cache wires itself: which modules of a transformer it hooks, for a ModelSpec and a config."""

from __future__ import annotations

from collections.abc import Callable

from accel.errors import ConfigError, UnsupportedModelError
from accel.hosts.diffusers_internals import StateManager

from .adaptive import make_schedule
from .taylorseer import CacheSchedule, LiteBlockHook, MemoryMeter, ProbeHook, TaylorSeerHook, TaylorState


def cache_schedule(cfg, force_full: Callable[[int, int | None], bool] | None = None, record=None) -> CacheSchedule:
    """The full-step schedule of ``cfg`` (a resolved TaylorSeerConfig), forcing the steps ``force_full`` names:
    fixed, or adaptive (:class:`~accel.caches.adaptive.AdaptiveSchedule`) when ``cfg.threshold`` is set;
    ``record(branch, step, full)`` is told each adaptive decision."""
    return make_schedule(cfg, force_full=force_full, record=record)


def cache_hooks(transformer, spec, cfg, schedule: CacheSchedule, *, step_source, count, meter: MemoryMeter,
                reduce=None):  # fmt: skip
    """``(module, hook)`` pairs of the feature cache for one transformer.

    ``step_source()``: the current StepInfo (None: pass through); ``count(event)``: where cache events are counted.
    Full mode hooks the modules TaylorSeer caches for the family (``spec.cache_module_patterns``); lite mode hooks
    the block stack (``spec.blocks``) and caches one residual of it. An adaptive schedule also hooks its probe
    blocks (the first ``cfg.probe_blocks``, which then always run: nothing inside them is cached); ``reduce`` sums
    its signal over context-parallel ranks.
    """
    from accel.pipelines.spec import modules_matching

    blocks = spec.blocks(transformer)
    probe, hooks = [], []
    if schedule.adaptive:
        n = schedule.probe_blocks
        if len(blocks) <= n:
            raise ConfigError(
                f"adaptive caching (threshold=...) runs the first probe_blocks={n} blocks on every step and predicts "
                f"the rest, but {type(transformer).__name__} has {len(blocks)} blocks (ModelSpec {spec.name!r}); "
                "lower probe_blocks or use threshold=None"
            )
        probe, blocks = blocks[:n], blocks[n:]
        slot: dict = {}
        for i, block in enumerate(probe):
            role = "only" if n == 1 else "start" if i == 0 else "end" if i == n - 1 else None
            if role is not None:
                hooks.append((block, ProbeHook(schedule, step_source, role, slot, reduce)))
    if not cfg.lite:
        inside_probe = {id(m) for b in probe for m in b.modules()}
        targets = [(n, m) for n, m in modules_matching(transformer, spec.cache_module_patterns)
                   if id(m) not in inside_probe]  # fmt: skip
        if not targets:
            raise UnsupportedModelError(
                f"no cacheable modules found in {type(transformer).__name__} (ModelSpec {spec.name!r})"
            )
        return hooks + [(m, TaylorSeerHook(cfg, schedule, step_source, count, meter)) for _, m in targets]
    if not blocks:
        raise UnsupportedModelError(
            f"lite caching needs the transformer blocks (cache_block_pattern) of ModelSpec {spec.name!r}"
        )
    shared = StateManager(TaylorState, init_kwargs={"meter": meter})
    for i, block in enumerate(blocks):
        pos = "only" if len(blocks) == 1 else "first" if i == 0 else "last" if i == len(blocks) - 1 else "middle"
        hooks.append((block, LiteBlockHook(cfg, schedule, step_source, count, meter, pos, shared)))
    return hooks
