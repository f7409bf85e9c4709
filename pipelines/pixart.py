"""PixArt-Alpha / PixArt-Sigma (text-to-image): image-only self-attention in ``transformer_blocks.N.attn1``, text
in the cross-attention ``attn2``.

Facts from diffusers 0.42.1 (``models/transformers/pixart_transformer_2d.py``, ``models/attention.py``
``BasicTransformerBlock``, ``pipelines/pixart_alpha/pipeline_pixart_{alpha,sigma}.py``):

- The blocks' ``Attention`` modules use ``AttnProcessor2_0`` (``models/attention_processor.py``), which calls
  ``F.scaled_dot_product_attention`` itself on ``[B, H, S, D]``: call site ``diffusers.models.attention_processor``,
  route ``"sdpa"``. ``attn1`` gets ``attention_mask`` (None from both pipelines), ``attn2`` the caption mask.
- ``PatchEmbed`` flattens the ``[B, C, H, W]`` latent row-major (width fastest): ``H/p x W/p`` tokens, one frame.
- The pipelines batch classifier-free guidance (one forward per step on ``[uncond; cond]``) and open no diffusers
  cache context; the step comes from the scheduler's timesteps.
- VAE 8x spatial, patch 2: one token covers 16 x 16 px; PixArt-1024 is 64 x 64 = 4,096 tokens.
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec


def _hidden_states(args, kwargs):
    hs = kwargs.get("hidden_states", args[0] if args else None)
    if hs is None or hs.dim() != 4:
        raise ValueError("PixArt transformer expects hidden_states [B, C, H, W]")
    return hs


def pixart_layout(transformer, args, kwargs) -> TokenLayout:
    """One frame of ``(H // p) x (W // p)`` tokens, as ``PixArtTransformer2DModel.forward`` computes its grid from the
    latent ``hidden_states [B, C, H, W]`` (the patch conv's stride floors the same way)."""
    hs = _hidden_states(args, kwargs)
    p = transformer.config.patch_size
    return TokenLayout(1, hs.shape[-2] // p, hs.shape[-1] // p)


def pixart_timestep(args, kwargs):
    """``timestep [B]`` (forward signature: hidden_states, encoder_hidden_states, timestep, ...)."""
    return kwargs.get("timestep", args[2] if len(args) > 2 else None)


def published_band(tokens: int) -> int:
    """Re-ttention's PixArt band half-width for ``tokens`` image tokens: ``floor(floor(T * 0.03125) / 2)`` (its
    "sparsity" 0.03125 is the kept fraction), e.g. 64 for PixArt-1024's 4,096 tokens."""
    return int(tokens * 0.03125) // 2


def pixart_defaults(pipe) -> dict:
    # Re-ttention's own PixArt-Alpha/Sigma 1024 processor (cccrrrccc/Re-ttention module/pixart_processor.py, see
    # reference/sparse-attention-methods.md section 4.2): 20 steps, steps 0-4 full attention only, recalibration
    # (full + sparse, refresh rho and the residual) at steps 5, 10 and 15, every layer sparse, rho drift 0.04 per
    # sparse step (RettentionConfig's default ratio_drift). Its mask is a 1-D band over the raster-ordered tokens,
    # |i - j| <= published_band(T): T = 4096 gives +-64 tokens (about 3.1% of the pairs), which is RettentionConfig's
    # token rule with window_tokens=64 on one frame (window_frames is moot for an image). The published code
    # recomputes the band from each call's T; a config holds one width, taken here at the checkpoint's native size
    # (config.sample_size latent pixels: 128 -> 64 x 64 tokens -> 64; the 512 model 16, the 2K Sigma 256).
    # The band is token-exact; the block kernels keep whole blocks: at 64 x 64 tokens the block mask keeps 9.2% of
    # the pairs with 128-token blocks and 4.6% with 64-token blocks (test_pixart.py::test_published_band_density),
    # so PixArt's default block is 64 tokens (ours: the closest our kernels get to the published density).
    transformer = getattr(pipe, "transformer", None)
    config = getattr(transformer, "config", None)
    if config is not None:
        side = config.sample_size // config.patch_size
        window = published_band(side * side)
    else:
        window = published_band(64 * 64)
    rettention = {
        "dense_step_fraction": 5 / 20,
        "recalibrate_every": 5,
        "dense_layers": 0,
        "window_tokens": window,
        "block_size": 64,
    }
    # Radial, DraftAttention and Sparse-vDiT publish no PixArt settings, nor TaylorSeer (its DiT-XL/2 numbers are for
    # DiT, not PixArt): their generic defaults apply (accel/config.py).
    return {"rettention": rettention}


# Hub checkpoints known to load as this family (diffusers' PixArt pipeline docs and docstrings).
EXAMPLE_REPOS = (
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "PixArt-alpha/PixArt-XL-2-1024-MS",
    "PixArt-alpha/PixArt-XL-2-512x512",
)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: every code path of a real PixArt pipeline (T5 text encoder, tokenizer, transformer with
# learned sigma and caption projection, 8x VAE, DPM-Solver scheduler, batched classifier-free guidance) built offline
# from configs. Random weights: the image it makes is noise.


def tiny_pixart_transformer(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, text_dim: int = 32, sample_size: int = 16
):
    """A randomly initialised ``PixArtTransformer2DModel`` with PixArt's block settings (adaLN-single, learned sigma:
    ``out_channels`` twice the 4 latent channels)."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=2,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        in_channels=4,
        out_channels=8,
        caption_channels=text_dim,
        cross_attention_dim=num_heads * head_dim,  # captions are projected to the inner width before attn2
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )


def tiny_pixart_pipeline(
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    seed: int = 0,
    alpha: bool = False,
    dtype: torch.dtype = torch.float32,
):
    """A ``PixArtSigmaPipeline`` (``alpha=True``: ``PixArtAlphaPipeline``) with tiny random components.

    The VAE has four levels, so the pipeline's ``vae_scale_factor`` is PixArt's real 8 (pixel sizes map to tokens as
    for the released models). Any text works with the word-level tokenizer (unknown words become ``<unk>``).
    """
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

    torch.manual_seed(seed)
    transformer = tiny_pixart_transformer(
        num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, text_dim=text_dim
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
    ).eval()
    text_encoder = tiny_t5_encoder(text_dim)
    cls = PixArtAlphaPipeline if alpha else PixArtSigmaPipeline
    pipe = cls(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    return finish(pipe, dtype)


PIXART = register_spec(
    ModelSpec(
        name="pixart",
        transformer_classes=("PixArtTransformer2DModel",),
        pipeline_classes=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.attention_processor",
        route="sdpa",
        self_attention=(r"transformer_blocks\.(\d+)\.attn1",),
        layout_from_inputs=pixart_layout,
        timestep_from_inputs=pixart_timestep,
        text_pos="none",
        # TaylorSeer caches each block's attention and feed-forward outputs (before their adaLN gates).
        cache_module_patterns=(
            r"transformer_blocks\.\d+\.attn1",
            r"transformer_blocks\.\d+\.attn2",
            r"transformer_blocks\.\d+\.ff",
        ),
        cache_block_patterns=(r"transformer_blocks\.(\d+)",),
        defaults=pixart_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=1,
        default_fps=None,
        is_video=False,  # one frame: radial (a temporal decay) refuses it
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_pixart_pipeline,
        # 128 x 192 px: a 16 x 24 latent, 8 rows of 12 tokens = 96 tokens, 6 blocks of 16.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            num_inference_steps=6,
            height=128,
            width=192,
            guidance_scale=4.5,
            max_sequence_length=16,
            use_resolution_binning=False,
            clean_caption=False,
            output_type="latent",
        ),  # fmt: skip
    )
)
