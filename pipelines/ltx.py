"""LTX-Video (T2V, I2V): video-only self-attention in ``transformer_blocks.N.attn1``, text in the cross-attention
``attn2``.

Facts from diffusers 0.42.1 (``models/transformers/transformer_ltx.py``, ``pipelines/ltx/pipeline_ltx.py`` and
``pipeline_ltx_image2video.py``):

- ``LTXVideoAttnProcessor`` calls the module-global ``dispatch_attention_fn`` on ``[B, S, H, D]``: call site
  ``diffusers.models.transformers.transformer_ltx``, route ``"dispatch"``. ``attn1`` gets no mask (video only),
  ``attn2`` the caption mask.
- The transformer takes latents already packed by the pipeline (``_pack_latents``: ``[B, C, F, H, W]`` ->
  ``[B, F*H*W, C]`` frame-major, width fastest, patch 1 x 1 x 1 for every released checkpoint) and the grid as the
  ``num_frames``, ``height``, ``width`` arguments, from which its RoPE builds one coordinate per token; so these
  arguments are exactly the self-attention token grid (the rotary embedding would not broadcast otherwise).
- The VAE compresses 32x spatially and 8x temporally (``vae_spatial_compression_ratio`` /
  ``vae_temporal_compression_ratio``): 8k+1 frames, one token covers 32 x 32 px.
- Both pipelines batch classifier-free guidance inside ``cache_context("cond_uncond")``. The I2V pipeline passes a
  per-token ``timestep [B, S]`` (0 on the conditioning first frame): its maximum is the step's timestep.
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec

# LTXVideoTransformer3DModel.forward(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask,
#                                    num_frames, height, width, ...): positions of the grid arguments.
_GRID_ARGS = (("num_frames", 4), ("height", 5), ("width", 6))


def ltx_layout(transformer, args, kwargs) -> TokenLayout:
    """The token grid ``(num_frames, height, width)`` of one forward call (latent sizes after packing)."""
    grid = [kwargs.get(name, args[i] if len(args) > i else None) for name, i in _GRID_ARGS]
    if any(g is None for g in grid):
        # LTXConditionPipeline passes video_coords instead (conditioning tokens appended to the video): no grid.
        raise ValueError(
            "LTX transformer called without num_frames/height/width (LTXConditionPipeline passes video_coords): accel "
            "supports LTXPipeline and LTXImageToVideoPipeline"
        )
    return TokenLayout(*(int(g) for g in grid))


def ltx_timestep(args, kwargs):
    """``timestep [B]`` (T2V) or ``[B, S]`` (I2V, per token); the core takes its maximum."""
    return kwargs.get("timestep", args[2] if len(args) > 2 else None)


def ltx_defaults(pipe) -> dict:
    # No published LTX-Video settings exist for any of the methods: Radial Attention, DraftAttention, Sparse-vDiT and
    # Re-ttention ship scripts for Wan / HunyuanVideo / CogVideoX / PixArt only, and TaylorSeer for FLUX,
    # HunyuanVideo, Wan and DiT (reference/sparse-attention-methods.md, reference/caching-and-diffusers.md 1.2).
    # Their generic defaults apply (accel/config.py).
    return {}


# Hub checkpoints known to load as this family with LTXPipeline / LTXImageToVideoPipeline (diffusers' LTX docs).
EXAMPLE_REPOS = ("Lightricks/LTX-Video",)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: every code path of a real LTX pipeline (T5 text encoder, tokenizer, transformer with
# caption projection and RoPE, the real 32x / 8x VAE compression, flow-matching scheduler with dynamic shift, batched
# classifier-free guidance) built offline from configs. Random weights: the video it makes is noise.


def tiny_ltx_transformer(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, text_dim: int = 32):
    """A randomly initialised ``LTXVideoTransformer3DModel`` (patch 1 x 1 x 1, 8 latent channels)."""
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        cross_attention_dim=num_heads * head_dim,  # captions are projected to the inner width before attn2
        num_layers=num_layers,
        caption_channels=text_dim,
    )


def tiny_ltx_vae():
    """An ``AutoencoderKLLTXVideo`` with the released model's compression (patch 4 and three spatio-temporal
    down-samplings: 4 * 2**3 = 32x spatially, 2**3 = 8x temporally) and 8-channel levels."""
    from diffusers import AutoencoderKLLTXVideo

    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae.eval()


def tiny_ltx_pipeline(
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    seed: int = 0,
    image_to_video: bool = False,
    dtype: torch.dtype = torch.float32,
):
    """An ``LTXPipeline`` (``image_to_video=True``: ``LTXImageToVideoPipeline``) with tiny random components.

    Any text works with the word-level tokenizer (unknown words become ``<unk>``).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXPipeline

    torch.manual_seed(seed)
    transformer = tiny_ltx_transformer(
        num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, text_dim=text_dim
    ).eval()
    vae = tiny_ltx_vae()
    text_encoder = tiny_t5_encoder(text_dim)
    # The pipelines shift the sigmas by the sequence length (mu), which needs dynamic shifting.
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(),
               transformer=transformer)  # fmt: skip
    return finish(pipe, dtype)


LTX = register_spec(
    ModelSpec(
        name="ltx",
        transformer_classes=("LTXVideoTransformer3DModel",),
        pipeline_classes=("LTXPipeline", "LTXImageToVideoPipeline"),
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.transformers.transformer_ltx",
        route="dispatch",
        self_attention=(r"transformer_blocks\.(\d+)\.attn1",),
        layout_from_inputs=ltx_layout,
        timestep_from_inputs=ltx_timestep,
        text_pos="none",
        # TaylorSeer caches each block's attention and feed-forward outputs (before their gates).
        cache_module_patterns=(
            r"transformer_blocks\.\d+\.attn1",
            r"transformer_blocks\.\d+\.attn2",
            r"transformer_blocks\.\d+\.ff",
        ),
        cache_block_patterns=(r"transformer_blocks\.(\d+)",),
        defaults=ltx_defaults,
        spatial_multiple=32,  # VAE 32x spatial compression x patch size 1
        frame_multiple=8,  # VAE 8x temporal compression: 8k+1 frames
        # The pipelines' frame_rate default (25), which sets the RoPE's temporal scale the video is generated for.
        default_fps=25,
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_ltx_pipeline,
        # 128 x 128 px, 33 frames: 5 latent frames of 4 x 4 tokens = 80 tokens, 5 blocks of 16.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            num_inference_steps=6,
            height=128,
            width=128,
            num_frames=33,
            max_sequence_length=16,
            guidance_scale=3.0,
            output_type="latent",
        ),  # fmt: skip
    )
)
