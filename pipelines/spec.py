"""Per-model facts as data: one ModelSpec per supported transformer class."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accel.attention_kernels import TokenLayout


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per family
class ModelSpec:
    """What the plugin needs to know about one DiT family.

    - ``transformer_classes``: class names of the transformer module (matched on ``type(m).__name__``).
    - ``pipeline_classes``: pipelines known to work (for messages and docs).
    - ``transformer_attrs``: pipeline attributes that may hold such a transformer (Wan 2.2 has two experts).
    - ``attention_call_site``: the model file whose processors compute attention, and ``route``, how they do:
      ``"dispatch"`` (its global ``dispatch_attention_fn``, q/k/v ``[B, S, H, D]``) or ``"sdpa"``
      (``F.scaled_dot_product_attention``, ``[B, H, S, D]``).
    - ``self_attention``: one regex per block list over ``named_modules()`` names, selecting the self-attention
      modules; group 1 is the index within the list. Layers get one global index over the lists in order (Flux /
      HunyuanVideo: double-stream blocks first, then single-stream blocks continue the numbering).
    - ``text_pos``: where text tokens sit inside self-attention (``"none"`` for Wan: text is cross-attention).
    - ``layout_from_inputs(transformer, args, kwargs) -> TokenLayout``: the token grid of one forward call, text
      placed as ``text_pos`` says.
    - ``key_valid_from_inputs(transformer, args, kwargs) -> bool [B, S] | None``: real keys per batch item where
      padded text sits in joint attention (None: every key is real).
    - ``timestep_from_inputs(args, kwargs) -> tensor | None``.
    - ``cache_module_patterns``: modules a feature cache hooks (attention and feed-forward outputs).
    - ``cache_block_patterns``: regexes (group 1 = index) for the block lists, in call order, each block called
      with ``hidden_states`` first and returning it (lite caching of the whole block stack).
    - ``defaults(pipe) -> {method: {param: value}}``: published per-model defaults, by attention method.

    Size rules, for front ends (the CLI) that check a request before any weights load:

    - ``spatial_multiple``: height and width must be multiples of this (VAE stride x patch size; Wan: 8 x 2 = 16).
    - ``frame_multiple``: the frame count must be ``frame_multiple * k + 1`` (the VAE's temporal stride; Wan: 4,
      so 4k+1 frames); 1 allows any count.
    - ``default_fps``: frame rate of the model's published videos (Wan: 16); ``None`` when unknown.
    - ``is_video``: False for image models (one frame: methods built on a temporal axis refuse them).

    Also per family: ``example_repos`` (Hub checkpoints known to load, for listings and messages),
    ``float32_components`` (pipeline components loaded in float32 whatever the requested dtype) and
    ``tiny_pipeline(**kw)`` (a tiny randomly initialised pipeline built offline from configs, for tests, benchmarks
    and the CLI's embedded model) with ``tiny_call`` (keyword arguments of a short call of it, ``output_type
    "latent"``, long enough in tokens that sparse calls happen with 16-token blocks: the per-family tests use it).
    """

    name: str
    transformer_classes: tuple[str, ...]
    pipeline_classes: tuple[str, ...]
    transformer_attrs: tuple[str, ...]
    attention_call_site: str
    self_attention: tuple[str, ...]
    layout_from_inputs: Callable[[torch.nn.Module, tuple, dict], TokenLayout]
    timestep_from_inputs: Callable[[tuple, dict], Any]
    route: str = "dispatch"
    text_pos: str = "none"
    key_valid_from_inputs: Callable[[torch.nn.Module, tuple, dict], torch.Tensor | None] = field(
        default=lambda transformer, args, kwargs: None
    )
    cache_module_patterns: tuple[str, ...] = ()
    cache_block_patterns: tuple[str, ...] = ()
    defaults: Callable[[Any], dict[str, dict[str, Any]]] = field(default=lambda pipe: {})
    spatial_multiple: int = 1
    frame_multiple: int = 1
    default_fps: int | None = None
    is_video: bool = True
    example_repos: tuple[str, ...] = ()
    tiny_pipeline: Callable[..., Any] | None = None
    tiny_call: dict[str, Any] = field(default_factory=dict)
    float32_components: tuple[str, ...] = ()

    def __post_init__(self):
        if self.route not in ("dispatch", "sdpa"):
            raise ValueError(f"ModelSpec {self.name!r}: route must be 'dispatch' or 'sdpa', got {self.route!r}")
        if self.text_pos not in ("none", "first", "last"):
            raise ValueError(f"ModelSpec {self.name!r}: text_pos must be none/first/last, got {self.text_pos!r}")

    def self_attention_layers(self, transformer: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
        """``(global layer index, module)`` for every self-attention module, over all block lists in order."""
        return [(i, m) for i, (_, m) in enumerate(_in_list_order(transformer, self.self_attention))]

    def token_grid(self, frames: int, height: int, width: int) -> TokenLayout:
        """The self-attention video token grid of a request in pixels and frames, by the size rules (Wan
        81x480x832: 21 x 30 x 52); an image is one frame."""
        latent_frames = (frames - 1) // self.frame_multiple + 1
        return TokenLayout(latent_frames, height // self.spatial_multiple, width // self.spatial_multiple)

    def token_count(self, frames: int, height: int, width: int) -> int:
        """Self-attention video tokens for a request in pixels and frames."""
        return self.token_grid(frames, height, width).video_tokens

    def architecture_key(self, transformer: torch.nn.Module) -> dict[str, str]:
        """Identifies a transformer's architecture (for calibration plans): spec, class and a hash of its config."""
        cfg = {k: v for k, v in dict(getattr(transformer, "config", {})).items() if not str(k).startswith("_")}
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return {"spec": self.name, "class": type(transformer).__name__, "config_sha1": digest}

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """The transformer blocks in call order (``cache_block_patterns``), or [] when the spec does not say."""
        return [m for _, m in _in_list_order(transformer, self.cache_block_patterns)]


