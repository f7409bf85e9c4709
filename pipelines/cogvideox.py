"""CogVideoX 1.0 and 1.5 (T2V, I2V, V2V): joint self-attention over ``[text, video]`` in
``transformer_blocks.N.attn1``.

``CogVideoXAttnProcessor2_0`` (``diffusers.models.attention_processor``) concatenates the text tokens BEFORE the video
tokens and calls ``F.scaled_dot_product_attention`` directly on q/k/v ``[B, H, text + video, D]`` without a mask: the
padded text (``max_sequence_length``, 226 in every published pipeline) is attended like real text, so every key is
real. CogVideoX 1.5 patchifies time too (``patch_size_t`` 2): its token frames are the latent frames / 2 (the
pipelines pad an odd latent frame count to an even one before the transformer sees it).
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec


def _arg(args, kwargs, name: str, index: int):
    return kwargs.get(name, args[index] if len(args) > index else None)


def cogvideox_layout(transformer, args, kwargs) -> TokenLayout:
    """The self-attention sequence of one ``CogVideoXTransformer3DModel.forward``: ``encoder_hidden_states.shape[1]``
    text tokens first, then the video tokens frame-major.

    ``hidden_states`` is ``[B, F, C, H, W]`` (frames before channels, unlike Wan and Mochi); the patch embedding
    makes ``F // patch_size_t`` token frames (1.5; 1.0 has no temporal patch) of ``(H // p) x (W // p)`` tokens
    (CogVideoXPatchEmbed.forward: ``num_frames // p_t``, and the reshape there requires ``F`` divisible by it).
    """
    hs = _arg(args, kwargs, "hidden_states", 0)
    text = _arg(args, kwargs, "encoder_hidden_states", 1)
    if hs is None or hs.dim() != 5:
        raise ValueError("CogVideoX transformer expects hidden_states [B, F, C, H, W]")
    if text is None or text.dim() != 3:
        raise ValueError("CogVideoX transformer expects encoder_hidden_states [B, L, D]")
    cfg = transformer.config
    p, pt = cfg.patch_size, cfg.patch_size_t or 1
    _, f, _, h, w = hs.shape
    text_len = int(text.shape[1])
    return TokenLayout(f // pt, h // p, w // p, text_len, "first" if text_len else "none")


def cogvideox_timestep(args, kwargs):
    return _arg(args, kwargs, "timestep", 2)


def cogvideox_defaults(pipe) -> dict:
    # Re-ttention (cccrrrccc/Re-ttention, scripts/Vbench_category.py + module/Cog_processor.py; reference
    # sparse-attention-methods.md section 4.2), CogVideoX-2B at 480x720, 49 frames, 50 steps, CFG 6:
    # - steps 0-14 full attention only (15 / 50); recalibration (full + sparse, refresh rho and the residual) every
    #   5 steps from 15 (15, 20, ..., 45), sparse steps between; rho drifts +0.04 per sparse step;
    # - every block's attn1 gets the Re-ttention processor: no dense layers;
    # - mask: the 226 text tokens dense (rows and columns); each video token attends the keys within +-21 of its
    #   within-frame index (window int(1350 * 0.03125) = 42, half 21, clipped to the frame) in EVERY frame (the
    #   window replicated across all 13 frames): window_tokens=21, window_frames=-1. The script hard-codes the 1,350
    #   tokens of a 480x720 frame; keeping +-21 at other frame sizes and on CogVideoX 1.5 is ours.
    # The published mask is element-exact (5.6% of the whole map with the text rows and columns); the plugin's block
    # mask contains it. In the natural frame-major order the window repeated in every frame keeps 24% of the map at
    # 128-token blocks (frames of 1,350 tokens never align with blocks); the method runs it in position-major order
    # instead, where it is one band: 7.8% at 128-token blocks, 6.7% at 64 (accel/methods/rettention.py plan_mask,
    # benchmarks/results/mask_density.md). block_size stays at the method's default 128 (ours).
    # Radial, DraftAttention, Sparse-vDiT and TaylorSeer publish no CogVideoX settings: generic defaults apply.
    rettention = {
        "window_tokens": 21,
        "window_frames": -1,
        "dense_step_fraction": 15 / 50,
        "recalibrate_every": 5,
        "ratio_drift": 0.04,
        "dense_layers": 0,
    }
    return {"rettention": rettention}


# Hub checkpoints known to load as this family (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = (
    "THUDM/CogVideoX-2b",
    "THUDM/CogVideoX-5b",
    "THUDM/CogVideoX-5b-I2V",
    "THUDM/CogVideoX1.5-5B",
    "THUDM/CogVideoX1.5-5B-I2V",
)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: a real CogVideoX pipeline (T5 text encoder, tokenizer, transformer, VAE, scheduler,
# batched classifier-free guidance) built offline from configs. Random weights: the video it makes is noise.


def tiny_cogvideox_transformer(
    *, version: str = "1.0", in_channels: int = 4, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16,
    text_dim: int = 32, **extra,
):  # fmt: skip
    """A randomly initialised ``CogVideoXTransformer3DModel``: ``version="1.0"`` like CogVideoX-2B (sin-cos
    positions, no temporal patch), ``"1.5"`` like CogVideoX1.5 (RoPE, ``patch_size_t=2``). Default sample: 64x64 px
    (8x8 latents), text length 16."""
    from diffusers import CogVideoXTransformer3DModel

    if version not in ("1.0", "1.5"):
        raise ValueError(f"CogVideoX version must be '1.0' or '1.5', got {version!r}")
    v15 = version == "1.5"
    return CogVideoXTransformer3DModel(
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=text_dim,
        num_layers=num_layers,
        sample_width=8,
        sample_height=8,
        sample_frames=17,
        patch_size=2,
        patch_size_t=2 if v15 else None,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=v15,
        **extra,
    )


def _tiny_parts(text_dim: int):
    """VAE (8x spatial, 4x temporal, 4 latent channels), T5 encoder and tokenizer shared by the tiny pipelines."""
    from diffusers import AutoencoderKLCogVideoX

    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )  # fmt: skip
    text_encoder = tiny_t5_encoder(text_dim)
    return vae, text_encoder, tiny_tokenizer()


def tiny_cogvideox_pipeline(
    *, version: str = "1.0", num_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32
):
    """A ``CogVideoXPipeline`` with tiny random components (``version`` "1.0" or "1.5", see
    :func:`tiny_cogvideox_transformer`). Any text maps onto the tiny vocabulary, so any prompt works."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    torch.manual_seed(seed)
    vae, text_encoder, tokenizer = _tiny_parts(32)
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=tiny_cogvideox_transformer(version=version, num_layers=num_layers),
        scheduler=CogVideoXDDIMScheduler(),
    )
    return finish(pipe, dtype)


