"""Wan 2.1 / 2.2 (T2V, I2V): video-only self-attention in ``blocks.N.attn1``, text in cross-attention."""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec


def _hidden_states(args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    if hs is None or hs.dim() != 5:
        raise ValueError("Wan transformer expects hidden_states [B, C, F, H, W]")
    return hs


def wan_layout(transformer, args, kwargs) -> TokenLayout:
    hs = _hidden_states(args, kwargs)
    pt, ph, pw = transformer.config.patch_size
    _, _, f, h, w = hs.shape
    return TokenLayout(f // pt, h // ph, w // pw)


def wan_timestep(args, kwargs):
    return kwargs.get("timestep", args[1] if len(args) > 1 else None)


def wan_defaults(pipe) -> dict:
    # Radial Attention's published scripts: Wan2.1 decay 0.2, 12 of 50 steps dense, first layer dense;
    # Wan2.2-A14B decay 0.8, 11 of 40 steps dense, first layer dense.
    two_experts = getattr(pipe, "transformer_2", None) is not None
    if two_experts:
        radial = {"decay": 0.8, "dense_step_fraction": 11 / 40, "dense_layers": 1, "sink": True}
    else:
        radial = {"decay": 0.2, "dense_step_fraction": 12 / 50, "dense_layers": 1, "sink": True}
    # DraftAttention's Wan2.1 scripts: sparsity 0.75, block 0 dense, dense while t > 925 (about 15 of 50 steps at
    # shift 5). Re-ttention and Sparse-vDiT publish no Wan settings: their generic defaults apply (accel/config.py).
    draft = {"sparsity": 0.75, "dense_step_fraction": 15 / 50, "dense_layers": 1}
    # TaylorSeer-Wan2.1: fresh_threshold 5, max_order 1, first_enhance 1.
    # Adaptive schedule (the preset's default; threshold=None keeps the published fixed one above): chosen from the
    # caching front measured on the embedded Wan model against cache-dit, diffusers' FirstBlockCache / MagCache /
    # TaylorSeer (benchmarks/results/cache_front_embedded_cpu.md, docs/adaptive-caching.md): 8 warm-up steps, the
    # first block's residual change against 0.24, differences over step index.
    adaptive = {"threshold": 0.24, "warmup_steps": 8, "distance": "step"}
    taylorseer = {"interval": 5, "order": 1, "warmup_steps": 1, "adaptive": adaptive}
    return {"radial": radial, "draft": draft, "taylorseer": taylorseer}


# Hub checkpoints known to load as this family (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = (
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: every code path of a real Wan pipeline (text encoder, tokenizer, transformer, VAE,
# scheduler, classifier-free guidance) built offline from configs. Random weights: the video it makes is noise.


def tiny_wan_transformer(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, text_dim: int = 32, in_channels: int = 16, **extra
):
    """A randomly initialised ``WanTransformer3DModel`` (``extra``: further config, e.g. ``image_dim`` for I2V)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=4 * num_heads * head_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        **extra,
    )


def tiny_wan_pipeline(
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    seed: int = 0,
    two_experts: bool = False,
    dtype: torch.dtype = torch.float32,
):
    """A ``WanPipeline`` with tiny random components (T5 text encoder from a config, word-level tokenizer).

    Any text maps onto the tiny vocabulary (unknown words become ``<unk>``), so any prompt works.
    ``two_experts`` adds a ``transformer_2`` with a boundary ratio, like Wan 2.2 A14B.
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
    )

    torch.manual_seed(seed)

    def transformer():
        return tiny_wan_transformer(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, text_dim=text_dim)

    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = tiny_t5_encoder(text_dim)
    pipe = WanPipeline(
        transformer=transformer(),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer_2=transformer() if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )
    return finish(pipe, dtype)


def tiny_wan_i2v_pipeline(*, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ``WanImageToVideoPipeline`` (Wan 2.1 I2V: CLIP image encoder, 36-channel transformer with image context)
    with tiny random components, built offline like :func:`tiny_wan_pipeline`."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    base = tiny_wan_pipeline(seed=seed)
    torch.manual_seed(seed + 1)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=8,
        )
    ).eval()  # fmt: skip
    pipe = WanImageToVideoPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=encoder,
        transformer=tiny_wan_transformer(in_channels=36, image_dim=8),
    )
    return finish(pipe, dtype)


WAN = register_spec(
    ModelSpec(
        name="wan",
        transformer_classes=("WanTransformer3DModel",),
        pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
        transformer_attrs=("transformer", "transformer_2"),
        attention_call_site="diffusers.models.transformers.transformer_wan",
        self_attention=(r"blocks\.(\d+)\.attn1",),
        layout_from_inputs=wan_layout,
        timestep_from_inputs=wan_timestep,
        text_pos="none",
        cache_module_patterns=(r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"),
        cache_block_patterns=(r"blocks\.(\d+)",),
        defaults=wan_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=4,  # VAE 4x temporal compression: 4k+1 frames
        default_fps=16,
        example_repos=EXAMPLE_REPOS,
        # diffusers' Wan docs keep the VAE in float32 (AutoencoderKLWan in half precision degrades the video).
        float32_components=("vae",),
        tiny_pipeline=tiny_wan_pipeline,
        # 64x64 px, 17 frames: 5 latent frames of 4x4 tokens = 80 tokens, 5 blocks of 16.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            num_inference_steps=6,
            height=64,
            width=64,
            num_frames=17,
            max_sequence_length=16,
            guidance_scale=5.0,
            output_type="latent",
        ),  # fmt: skip
    )
)
