"""ComfyUI facts per model family: which of ComfyUI's own model classes (not diffusers') a family is, where its
forward takes its arguments, its block lists, the token grid of a latent and where text sits in joint attention."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnsupportedModelError

# ----------------------------------------------------------------------------------------------------------------
# ComfyUI facts per model family: ComfyUI's own classes (not diffusers'), the family's name in accel.pipelines (for
# the published defaults), and how a forward's inputs give the token grid and the text length.


@dataclass(frozen=True)
class ComfyFamily:
    """One model family as ComfyUI builds it.

    - ``spec``: the family's :class:`~accel.pipelines.ModelSpec` name (published defaults, method support).
    - ``model_types``: ComfyUI ``model_base`` classes (``MODEL.model``), matched over the class's MRO names.
    - ``diffusion_classes``: classes of ``MODEL.model.diffusion_model``, matched the same way.
    - ``text_pos``: where text sits in self-attention (``"none"``: Wan, text is cross-attention).
    - ``block_lists``: ``(patches_replace kind, diffusion-model attribute)`` in call order; layer indices run over
      them (double blocks first).
    - ``text_len(args, kwargs)``: text tokens in joint attention, from the diffusion model's forward arguments.
    - ``context_lens(args, kwargs)``: lengths a cross-attention key may have (Wan: text, CLIP image tokens), to tell
      a self-attention call from a cross-attention call of the same length.
    - ``extra_frames(args, kwargs)``: latent frames the model concatenates to ``x`` (Wan's ``time_dim_concat``).
    """

    name: str
    spec: str
    model_types: tuple[str, ...]
    diffusion_classes: tuple[str, ...]
    text_pos: str
    block_lists: tuple[tuple[str, str], ...]
    text_len: Callable[[tuple, dict], int] = lambda args, kwargs: 0
    context_lens: Callable[[tuple, dict], tuple[int, ...]] = lambda args, kwargs: ()
    extra_frames: Callable[[tuple, dict], int] = lambda args, kwargs: 0


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    """A forward argument by position (how the DIFFUSION_MODEL executor passes them) or keyword."""
    return args[index] if len(args) > index else kwargs.get(name)


def _tokens(t) -> int:
    return int(t.shape[-2]) if isinstance(t, torch.Tensor) and t.dim() >= 2 else 0


# Argument positions of the diffusion models' forward(x, timestep, context, ...) in ComfyUI 0.3.60+:
# Wan (x, timestep, context, clip_fea, time_dim_concat, ...), Flux (x, timestep, context, y, guidance, ref_latents,
# ...), HunyuanVideo (x, timestep, context, y, txt_byt5, ...).
FAMILIES: tuple[ComfyFamily, ...] = (
    ComfyFamily(
        name="wan",
        spec="wan",
        model_types=("WAN21", "WAN22"),
        diffusion_classes=("WanModel",),
        text_pos="none",
        block_lists=(("double_block", "blocks"),),
        context_lens=lambda a, k: (_tokens(_arg(a, k, 2, "context")), _tokens(_arg(a, k, 3, "clip_fea"))),
        extra_frames=lambda a, k: (
            int(t.shape[2]) if isinstance(t := _arg(a, k, 4, "time_dim_concat"), torch.Tensor) else 0
        ),
    ),
    ComfyFamily(
        name="flux",
        spec="flux",
        model_types=("Flux",),
        diffusion_classes=("Flux",),
        text_pos="first",
        block_lists=(("double_block", "double_blocks"), ("single_block", "single_blocks")),
        text_len=lambda a, k: _tokens(_arg(a, k, 2, "context")),
    ),
    ComfyFamily(
        name="hunyuan_video",
        spec="hunyuan_video",
        model_types=("HunyuanVideo",),
        diffusion_classes=("HunyuanVideo",),
        text_pos="last",
        block_lists=(("double_block", "double_blocks"), ("single_block", "single_blocks")),
        text_len=lambda a, k: _tokens(_arg(a, k, 2, "context")) + _tokens(_arg(a, k, 4, "txt_byt5")),
    ),
)


def _mro_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def family_for(base_model, diffusion_model) -> ComfyFamily:
    """The family of a ComfyUI model (``MODEL.model`` and its ``diffusion_model``); raises with the supported list."""
    names = _mro_names(base_model) | _mro_names(diffusion_model)
    for fam in FAMILIES:
        if names & set(fam.model_types + fam.diffusion_classes):
            return fam
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    raise UnsupportedModelError(
        f"diffusion-fast does not support ComfyUI model {type(base_model).__name__} "
        f"({type(diffusion_model).__name__}) yet; supported: {supported}"
    )


def text_position(family: ComfyFamily, diffusion_model) -> str:
    """Where joint attention puts the text: HunyuanVideo's double blocks say it (``flipped_img_txt``: image first)."""
    if family.text_pos == "none":
        return "none"
    for kind, attr in family.block_lists:
        blocks = getattr(diffusion_model, attr, None)
        if kind == "double_block" and blocks is not None and len(blocks):
            flipped = getattr(blocks[0], "flipped_img_txt", None)
            if flipped is not None:
                return "last" if flipped else "first"
    return family.text_pos


def token_grid(x: torch.Tensor, patch_size, extra_frames: int = 0) -> tuple[int, int, int]:
    """``(frames, height, width)`` in tokens of a latent ``x [B, C, T, H, W]`` or ``[B, C, H, W]``.

    ComfyUI pads the latent to the patch size before embedding it, hence the ceilings; an image is one frame.
    """
    ps = (int(patch_size),) * 2 if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    dims = list(x.shape[-len(ps) :])
    if len(ps) == 3:
        dims[0] += extra_frames
    grid = [math.ceil(d / p) for d, p in zip(dims, ps, strict=True)]
    return (1, *grid) if len(grid) == 2 else tuple(grid)