def tiny_cogvideox_i2v_pipeline(*, version: str = "1.0", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ``CogVideoXImageToVideoPipeline`` (image latents concatenated on channels: 8 input channels; 1.5 adds the
    ``ofs`` embedding like CogVideoX1.5-5B-I2V) with tiny random components."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline

    torch.manual_seed(seed)
    vae, text_encoder, tokenizer = _tiny_parts(32)
    extra = {"ofs_embed_dim": 8} if version == "1.5" else {}
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=tiny_cogvideox_transformer(version=version, in_channels=8, **extra),
        scheduler=CogVideoXDPMScheduler(),
    )
    return finish(pipe, dtype)


COGVIDEOX = register_spec(
    ModelSpec(
        name="cogvideox",
        transformer_classes=("CogVideoXTransformer3DModel",),
        pipeline_classes=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline"),
        transformer_attrs=("transformer",),
        # CogVideoXAttnProcessor2_0 lives in attention_processor.py and calls F.scaled_dot_product_attention.
        attention_call_site="diffusers.models.attention_processor",
        route="sdpa",
        # attn1 is CogVideoX's only attention: joint self-attention over [text, video] (no cross-attention).
        self_attention=(r"transformer_blocks\.(\d+)\.attn1",),
        layout_from_inputs=cogvideox_layout,
        timestep_from_inputs=cogvideox_timestep,
        text_pos="first",
        # The attention output (video, text) and the feed-forward output over [text, video] of each block.
        cache_module_patterns=(r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"),
        # No cache_block_patterns: CogVideoXBlock returns (hidden_states, encoder_hidden_states), not hidden_states,
        # which lite caching (accel/hosts/diffusers_cache.py LiteBlockHook) does not handle.
        defaults=cogvideox_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=4,  # VAE 4x temporal compression: 4k+1 frames (49 for 1.0, 81 for 1.5)
        default_fps=8,  # CogVideoX 1.0 (6 s at 8 fps = 49 frames); CogVideoX 1.5 publishes 16 fps
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_cogvideox_pipeline,
        # 64x64 px, 17 frames: 5 latent frames of 4x4 tokens = 80 video tokens after 16 text tokens: 96 = 6 blocks.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            num_inference_steps=6,
            height=64,
            width=64,
            num_frames=17,
            max_sequence_length=16,
            guidance_scale=6.0,
            output_type="latent",
        ),  # fmt: skip
    )
)
