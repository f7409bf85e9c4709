"""The ComfyUI host: translates ComfyUI's attention calls into :func:`accel.core.attend` on a cloned ``MODEL``.

Nothing here imports ``comfy`` at module level (``import accel`` never loads ComfyUI); the patcher's constants are
imported when a model is accelerated, inside ComfyUI (or the tests' stand-ins).

What :func:`accelerate_model` puts on the clone (the input ``ModelPatcher`` and its ``model_options`` stay untouched,
the weights are shared):

- ``transformer_options["optimized_attention_override"]`` (ComfyUI >= 0.3.60): :meth:`ComfyHost.attention`, which
  chains to the override that was there before (the fallback then goes through it, not around it).
- a ``DIFFUSION_MODEL`` wrapper (:meth:`ComfyHost.diffusion_model_wrapper`): one per transformer forward, it reads
  the token grid from the latent ``x [B, C, T, H, W]`` / ``[B, C, H, W]`` and the diffusion model's
  ``patch_size``, the text length from the conditioning, the step from ``transformer_options["sigmas"]`` against
  ``["sample_sigmas"]`` (a Wan 2.2 stage's slice works: the stage is its own schedule; a multi-stage sampler's call
  between two entries belongs to the step it starts from, :func:`schedule_step`) and the guidance branch from
  ``["cond_or_uncond"]``, and makes that forward's :class:`_Forward` current for the attention calls.
- an ``OUTER_SAMPLE`` wrapper: per sampling run, every per-run state (step counting, Re-ttention's cache, TaylorSeer's
  ladders, the counters) starts afresh, and a one-line summary is logged at the end.
- with TaylorSeer, block replace patches (``transformer_options["patches_replace"]["dit"][(kind, i)]``) on every
  block; they chain to a replace patch that was already there.

ComfyUI's attention conventions (``func(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
skip_output_reshape=False, **kwargs)``; ``func`` is the attention ComfyUI would run, so calling it is the exact
fallback):

- Wan: q, k, v ``[B, L, H*D]`` with ``heads`` by keyword -> ``[B, L, H, D]`` by a view; text only reaches the
  separate cross-attention calls (k longer or shorter than q).
- Flux / HunyuanVideo: q, k, v ``[B, H, L, D]`` with ``skip_reshape=True`` and ``heads`` positional -> transposed to
  ``[B, L, H, D]``; text and image tokens are joint (Flux: text first; HunyuanVideo's double blocks are built with
  ``flipped_img_txt``, so its image comes first and the text last, which the host reads from the model).
- The result goes back as ``[B, L, H*D]``, or ``[B, H, L, D]`` when the call passed ``skip_output_reshape=True``.

Block (layer) indices: ``transformer_options["block_index"]`` (``block_type`` "single" continues after the double
blocks) where the ComfyUI version passes it; else the block our TaylorSeer patch is running; else self-attention calls
counted per forward. Every call not taken is counted as ``fallback:<reason>`` in the host's :class:`Stats`.
"""

from __future__ import annotations

import copy
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from accel.attention_kernels import TokenLayout

from ..config import AccelConfig, resolve_config
from ..core import attend, call_layout, key_mask
from ..errors import ConfigError, StateError, UnsupportedModelError
from ..state import LayerKey, LayerPlan, Stats, StepInfo
from ..steps import RELATIVE_TOLERANCE, StepResolver
from .comfy_cache import BlockCache
from .comfy_families import FAMILIES, ComfyFamily, family_for, text_position, token_grid

log = logging.getLogger("accel.comfy")

KEY = "diffusion_fast"  # wrapper key on the clone, and the transformer_options entry holding its ComfyHost

# ----------------------------------------------------------------------------------------------------------------
# Per forward state


@dataclass
class _Forward:
    """One diffusion-model forward: its StepInfo and how many self-attention calls it has made so far."""

    host: ComfyHost
    step: StepInfo
    context_lens: tuple[int, ...] = ()
    counter: int = 0
    block: int | None = None  # global index of the block our TaylorSeer patch is running


_FORWARD: ContextVar[_Forward | None] = ContextVar("accel_comfy_forward", default=None)


