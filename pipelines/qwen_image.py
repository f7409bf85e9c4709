"""Qwen-Image: joint attention over ``[text, image]`` in the double-stream blocks' ``transformer_blocks.N.attn``.

Facts, from diffusers 0.42.1 ``models/transformers/transformer_qwenimage.py`` and ``pipelines/qwenimage/``:

- ``QwenDoubleStreamAttnProcessor2_0`` concatenates ``[text, image]`` q/k/v ``[B, S, H, D]`` and calls the file's
  global ``dispatch_attention_fn``. Padded text (prompts of different lengths in one batch) is masked by a key-only
  bool mask ``[B, 1, 1, S]`` built from ``encoder_hidden_states_mask`` (text validity, then ones for the image);
  the pipeline drops an all-ones mask, so a single prompt passes no mask at all.
- The text is as long as the longest prompt of the batch after the chat template's first 34 tokens are dropped
  (at most ``max_sequence_length``): it differs between the cond and uncond forwards, so the layout is per forward.
- The pipeline packs 2x2 latent patches (``hidden_states [B, (H/16)(W/16), C*4]``, row-major) and passes
  ``img_shapes``: per batch item a list of ``(frames, rows, cols)`` token grids in sequence order (one for
  text-to-image; the edit pipelines append their reference images). Its RoPE follows the same order.
- The transformer receives ``timestep / 1000``; the pipeline opens ``cache_context("cond"/"uncond")`` without a
  step index, so steps resolve by matching the timestep against the scheduler's.
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import TINY_VOCAB, finish, tiny_tokenizer
from .spec import ModelSpec, register_spec

# QwenImageTransformer2DModel.forward's positional order, for callers that pass tensors positionally.
_FORWARD_ARGS = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "timestep", "img_shapes")


def _arg(args, kwargs, name):
    if name in kwargs:
        return kwargs[name]
    i = _FORWARD_ARGS.index(name)
    return args[i] if len(args) > i else None


def image_grids(img_shapes) -> list[tuple[int, int, int]] | None:
    """The ``(frames, rows, cols)`` grids of the first batch item's ``img_shapes``, in sequence order (the model's
    RoPE also reads the first item only), or None when they cannot be read."""
    if not img_shapes:
        return None
    first = img_shapes[0]
    # Either [(f, h, w), ...] per batch item or, as older callers pass it, one (f, h, w) per batch item.
    shapes = [first] if len(first) == 3 and not isinstance(first[0], (tuple, list)) else list(first)
    try:
        return [(int(f), int(h), int(w)) for f, h, w in shapes]
    except (TypeError, ValueError):
        return None


def qwen_image_layout(transformer, args, kwargs) -> TokenLayout:
    """``[text (the batch's padded length), image tokens]`` of one forward; an image is one frame of
    (H/16) x (W/16) tokens.

    Reference images (edit pipelines) follow the target image: when every grid has the target's rows and columns
    the sequence is exactly their frames stacked. Grids of other sizes cannot be expressed: the layout then covers
    the target's first frame only, fewer tokens than the call holds, so the core runs that call dense, counted as
    ``fallback:layout_mismatch``.
    """
    hs = _arg(args, kwargs, "hidden_states")
    text = _arg(args, kwargs, "encoder_hidden_states")
    if hs is None or hs.dim() != 3 or text is None:
        raise ValueError("Qwen-Image transformer expects packed hidden_states [B, S, C] and encoder_hidden_states")
    text_len = text.shape[1]
    grids = image_grids(_arg(args, kwargs, "img_shapes"))
    if not grids:
        return TokenLayout(1, 1, 1, text_len, "first")  # never matches a real call: counted fallback
    _, h, w = grids[0]
    frames = sum(f for f, _, _ in grids)
    if all((gh, gw) == (h, w) for _, gh, gw in grids) and frames * h * w == hs.shape[1]:
        return TokenLayout(frames, h, w, text_len, "first")
    return TokenLayout(1, h, w, text_len, "first")


def qwen_image_timestep(args, kwargs):
    """The scheduler's timestep (0-1000): the pipeline passes ``t / 1000``."""
    t = _arg(args, kwargs, "timestep")
    return t.float() * 1000 if isinstance(t, torch.Tensor) else t


def qwen_image_defaults(pipe) -> dict:
    # Draft, Re-ttention, Sparse-vDiT and TaylorSeer publish no Qwen-Image settings: their generic defaults apply
    # (accel/config.py); radial refuses image models.
    return {}


# Hub checkpoints known to load as this family (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = ("Qwen/Qwen-Image",)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: every code path of a real Qwen-Image pipeline (Qwen2.5-VL text encoder and the chat
# template, tokenizer, transformer, VAE, scheduler with resolution-dependent shift, true CFG) built offline from
# configs. Random weights: the image it makes is noise.


def tiny_qwen_image_transformer(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, text_dim: int = 16):
    """A randomly initialised ``QwenImageTransformer2DModel`` (4 latent channels, packed 2x2 into 16)."""
    from diffusers import QwenImageTransformer2DModel

    rope = head_dim // 4
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=text_dim,
        guidance_embeds=False,
        axes_dims_rope=(head_dim - 2 * rope, rope, rope),  # (frame, row, column) axes, summing to head_dim
    )


def tiny_qwen_image_pipeline(
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A ``QwenImagePipeline`` with tiny random components: a Qwen2.5-VL text encoder from a config (its vision
    tower unused), the word-level tokenizer, and a 4-channel VAE with Qwen-Image's 8x spatial compression, so a tiny
    call's token grid follows the same size rule as the real model (16 px per token).

    Any text maps onto the tiny vocabulary (unknown words, the chat template's included, become ``<unk>``), so any
    prompt works offline.
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # 3 downsampling levels: 8x spatial, as Qwen-Image's VAE
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    # Token ids the text encoder treats specially (vision placeholders) sit past the tiny vocabulary: never produced.
    special = {name: TINY_VOCAB + i for i, name in enumerate(
        ("vision_start_token_id", "vision_end_token_id", "vision_token_id", "image_token_id", "video_token_id")
    )}  # fmt: skip
    text_config = dict(
        vocab_size=TINY_VOCAB, hidden_size=text_dim, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=1, pad_token_id=0, rope_theta=1e6,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=text_dim),
            vocab_size=TINY_VOCAB, hidden_size=text_dim, bos_token_id=1, eos_token_id=1, pad_token_id=0, **special,
        )
    ).eval()  # fmt: skip
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=tiny_qwen_image_transformer(
            num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, text_dim=text_dim
        ),
    )
    return finish(pipe, dtype)


