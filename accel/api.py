"""``accelerate(pipe, preset)`` and ``disable(pipe)``."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

from .config import AccelConfig, DraftConfig, RadialConfig, RettentionConfig, SparseVDiTConfig, resolve_config
from .ownership import Ownership
from .state import Stats

_STATE_ATTR = "_accel_state"
_TAGS = itertools.count()
# transformer -> installations on it. Several pipelines may share one transformer (diffusers' from_pipe): each
# installation's hooks carry a unique name and act only while their owner runs (accel.ownership).
_ON_TRANSFORMER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class _Installed:
    """Everything accelerate() put on a pipeline, so disable() can take exactly that off again."""

    config: AccelConfig
    spec: Any
    stats: Stats
    hooks: list[tuple[Any, str]] = field(default_factory=list)  # (module, hook name)
    call_sites: list[str] = field(default_factory=list)
    transformers: list[Any] = field(default_factory=list)
    meter: Any = None  # caches.MemoryMeter when a feature cache is installed
    method: Any = None  # the attention method object
    finalizers: list[Any] = field(default_factory=list)
    ownership: Ownership = field(default_factory=lambda: Ownership(scoped=False))
    tag: int = field(default_factory=lambda: next(_TAGS))
    holder: str = ""  # type name of what accelerate() was called on, for messages

    def hook_name(self, kind: str) -> str:
        return f"{kind}#{self.tag}"


def _method_for(config, models: dict[str, dict]) -> Any:
    """The attention method object for a resolved config. ``models``: transformer name -> architecture key."""
    if isinstance(config, RadialConfig):
        from .radial import RadialMethod

        return RadialMethod(config)
    if isinstance(config, DraftConfig):
        from .draft import DraftMethod

        return DraftMethod(config)
    if isinstance(config, SparseVDiTConfig):
        from .sparse_vdit import SparseVDiTMethod

        return SparseVDiTMethod(config, models)
    if isinstance(config, RettentionConfig):
        from .rettention import RettentionMethod

        return RettentionMethod(config)
    raise TypeError(f"no attention method for {type(config).__name__}")


def _transformers(pipe, spec_attrs=("transformer", "transformer_2")):
    found = [(name, getattr(pipe, name, None)) for name in spec_attrs]
    return [(n, t) for n, t in found if t is not None]


def accelerate(pipe, preset: str | AccelConfig = "radial", **overrides):
    """Make ``pipe`` faster in place and return it.

    ``preset`` is a preset name (see :func:`list_presets`; compose with ``'+'``) or an :class:`AccelConfig`.
    Keyword overrides set fields of the preset's configs, e.g. ``accelerate(pipe, "radial", decay=0.5)``.
    Undo with :func:`disable`.
    """
    return _accelerate(pipe, resolve_config(preset, overrides))


def _accelerate(pipe, config: AccelConfig, method_factory=None):
    """Install ``config`` on ``pipe``. ``method_factory(resolved_attention_config, models)`` replaces the attention
    method built from the config (calibration installs a measuring method this way)."""
    from accel.pipelines import spec_for_transformer, supported_models_text

    from . import _diffusers_bridge as bridge
    from .dispatch import route_attention
    from .state import LayerPlan

    if getattr(pipe, _STATE_ATTR, None) is not None:
        raise RuntimeError(
            "this pipeline is already accelerated; call accel.disable(pipe) before applying another preset"
        )
    transformers = _transformers(pipe)
    if not transformers:
        raise ValueError(
            f"{type(pipe).__name__} has no transformer (pipe.transformer / pipe.transformer_2); "
            f"accel supports diffusers DiT pipelines: {supported_models_text()}"
        )
    specs = []
    for name, module in transformers:
        if bridge.is_compiled(module):
            raise RuntimeError(
                f"pipe.{name} is already compiled with torch.compile; call accel.accelerate(pipe, ...) first and "
                "compile afterwards (the sparse kernels are compile-friendly custom ops)"
            )
        spec = spec_for_transformer(module)
        if spec is None:
            raise ValueError(
                f"{type(pipe).__name__} with {type(module).__name__} is not supported yet; supported models: "
                f"{supported_models_text()}"
            )
        specs.append(spec)
    spec = specs[0]
    defaults = spec.defaults(pipe)

    from . import ownership

    stats = Stats()
    scoped = ownership.is_scoped_holder(pipe)
    installed = _Installed(
        config=config, spec=spec, stats=stats, ownership=Ownership(scoped), holder=type(pipe).__name__
    )
    for name, module in transformers:
        _check_sharing(name, module, installed)
    active = installed.ownership.active
    try:
        method = attn_cfg = cache_cfg = None
        if config.attention is not None:
            attn_cfg = config.attention.with_defaults(defaults.get(config.attention.method, {}))
            models = {name: s.architecture_key(t) for (name, t), s in zip(transformers, specs, strict=True)}
            method = (method_factory or _method_for)(attn_cfg, models)
            installed.method = method
        if config.cache is not None:
            cache_cfg = config.cache.with_defaults(defaults.get(config.cache.method, {}))
        installed.config = AccelConfig(attention=attn_cfg, cache=cache_cfg)
        if cache_cfg is not None:
            from accel.caches import CacheSchedule, MemoryMeter

            installed.meter = MemoryMeter()
            schedule = CacheSchedule(
                cache_cfg.interval,
                cache_cfg.warmup_steps,
                cache_cfg.final_full_steps,
                force_full=method.requires_full if method is not None else None,
            )
        installs = method is not None or cache_cfg is not None  # the dense preset installs nothing
        for (name, transformer), tspec in zip(transformers, specs, strict=True) if installs else ():
            step_hook = bridge.StepHook(
                name,
                tspec.layout_from_inputs,
                tspec.timestep_from_inputs,
                pipe,
                on_reset=[method.reset] if hasattr(method, "reset") else [],
                active=active,
            )
            _add(installed, transformer, step_hook, bridge.STEP_HOOK)
            installed.transformers.append(transformer)
            _ON_TRANSFORMER.setdefault(transformer, []).append(installed)
            if method is not None:
                for _, layer_index, attn in tspec.self_attention_modules(transformer):
                    _add(
                        installed,
                        attn,
                        bridge.LayerHook(LayerPlan(layer_index, method, stats), active),
                        bridge.LAYER_HOOK,
                    )
                if tspec.attention_call_site not in installed.call_sites:
                    bridge.install_call_site(tspec.attention_call_site, route_attention)
                    installed.call_sites.append(tspec.attention_call_site)
            if cache_cfg is not None:
                hooks = _cache_hooks(transformer, tspec, cache_cfg, schedule, stats, installed.meter, active)
                for module, hook in hooks:
                    _add(installed, module, hook, bridge.CACHE_HOOK)
            bridge.refresh_context_targets(transformer)
        installed.finalizers.append(_remove_with(pipe, installed))
        if scoped:
            ownership.take(pipe)
    except Exception:
        _remove(installed)
        raise
    object.__setattr__(pipe, _STATE_ATTR, installed)
    return pipe


def _add(installed: _Installed, module, hook, kind: str) -> None:
    from . import _diffusers_bridge as bridge

    name = installed.hook_name(kind)
    bridge.add_hook(module, hook, name)
    installed.hooks.append((module, name))


def _check_sharing(name: str, transformer, new: _Installed) -> None:
    """Pipelines may share a transformer, each with its own acceleration; a holder that owns it outright may not."""
    others = _ON_TRANSFORMER.get(transformer, [])
    outright = [o for o in others if not o.ownership.scoped]
    if outright or (others and not new.ownership.scoped):
        holder = outright[0].holder if outright else others[0].holder
        raise RuntimeError(
            f"pipe.{name} is already accelerated through another {holder} that shares it, and a holder that is not "
            "a pipeline applies acceleration to every call of the transformer; call accel.disable(...) on that "
            "holder first"
        )


def _cache_hooks(transformer, spec, cfg, schedule, stats, meter, active):
    """(module, hook) pairs of the feature cache for one transformer; they act only while ``active()``."""
    from diffusers.hooks.hooks import StateManager

    from accel.caches import LiteBlockHook, TaylorSeerHook, TaylorState
    from accel.pipelines.spec import modules_matching

    from .state import CURRENT_STEP

    def step_source():
        return CURRENT_STEP.get() if active() else None

    count = stats.add
    if not cfg.lite:
        targets = modules_matching(transformer, spec.cache_module_patterns)
        if not targets:
            raise ValueError(f"no cacheable modules found in {type(transformer).__name__} (ModelSpec {spec.name!r})")
        return [(m, TaylorSeerHook(cfg, schedule, step_source, count, meter)) for _, m in targets]
    blocks = spec.blocks(transformer)
    if not blocks:
        raise ValueError(f"lite caching needs the transformer blocks (cache_block_pattern) of ModelSpec {spec.name!r}")
    shared = StateManager(TaylorState, init_kwargs={"meter": meter})
    hooks = []
    for i, block in enumerate(blocks):
        pos = "only" if len(blocks) == 1 else "first" if i == 0 else "last" if i == len(blocks) - 1 else "middle"
        hooks.append((block, LiteBlockHook(cfg, schedule, step_source, count, meter, pos, shared)))
    return hooks


def _remove_with(pipe, installed: _Installed):
    """Take the installation off (hooks on a possibly shared transformer, call sites) if the pipeline is
    garbage-collected while still accelerated."""
    try:
        return weakref.finalize(pipe, _remove, installed)
    except TypeError:  # holders without weak references: only disable() removes
        return None


def _remove(installed: _Installed) -> None:
    from . import _diffusers_bridge as bridge

    for fin in installed.finalizers:
        if fin is not None:
            fin.detach()
    installed.finalizers.clear()

    for module, name in reversed(installed.hooks):
        bridge.remove_hook(module, name)
    for transformer in installed.transformers:
        bridge.refresh_context_targets(transformer)
        on = _ON_TRANSFORMER.get(transformer, [])
        on[:] = [o for o in on if o is not installed]
    for site in installed.call_sites:
        bridge.uninstall_call_site(site)
    installed.hooks.clear()
    installed.transformers.clear()
    installed.call_sites.clear()


def disable(pipe):
    """Remove everything :func:`accelerate` installed; the pipeline then computes exactly what it did before.

    Calling it on a pipeline that is not accelerated does nothing. Returns ``pipe``.
    """
    installed = getattr(pipe, _STATE_ATTR, None)
    if installed is None:
        return pipe
    _remove(installed)
    object.__delattr__(pipe, _STATE_ATTR)
    from .ownership import release

    release(pipe)
    return pipe


def is_accelerated(pipe) -> bool:
    return getattr(pipe, _STATE_ATTR, None) is not None


def accel_config(pipe) -> AccelConfig | None:
    """The resolved configuration (model defaults filled in) of an accelerated pipeline."""
    installed = getattr(pipe, _STATE_ATTR, None)
    return None if installed is None else installed.config


def stats(pipe, reset: bool = False) -> dict[str, Any]:
    """Counts of sparse, dense and fallback attention calls (with reasons) since accelerate or the last reset."""
    installed = getattr(pipe, _STATE_ATTR, None)
    if installed is None:
        raise ValueError("this pipeline is not accelerated; call accel.accelerate(pipe, preset) first")
    out = installed.stats.as_dict()
    if hasattr(installed.method, "memory"):
        out.update(installed.method.memory())
    if installed.meter is not None:
        out["cache_bytes"] = installed.meter.current
        out["cache_peak_bytes"] = installed.meter.peak
    if reset:
        installed.stats.reset()
    return out