def schedule_step(schedule: torch.Tensor | None, sigma: float | None) -> int | None:
    """The step of ``schedule`` (``sample_sigmas``, ``num_steps + 1`` entries) that a forward at ``sigma`` belongs
    to: the entry it matches (within :data:`accel.steps.RELATIVE_TOLERANCE`), else the step whose interval
    ``[sigmas[i], sigmas[i + 1]]`` holds it: ComfyUI's multi-stage samplers (dpmpp_2s_ancestral, dpmpp_sde,
    res_2s, ...) also call the model at sigmas between two schedule entries. None when ``sigma`` is outside."""
    if sigma is None or schedule is None or schedule.numel() < 2:
        return None
    s = schedule.detach().float().cpu().flatten()
    diff = (s - sigma).abs()
    i = int(diff.argmin())
    if float(diff[i]) <= max(1e-3, RELATIVE_TOLERANCE * abs(sigma)):
        return i
    for j in range(s.numel() - 1):
        if min(s[j], s[j + 1]) <= sigma <= max(s[j], s[j + 1]):
            return j
    return None


def branch_of(cond_or_uncond) -> str:
    """The guidance branch of a batch: ComfyUI marks each batch chunk 0 (positive) or 1 (negative)."""
    kinds = set(cond_or_uncond or ())
    if kinds == {0}:
        return "cond"
    if kinds == {1}:
        return "uncond"
    return "cond_uncond" if kinds else "default"


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    """The ``transformer_options`` handed to a diffusion model's forward: keyword, or (as the DIFFUSION_MODEL
    executor passes it) the positional dict that carries the wrappers, ours among them."""
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for a in reversed(args):
        if isinstance(a, dict) and "wrappers" in a:
            return a
    return {}


# Keyword arguments of an attention call that do not change what it computes (the sparse path may ignore them).
_NEUTRAL_KWARGS = {"transformer_options", "_inside_attn_wrapper", "attn_precision", "low_precision_attention",
                   "preferred_attention"}  # fmt: skip
_CALL_ARGS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


