"""``accelerate(pipe, preset)`` and ``disable(pipe)``: resolve the config and the models, build the attention method
from the registry (``accel.methods``) and the feature cache (``accel.caches``), and hand both to the diffusers host.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

from .config import AccelConfig, resolve_config
from .errors import StateError, UnsupportedModelError
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
    call_sites: list[tuple[str, str]] = field(default_factory=list)  # (model file, route)
    transformers: list[Any] = field(default_factory=list)
    meter: Any = None  # caches.MemoryMeter when a feature cache is installed
    method: Any = None  # the accel.methods.AttentionMethod
    finalizers: list[Any] = field(default_factory=list)
    ownership: Ownership = field(default_factory=lambda: Ownership(scoped=False))
    tag: int = field(default_factory=lambda: next(_TAGS))
    holder: str = ""  # type name of what accelerate() was called on, for messages

    def hook_name(self, kind: str) -> str:
        return f"{kind}#{self.tag}"


def accelerate(pipe, preset: str | AccelConfig = "radial", **overrides):
    """Make ``pipe`` faster in place and return it.

    ``preset`` is a preset name (see :func:`list_presets`; compose with ``'+'``) or an :class:`AccelConfig`.
    Keyword overrides set fields of the preset's configs, e.g. ``accelerate(pipe, "radial", decay=0.5)``.
    Undo with :func:`disable`.
    """
    from accel.pipelines import denoisers, spec_for_transformer, supported_models_text

    from . import ownership
    from .hosts import diffusers as host

    config = resolve_config(preset, overrides)
    if getattr(pipe, _STATE_ATTR, None) is not None:
        raise StateError(
            "this pipeline is already accelerated; call accel.disable(pipe) before applying another preset"
        )
    transformers = denoisers(pipe)
    if not transformers:
        raise UnsupportedModelError(
            f"{type(pipe).__name__} has no transformer (pipe.transformer / pipe.transformer_2); "
            f"accel supports diffusers DiT pipelines: {supported_models_text()}"
        )
    specs = []
    for name, module in transformers:
        if host.is_compiled(module):
            raise StateError(
                f"pipe.{name} is already compiled with torch.compile; call accel.accelerate(pipe, ...) first and "
                "compile afterwards (the sparse kernels are compile-friendly custom ops)"
            )
        spec = spec_for_transformer(module)
        if spec is None:
            raise UnsupportedModelError(
                f"{type(pipe).__name__} with {type(module).__name__} is not supported yet; supported models: "
                f"{supported_models_text()}"
            )
        specs.append(spec)
    defaults = specs[0].defaults(pipe)
    attn_cfg = (
        None if config.attention is None else config.attention.with_defaults(defaults.get(config.attention.method, {}))
    )
    cache_cfg = None if config.cache is None else config.cache.with_defaults(defaults.get(config.cache.method, {}))
    if attn_cfg is not None:
        from .methods import method_class

        for spec in dict.fromkeys(specs):
            reason = method_class(attn_cfg).unsupported(spec)
            if reason is not None:
                raise UnsupportedModelError(f"preset {config.name!r} cannot apply to {spec.name} models: {reason}")

    installed = _Installed(
        config=AccelConfig(attention=attn_cfg, cache=cache_cfg),
        spec=specs[0],
        stats=Stats(),
        ownership=Ownership(ownership.is_scoped_holder(pipe)),
        holder=type(pipe).__name__,
    )
    for name, module in transformers:
        _check_sharing(name, module, installed)
    if attn_cfg is None and cache_cfg is None:  # the dense preset installs nothing
        object.__setattr__(pipe, _STATE_ATTR, installed)
        return pipe
    try:
        _install(pipe, installed, transformers, specs, attn_cfg, cache_cfg)
        installed.finalizers.append(_remove_with(pipe, installed))
        if installed.ownership.scoped:
            ownership.take(pipe)
    except Exception:
        _remove(installed)
        raise
    object.__setattr__(pipe, _STATE_ATTR, installed)
    return pipe


def supported_presets(spec) -> list[str]:
    """The single presets (no ``+`` combinations) that apply to models of ``spec``."""
    from .config import PRESETS

    return [name for name, p in PRESETS.items() if unsupported(p.config.attention, spec) is None]


def unsupported(attention, spec) -> str | None:
    """Why the attention config ``attention`` cannot serve models of ``spec`` (a ModelSpec), or None (also for no
    attention config: a cache serves every model)."""
    from .methods import method_class

    return None if attention is None else method_class(attention).unsupported(spec)


def never_sparse(attention, num_steps: int | None, layout, num_layers: int | None) -> bool:
    """True when a resolved attention config (or None) makes no sparse call in a whole request of ``num_steps``
    steps over ``layout`` with ``num_layers`` self-attention layers (None: unknown, never decides): every step in
    the dense warm-up, every layer dense, or a sequence too short. A method may still keep calls dense for its own
    reasons (a mask too dense to pay)."""
    if attention is None:
        return True
    from .methods.base import never_sparse as rules

    return rules(attention, num_steps, layout, num_layers)


def enable_context_parallel(transformer, *, ulysses_degree: int = 1, ring_degree: int = 1) -> None:
    """diffusers' ``transformer.enable_parallelism(config=ContextParallelConfig(...))``, also on CPU (gloo), before
    or after ``accelerate``."""
    from .hosts.diffusers_internals import enable_context_parallel as enable

    enable(transformer, ulysses_degree=ulysses_degree, ring_degree=ring_degree)


def _install(pipe, installed: _Installed, transformers, specs, attn_cfg, cache_cfg) -> None:
    from .hosts import diffusers as host
    from .methods import build_method
    from .state import CURRENT_STEP

    method = None
    if attn_cfg is not None:
        models = {name: s.architecture_key(t) for (name, t), s in zip(transformers, specs, strict=True)}
        method = installed.method = build_method(attn_cfg, models)
    full_step = None if method is None else method.requires_full
    if cache_cfg is not None:
        from accel.caches import MemoryMeter, cache_schedule

        from .hosts.diffusers_cache import cache_hooks

        installed.meter = MemoryMeter()
        schedule = cache_schedule(cache_cfg, force_full=full_step, record=installed.stats.cache_step)
        full_step = schedule.is_full
    active = installed.ownership.active

    def step_source():
        return CURRENT_STEP.get() if active() else None

    for (name, transformer), spec in zip(transformers, specs, strict=True):
        hooks = []
        if cache_cfg is not None:
            hooks = cache_hooks(
                transformer, spec, cache_cfg, schedule, step_source=step_source, count=installed.stats.add,
                meter=installed.meter, reduce=host.context_parallel_sum(transformer),
            )  # fmt: skip
        installed.transformers.append(transformer)
        _ON_TRANSFORMER.setdefault(transformer, []).append(installed)
        host.install_transformer(installed, name, transformer, spec, pipe, method, hooks, full_step)


def _check_sharing(name: str, transformer, new: _Installed) -> None:
    """Pipelines may share a transformer, each with its own acceleration; a holder that owns it outright may not."""
    others = _ON_TRANSFORMER.get(transformer, [])
    outright = [o for o in others if not o.ownership.scoped]
    if outright or (others and not new.ownership.scoped):
        holder = outright[0].holder if outright else others[0].holder
        raise StateError(
            f"pipe.{name} is already accelerated through another {holder} that shares it, and a holder that is not "
            "a pipeline applies acceleration to every call of the transformer; call accel.disable(...) on that "
            "holder first"
        )


def _remove_with(pipe, installed: _Installed):
    """Take the installation off (hooks on a possibly shared transformer, call sites) if the pipeline is
    garbage-collected while still accelerated."""
    try:
        return weakref.finalize(pipe, _remove, installed)
    except TypeError:  # holders without weak references: only disable() removes
        return None


def _remove(installed: _Installed) -> None:
    from .hosts import diffusers as host

    for fin in installed.finalizers:
        if fin is not None:
            fin.detach()
    installed.finalizers.clear()
    host.remove(installed)
    for transformer in installed.transformers:
        on = _ON_TRANSFORMER.get(transformer, [])
        on[:] = [o for o in on if o is not installed]
    installed.transformers.clear()


def disable(pipe):
    """Remove everything :func:`accelerate` installed; the pipeline then computes exactly what it did before.

    Calling it on a pipeline that is not accelerated does nothing. Returns ``pipe``.
    """
    from .ownership import release

    installed = getattr(pipe, _STATE_ATTR, None)
    if installed is None:
        return pipe
    _remove(installed)
    object.__delattr__(pipe, _STATE_ATTR)
    release(pipe)
    return pipe


def is_accelerated(pipe) -> bool:
    return getattr(pipe, _STATE_ATTR, None) is not None


def _installed(pipe) -> _Installed:
    installed = getattr(pipe, _STATE_ATTR, None)
    if installed is None:
        raise ValueError("this pipeline is not accelerated; call accel.accelerate(pipe, preset) first")
    return installed


def accel_config(pipe) -> AccelConfig | None:
    """The resolved configuration (model defaults filled in) of an accelerated pipeline."""
    installed = getattr(pipe, _STATE_ATTR, None)
    return None if installed is None else installed.config


def attention_method(pipe):
    """The :class:`accel.methods.AttentionMethod` serving an accelerated pipeline (None: no attention method)."""
    return _installed(pipe).method


def stats(pipe, reset: bool = False) -> dict[str, Any]:
    """Counts of sparse, dense and fallback attention calls (with reasons) since accelerate or the last reset."""
    installed = _installed(pipe)
    out = installed.stats.as_dict()
    if installed.method is not None:
        out.update(installed.method.memory())
    if installed.meter is not None:
        out["cache_bytes"] = installed.meter.current
        out["cache_peak_bytes"] = installed.meter.peak
    if reset:
        installed.stats.reset()
    return out