_REGISTRY: list[ModelSpec] = []


def register_spec(spec: ModelSpec) -> ModelSpec:
    _REGISTRY.append(spec)
    return spec


def supported_specs() -> list[ModelSpec]:
    return list(_REGISTRY)


def indexed_modules(transformer: torch.nn.Module, pattern: str) -> list[tuple[str, int, torch.nn.Module]]:
    """``(name, index, module)`` for modules whose name fullmatches ``pattern``; group 1 is the index."""
    pat = re.compile(pattern)
    return [(n, int(m.group(1)), mod) for n, mod in transformer.named_modules() if (m := pat.fullmatch(n))]


def _in_list_order(transformer: torch.nn.Module, patterns) -> list[tuple[str, torch.nn.Module]]:
    """Modules matched by ``patterns`` (one per block list, group 1 = index in the list): list by list, by index."""
    out = []
    for pattern in patterns:
        out += [(n, m) for n, _, m in sorted(indexed_modules(transformer, pattern), key=lambda x: x[1])]
    return out


def modules_matching(transformer: torch.nn.Module, patterns) -> list[tuple[str, torch.nn.Module]]:
    pats = [re.compile(p) for p in patterns]
    return [(n, m) for n, m in transformer.named_modules() if any(p.fullmatch(n) for p in pats)]


def denoiser_attrs() -> tuple[str, ...]:
    """Pipeline attributes that may hold a supported denoiser (``transformer``, Wan 2.2's ``transformer_2``), in
    the specs' order."""
    return tuple(dict.fromkeys(a for s in _REGISTRY for a in s.transformer_attrs))


def denoisers(pipe) -> list[tuple[str, torch.nn.Module]]:
    """``(attribute, module)`` of every denoiser ``pipe`` holds under :func:`denoiser_attrs`."""
    found = [(name, getattr(pipe, name, None)) for name in denoiser_attrs()]
    return [(n, t) for n, t in found if t is not None]


def spec_for_transformer(transformer: torch.nn.Module) -> ModelSpec | None:
    cls = type(transformer).__name__
    for spec in _REGISTRY:
        if cls in spec.transformer_classes:
            return spec
    return None


def supported_models_text() -> str:
    return "; ".join(f"{s.name} ({', '.join(s.pipeline_classes)})" for s in _REGISTRY)