class ComfyHost:
    """Everything one accelerated clone carries; shared (never copied) by later clones of it.

    ``stats`` counts the current (or last) sampling run; ``last_run`` holds the previous run's summary.
    """

    def __init__(self, config: AccelConfig, family: ComfyFamily, diffusion_model, *, method=None,
                 transformer: str = "transformer", previous=None):  # fmt: skip
        self.config = config
        self.family = family
        self.transformer = transformer
        self.method = method
        self.previous = previous  # the optimized_attention_override that was installed before ours
        self.stats = Stats()
        self.last_run: dict[str, Any] | None = None
        self.runs = 0
        self.text_pos = text_position(family, diffusion_model)
        self.num_double = self._num_double(diffusion_model)
        self.cache = None
        full_step = None if method is None else method.requires_full
        if config.cache is not None:
            self.cache = BlockCache(self, config.cache, full_step, _FORWARD.get)
            full_step = self.cache.schedule.is_full
        self.resolver = StepResolver(transformer, full_step)
        self._plans: dict[int, LayerPlan] = {}

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options: later clones (LoRA loaders, samplers) must reach this host,
        # its counters and its per-run state, not a copy that never runs.
        return self

    def _num_double(self, dm) -> int:
        kinds = dict((kind, attr) for kind, attr in self.family.block_lists)
        blocks = getattr(dm, kinds.get("double_block", ""), None)
        return len(blocks) if blocks is not None else 0

    # ---- per run ----------------------------------------------------------------------------------------------
    def begin_run(self) -> None:
        self.resolver.reset()
        if self.method is not None:
            self.method.reset()
        if self.cache is not None:
            self.cache.reset()
        self.stats.reset()

    def end_run(self) -> None:
        self.runs += 1
        self.last_run = self.summary()
        if self.cache is not None:
            self.cache.reset()  # the ladders are per run; free their memory now
        log.info("diffusion-fast: %s", format_stats(self.last_run))

    def summary(self) -> dict[str, Any]:
        out = {"preset": self.config.name, "family": self.family.name, "runs": self.runs}
        out.update(self.stats.as_dict())
        if self.method is not None:
            out.update(self.method.memory())
        return out

    # ---- wrappers ---------------------------------------------------------------------------------------------
    def outer_sample_wrapper(self, executor, *args, **kwargs):
        """``OUTER_SAMPLE``: one sampling run (``CFGGuider.outer_sample``)."""
        self.begin_run()
        try:
            return executor(*args, **kwargs)
        finally:
            self.end_run()

    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        """``DIFFUSION_MODEL``: one transformer forward ``(x, timestep, context, ..., transformer_options)``."""
        x = args[0] if args else kwargs.get("x")
        dm = getattr(executor, "class_obj", None)
        if not isinstance(x, torch.Tensor) or getattr(dm, "patch_size", None) is None:
            return executor(*args, **kwargs)
        layout = self.layout(x, dm, args, kwargs)
        to = _transformer_options(args, kwargs)
        fwd = _Forward(self, self.step_info(to, layout), context_lens=self.family.context_lens(args, kwargs))
        token = _FORWARD.set(fwd)
        try:
            return executor(*args, **kwargs)
        finally:
            _FORWARD.reset(token)

    def layout(self, x: torch.Tensor, dm, args: tuple = (), kwargs: dict | None = None) -> TokenLayout:
        """The joint self-attention token layout of one forward (video grid, text length and position)."""
        kwargs = kwargs or {}
        f, h, w = token_grid(x, dm.patch_size, self.family.extra_frames(args, kwargs))
        text = self.family.text_len(args, kwargs) if self.text_pos != "none" else 0
        return TokenLayout(f, h, w, text, self.text_pos if text else "none")

    def step_info(self, to: dict, layout: TokenLayout) -> StepInfo:
        """The StepInfo of one forward from its ``transformer_options``: ``sigmas`` (the current sigma per batch
        item) within ``sample_sigmas`` (the run's schedule, ``num_steps + 1`` entries), ``cond_or_uncond``."""
        sigmas = to.get("sigmas")
        sigma = float(sigmas.detach().float().max()) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        schedule = to.get("sample_sigmas")
        schedule = schedule if isinstance(schedule, torch.Tensor) else None
        index = schedule_step(schedule, sigma)
        return self.resolver.resolve(
            layout,
            branch=branch_of(to.get("cond_or_uncond")),
            step_index=index,
            num_steps=None if index is None else schedule.numel() - 1,
            sigma=sigma,
            sigmas=schedule,
        )

    # ---- the attention override -------------------------------------------------------------------------------
    def attention(self, func, *args, **kwargs):
        """``optimized_attention_override(func, *args, **kwargs)``: the sparse output, or the previous override /
        ``func`` with the reason counted. ``kwargs`` are handed on intact (they carry ComfyUI's wrapper flag)."""
        out = None
        if self.method is not None:
            out = self._sparse(args, kwargs)
        if out is not None:
            return out
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _fallback(self, reason: str) -> None:
        self.stats.add("fallback", reason)
        return None

    def _sparse(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        fwd = _FORWARD.get()
        if fwd is None or fwd.host is not self:
            return self._fallback("no_forward")  # not inside a forward our wrapper saw: no grid known
        call = _parse_call(args, kwargs)
        if call is None:
            return self._fallback("call_signature")
        q, k, v = _to_bshd(call)
        if q is None:
            return self._fallback("unknown_layout")
        seq = q.shape[1]
        if k.shape[1] != seq or v.shape[1] != seq or k.shape[2] != q.shape[2]:
            return self._fallback("cross_attention")
        layout = fwd.step.layout
        if call_layout(layout, seq) is None:
            return self._fallback("extra_tokens" if seq > layout.num_tokens else "layout_mismatch")
        index = self._layer_index(fwd, kwargs.get("transformer_options") or {})
        fwd.counter += 1
        if layout.text_pos == "none" and seq in fwd.context_lens:
            # A cross-attention call with as many keys as video tokens looks like self-attention here.
            return self._fallback("ambiguous_cross_attention")
        key_valid = None
        if call["mask"] is not None:
            key_valid = key_mask(call["mask"], q.shape[0], seq)
            if key_valid is None:
                return self._fallback("attn_mask")
        out = attend(q, k, v, fwd.step, self._plan(index), key_valid=key_valid)
        if out is None:
            return None  # counted by the core or the method
        out = out.to(call["q"].dtype)
        if call["skip_output_reshape"]:
            return out.transpose(1, 2)  # [B, H, L, D]
        return out.reshape(out.shape[0], seq, -1)  # [B, L, H*D]

    def _layer_index(self, fwd: _Forward, to: dict) -> int:
        if isinstance(to.get("block_index"), int):
            offset = self.num_double if to.get("block_type") == "single" else 0
            return offset + to["block_index"]
        if fwd.block is not None:
            return fwd.block
        return fwd.counter

    def _plan(self, index: int) -> LayerPlan:
        plan = self._plans.get(index)
        if plan is None:
            plan = self._plans[index] = LayerPlan(LayerKey(self.transformer, index), self.method, self.stats)
        # One attention call per layer and forward in these models: a fresh call count each time.
        return plan.for_forward()


def _parse_call(args: tuple, kwargs: dict) -> dict | None:
    """ComfyUI's attention arguments by name, or None when the call is not one this host understands."""
    if len(args) > len(_CALL_ARGS) or set(kwargs) - set(_CALL_ARGS) - _NEUTRAL_KWARGS:
        return None
    call = dict.fromkeys(_CALL_ARGS)
    call.update({"skip_reshape": False, "skip_output_reshape": False})
    for name, value in zip(_CALL_ARGS, args, strict=False):
        call[name] = value
    for name in _CALL_ARGS:
        if name in kwargs:
            if _CALL_ARGS.index(name) < len(args):
                return None  # given twice: not a call ComfyUI makes
            call[name] = kwargs[name]
    if not all(isinstance(call[n], torch.Tensor) for n in "qkv") or not isinstance(call["heads"], int):
        return None
    return call


def _to_bshd(call: dict):
    """q, k, v as ``[B, L, H, D]`` from ComfyUI's ``[B, H, L, D]`` (``skip_reshape``) or ``[B, L, H*D]``; Nones when
    the tensors do not have the layout the flags say."""
    heads = call["heads"]
    tensors = [call[n] for n in "qkv"]
    if call["skip_reshape"]:
        if any(t.dim() != 4 or t.shape[1] != heads for t in tensors):
            return None, None, None
        return tuple(t.transpose(1, 2) for t in tensors)
    if any(t.dim() != 3 or t.shape[-1] % heads for t in tensors):
        return None, None, None
    return tuple(t.unflatten(-1, (heads, t.shape[-1] // heads)) for t in tensors)


# ----------------------------------------------------------------------------------------------------------------
# Installing on a clone


def _defaults(family: ComfyFamily, dm, expert: str) -> tuple[dict, Any]:
    """The family's published defaults (``ModelSpec.defaults``) and its spec; ``expert`` names a Wan 2.2 expert
    (high_noise / low_noise), whose published settings differ from Wan 2.1's."""
    from accel.pipelines import supported_specs

    spec = next((s for s in supported_specs() if s.name == family.spec), None)
    if spec is None:
        return {}, None
    holder = SimpleNamespace(transformer=dm, transformer_2=dm if expert in ("high_noise", "low_noise") else None)
    return spec.defaults(holder), spec


EXPERTS = ("single", "high_noise", "low_noise")


def accelerate_model(model, preset: str | AccelConfig = "radial", *, expert: str = "single", **overrides):
    """A clone of ComfyUI ``MODEL`` ``model`` (a ``ModelPatcher``) with ``preset`` installed; ``model`` is untouched.

    ``expert``: ``single`` (one model), or which Wan 2.2 expert this is (``high_noise``, ``low_noise``: per-layer
    state and Sparse-vDiT plans keep them apart as ``transformer`` / ``transformer_2``, as in diffusers). Keyword
    overrides set config fields, as for :func:`accel.accelerate`.
    """
    import comfy.patcher_extension as pe

    if expert not in EXPERTS:
        raise ConfigError(f"expert must be one of {EXPERTS}, got {expert!r}")
    config = resolve_config(preset, overrides)
    if isinstance(model.model_options.get("transformer_options", {}).get(KEY), ComfyHost):
        raise StateError(
            "this MODEL is already accelerated by diffusion-fast; connect the original model to the node instead"
        )
    dm = model.get_model_object("diffusion_model")
    family = family_for(model.model, dm)
    defaults, spec = _defaults(family, dm, expert)
    attn, cache = (
        None if part is None else part.with_defaults(defaults.get(part.method, {}))
        for part in (config.attention, config.cache)
    )
    name = "transformer_2" if expert == "low_noise" else "transformer"
    method = None
    if attn is not None:
        from ..methods import build_method, method_class

        reason = method_class(attn).unsupported(spec) if spec is not None else None
        if reason is not None:
            raise UnsupportedModelError(f"preset {config.name!r} cannot apply to {family.name} models: {reason}")
        method = build_method(attn, {name: _architecture_key(attn, family, dm, name)})

    clone = model.clone()
    to = clone.model_options.setdefault("transformer_options", {})
    host = ComfyHost(AccelConfig(attention=attn, cache=cache), family, dm, method=method, transformer=name,
                     previous=to.get("optimized_attention_override"))  # fmt: skip
    to[KEY] = host
    if attn is None and cache is None:
        return clone  # dense: nothing installed, the clone computes exactly what the input does
    if method is not None:
        to["optimized_attention_override"] = host.attention
    clone.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, host.diffusion_model_wrapper)
    clone.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, host.outer_sample_wrapper)
    if host.cache is not None:
        _install_block_patches(clone, host, dm)
    return clone


def _install_block_patches(clone, host: ComfyHost, dm) -> None:
    replaced = clone.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    layer = 0
    for kind, attr in host.family.block_lists:
        for i in range(len(getattr(dm, attr, ()))):
            patch = host.cache.patch(kind, i, layer, previous=replaced.get((kind, i)))
            clone.set_model_patch_replace(patch, "dit", kind, i)
            layer += 1


def _architecture_key(attn, family: ComfyFamily, dm, name: str) -> dict:
    """What a method keys per-model data by. Sparse-vDiT plans are calibrated in diffusers, whose configs ComfyUI
    does not have: the plan file the user names is taken as this model's (its grid, step count and head count are
    still checked when it is used)."""
    if attn.method == "sparse-vdit":
        if attn.plan is None:
            raise ConfigError(
                "sparse-vdit in ComfyUI needs the plan file: calibrate with accel.calibrate(...) (or "
                "`diffusion-fast calibrate`) at the resolution, frame count and step count you render, then set plan"
            )
        from ..methods.sparse_vdit import Plan

        models = Plan.load(attn.plan).models
        if name in models:
            return models[name]
        return models[sorted(models)[0]]
    return {"spec": family.spec, "class": type(dm).__name__, "config_sha1": "comfyui"}


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def host_of(model) -> ComfyHost | None:
    """The ComfyHost a MODEL carries (None: not accelerated)."""
    host = getattr(model, "model_options", {}).get("transformer_options", {}).get(KEY)
    return host if isinstance(host, ComfyHost) else None


def model_stats(model) -> dict[str, Any] | None:
    """The last finished sampling run's counts of a MODEL (else the current counts), or None when not accelerated."""
    host = host_of(model)
    if host is None:
        return None
    return copy.copy(host.last_run) if host.last_run is not None else host.summary()


def format_stats(stats: dict[str, Any] | None) -> str:
    """A short human-readable line of :func:`model_stats`: calls by outcome, the reasons, cache hits."""
    if stats is None:
        return "not accelerated (connect the MODEL coming out of 'Diffusion Fast: Accelerate Model')"
    counts = {k: v for k, v in stats.items() if isinstance(v, int) and k not in ("runs",)}
    main = [f"{k}={counts[k]}" for k in ("sparse", "dense", "fallback") if counts.get(k)]
    reasons = [f"{k}={v}" for k, v in sorted(counts.items()) if ":" in k and not k.startswith("cache:")]
    computed, predicted = counts.get("cache:computed", 0), counts.get("cache:predicted", 0)
    parts = [f"{stats.get('preset')} on {stats.get('family')}", f"runs={stats.get('runs', 0)}"]
    parts.append("attention: " + (", ".join(main) if main else "no calls"))
    if reasons:
        parts.append("reasons: " + ", ".join(reasons))
    if stats.get("mean_sparse_density") is not None:
        parts.append(f"mean sparse density {stats['mean_sparse_density']:.3f}")
    if computed or predicted:
        parts.append(f"cache: {predicted} predicted / {computed + predicted} block calls")
    return "; ".join(parts)


__all__ = [
    "EXPERTS",
    "FAMILIES",
    "KEY",
    "BlockCache",
    "ComfyFamily",
    "ComfyHost",
    "accelerate_model",
    "branch_of",
    "family_for",
    "format_stats",
    "host_of",
    "model_stats",
    "schedule_step",
    "text_position",
    "token_grid",
]