QWEN_IMAGE = register_spec(
    ModelSpec(
        name="qwen-image",
        transformer_classes=("QwenImageTransformer2DModel",),
        pipeline_classes=("QwenImagePipeline",),
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.transformers.transformer_qwenimage",
        route="dispatch",
        self_attention=(r"transformer_blocks\.(\d+)\.attn",),
        layout_from_inputs=qwen_image_layout,
        timestep_from_inputs=qwen_image_timestep,
        text_pos="first",
        # Padded text reaches the attention call as a key-only mask, which the router turns into key validity: no
        # key_valid_from_inputs needed.
        # Per block, as TaylorSeer caches MMDiT double-stream blocks (its FLUX variant): the joint attention's
        # outputs (the module returns the tuple (image, text)) and both MLPs' outputs, all before their gates.
        cache_module_patterns=(
            r"transformer_blocks\.\d+\.attn",
            r"transformer_blocks\.\d+\.img_mlp",
            r"transformer_blocks\.\d+\.txt_mlp",
        ),
        # No cache_block_patterns: the blocks return (encoder_hidden_states, hidden_states), not hidden_states, so
        # lite caching of the block stack does not apply.
        defaults=qwen_image_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x 2x2 packing
        frame_multiple=1,
        default_fps=None,
        is_video=False,  # images: one frame (radial's temporal decay refuses them)
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_qwen_image_pipeline,
        # 128 x 192 px: 8 x 12 image tokens after the prompt's text (12 tokens for three words) = 108 tokens, 7
        # blocks of 16. true_cfg_scale with a negative prompt runs both branches; prompts of the same length keep
        # one sequence length (one compiled kernel shape) for both.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6 w7 w8",
            true_cfg_scale=4.0,
            num_inference_steps=6,
            height=128,
            width=192,
            max_sequence_length=64,
            output_type="latent",
        ),  # fmt: skip
    )
)
