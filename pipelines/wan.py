"""Wan 2.1 / 2.2 (T2V, I2V): video-only self-attention in ``blocks.N.attn1``, text in cross-attention."""

from __future__ import annotations

from accel.attention_kernels import TokenLayout

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
    taylorseer = {"interval": 5, "order": 1, "warmup_steps": 1}
    return {"radial": radial, "draft": draft, "taylorseer": taylorseer}


WAN = register_spec(
    ModelSpec(
        name="wan",
        transformer_classes=("WanTransformer3DModel",),
        pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
        transformer_attrs=("transformer", "transformer_2"),
        attention_call_site="diffusers.models.transformers.transformer_wan",
        self_attention_pattern=r"blocks\.(\d+)\.attn1",
        layout_from_inputs=wan_layout,
        timestep_from_inputs=wan_timestep,
        text_pos="none",
        cache_module_patterns=(r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"),
        cache_block_pattern=r"blocks\.(\d+)",
        opens_cache_context=True,
        defaults=wan_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=4,  # VAE 4x temporal compression: 4k+1 frames
        default_fps=16,
    )
)
