"""Flux.1 (dev / schnell, Kontext, Fill, img2img): joint attention over ``[text, image]`` in the double-stream blocks'
``transformer_blocks.N.attn`` and the single-stream blocks' ``single_transformer_blocks.N.attn``.

Facts, from diffusers 0.42.1 ``models/transformers/transformer_flux.py`` and ``pipelines/flux/``:

- ``FluxAttnProcessor`` concatenates ``[encoder (text), image]`` q/k/v ``[B, S, H, D]`` and calls the file's global
  ``dispatch_attention_fn`` without a mask (T5's padded text is attended like real text, 512 tokens at
  ``max_sequence_length=512``); single-stream blocks concatenate text first as well.
- The pipelines pack 2x2 latent patches before the transformer (``patch_size`` 1): ``hidden_states`` is
  ``[B, (H/16)(W/16), C*4]`` in row-major order, and ``img_ids [S_img, 3]`` holds each token's (index, row, column);
  Kontext appends its reference image's tokens after the target's, with index 1.
- The transformer receives ``timestep / 1000``; ``FluxPipeline`` opens ``cache_context("cond"/"uncond")`` without a
  step index, the other Flux pipelines (Kontext, Fill, img2img) open none, so steps resolve by matching the timestep
  against the scheduler's.
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import TINY_VOCAB, finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec

# FluxTransformer2DModel.forward's positional order, for callers that pass tensors positionally.
_FORWARD_ARGS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids")


def _arg(args, kwargs, name):
    if name in kwargs:
        return kwargs[name]
    i = _FORWARD_ARGS.index(name)
    return args[i] if len(args) > i else None


def image_grids(img_ids: torch.Tensor) -> list[tuple[int, int]] | None:
    """The images in Flux's position ids ``[S_img, 3]`` (index, row, column; ``[B, S_img, 3]`` is deprecated but
    accepted), in sequence order: ``(rows, cols)`` of each run of one index, or None unless every run is a full
    row-major grid starting at (0, 0) (the only order the token layout expresses).

    Reads the ids on the host once per transformer forward (a few KB). Ids in half precision are exact up to 256
    rows and columns (4,096 px); past that they no longer read as a grid, which is a counted fallback, never a
    wrong layout.
    """
    ids = img_ids[0] if img_ids.dim() == 3 else img_ids
    if ids.dim() != 2 or ids.shape[-1] != 3 or ids.shape[0] == 0:
        return None
    ids = ids.detach().float().round().long().cpu()
    starts = [0, *(torch.nonzero(ids[1:, 0] != ids[:-1, 0]).flatten() + 1).tolist(), ids.shape[0]]
    grids = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        rows, cols = ids[a:b, 1], ids[a:b, 2]
        h, w = int(rows.max()) + 1, int(cols.max()) + 1
        if h * w != b - a or int(rows.min()) < 0 or int(cols.min()) < 0:
            return None
        if not (
            torch.equal(rows, torch.arange(h).repeat_interleave(w)) and torch.equal(cols, torch.arange(w).repeat(h))
        ):
            return None
        grids.append((h, w))
    return grids


def flux_layout(transformer, args, kwargs) -> TokenLayout:
    """``[text (padded T5 length), image tokens]`` of one forward; an image is one frame of (H/16) x (W/16) tokens.

    Kontext's reference image follows the target image: when both have the same grid the sequence is exactly two
    frames of it (the reference's RoPE index is 1, like a next frame). A reference of another size, or position ids
    that are not row-major grids, cannot be expressed: the layout then covers the target image (or a 1x1
    placeholder) only, fewer tokens than the call holds, so the core runs that call dense, counted as
    ``fallback:layout_mismatch``.
    """
    hs = _arg(args, kwargs, "hidden_states")
    text = _arg(args, kwargs, "encoder_hidden_states")
    img_ids = _arg(args, kwargs, "img_ids")
    if hs is None or hs.dim() != 3 or text is None or img_ids is None:
        raise ValueError("Flux transformer expects packed hidden_states [B, S, C], encoder_hidden_states and img_ids")
    text_len = text.shape[1]
    grids = image_grids(img_ids)
    if not grids:
        return TokenLayout(1, 1, 1, text_len, "first")
    (h, w), n = grids[0], len(grids)
    if all(g == (h, w) for g in grids) and n * h * w == hs.shape[1]:
        return TokenLayout(n, h, w, text_len, "first")
    return TokenLayout(1, h, w, text_len, "first")


def flux_timestep(args, kwargs):
    """The scheduler's timestep (0-1000): the pipelines pass ``t / 1000`` and the transformer scales it back."""
    t = _arg(args, kwargs, "timestep")
    return t.float() * 1000 if isinstance(t, torch.Tensor) else t


def flux_defaults(pipe) -> dict:
    # TaylorSeer-FLUX (Shenyi-Z/TaylorSeer, TaylorSeer-FLUX cache_functions/cache_init.py, "Taylor" mode):
    # fresh_threshold 6, max_order 1, first_enhance 3. Draft, Re-ttention and Sparse-vDiT publish no Flux settings:
    # their generic defaults apply (accel/config.py); radial refuses image models.
    return {"taylorseer": {"interval": 6, "order": 1, "warmup_steps": 3}}


# Hub checkpoints known to load as this family (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = (
    "black-forest-labs/FLUX.1-dev",
    "black-forest-labs/FLUX.1-schnell",
    "black-forest-labs/FLUX.1-Kontext-dev",
    "black-forest-labs/FLUX.1-Fill-dev",
)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: every code path of a real Flux pipeline (CLIP and T5 text encoders, tokenizers,
# transformer with guidance embedding, VAE, scheduler with resolution-dependent shift) built offline from configs.
# Random weights: the image it makes is noise.

PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxKontextPipeline", "FluxFillPipeline")


def tiny_flux_transformer(
    *,
    num_layers: int = 2,
    num_single_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    in_channels: int = 16,
    out_channels: int | None = None,
):
    """A randomly initialised ``FluxTransformer2DModel`` with guidance embedding (as FLUX.1-dev)."""
    from diffusers import FluxTransformer2DModel

    rope = head_dim // 4
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=True,
        axes_dims_rope=(head_dim - 2 * rope, rope, rope),  # (index, row, column) axes, summing to head_dim
    )


def tiny_flux_pipeline(
    *,
    pipeline: str = "FluxPipeline",
    num_layers: int = 2,
    num_single_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A Flux pipeline (``pipeline``: one of :data:`PIPELINES`) with tiny random components: CLIP and T5 text
    encoders from configs, word-level tokenizers (CLIP's 16 tokens long), a 4-channel VAE with Flux's 8x spatial
    compression, so a tiny call's token grid follows the same size rule as the real model (16 px per token).

    Any text maps onto the tiny vocabulary (unknown words become ``<unk>``), so any prompt works.
    """
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    torch.manual_seed(seed)
    latent_channels, scale = 4, 8
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=(4, 4, 4, 4),  # 4 levels: 2**3 = 8x compression, as Flux's VAE
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    packed = latent_channels * 4  # 2x2 latent patches packed into one token
    # Fill concatenates the packed latents of the masked image and of its (scale x scale)-pixel mask to the noise.
    fill = pipeline == "FluxFillPipeline"
    transformer = tiny_flux_transformer(
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        text_dim=text_dim,
        in_channels=2 * packed + scale * scale * 4 if fill else packed,
        out_channels=packed,
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=TINY_VOCAB, hidden_size=text_dim, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, projection_dim=text_dim, bos_token_id=0,
            eos_token_id=2, pad_token_id=0,
        )
    ).eval()  # fmt: skip
    t5 = tiny_t5_encoder(text_dim)
    components = dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=tiny_tokenizer(model_max_length=16),
        text_encoder_2=t5,
        tokenizer_2=tiny_tokenizer(),
        transformer=transformer,
    )
    pipe = getattr(diffusers, pipeline)(**components)
    return finish(pipe, dtype)


FLUX = register_spec(
    ModelSpec(
        name="flux",
        transformer_classes=("FluxTransformer2DModel",),
        pipeline_classes=PIPELINES,
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.transformers.transformer_flux",
        route="dispatch",
        self_attention=(r"transformer_blocks\.(\d+)\.attn", r"single_transformer_blocks\.(\d+)\.attn"),
        layout_from_inputs=flux_layout,
        timestep_from_inputs=flux_timestep,
        text_pos="first",
        # TaylorSeer-FLUX caches per double-stream block the image and text attention outputs (after their output
        # projections: FluxAttention returns the tuple (image, text)) and both MLP outputs (ff, ff_context), and per
        # single-stream block the fused output of its last linear layer (proj_out, before the gate). A module hook
        # only saves the work of the module it wraps, so the single-stream attention and the MLP's first linear
        # layer (proj_mlp) are cached too: on predicted steps nothing of a single-stream block runs but its
        # modulation and GELU, and proj_out's prediction is exactly TaylorSeer's.
        cache_module_patterns=(
            r"transformer_blocks\.\d+\.attn",
            r"transformer_blocks\.\d+\.ff",
            r"transformer_blocks\.\d+\.ff_context",
            r"single_transformer_blocks\.\d+\.attn",
            r"single_transformer_blocks\.\d+\.proj_mlp",
            r"single_transformer_blocks\.\d+\.proj_out",
        ),
        # No cache_block_patterns: Flux blocks return (encoder_hidden_states, hidden_states), not hidden_states, so
        # lite caching of the block stack does not apply (diffusers' own lite mode yields noise on Flux, PR #12648).
        defaults=flux_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x 2x2 packing
        frame_multiple=1,
        default_fps=None,
        is_video=False,  # images: one frame (radial's temporal decay refuses them)
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_flux_pipeline,
        # 128 x 192 px: 8 x 12 image tokens after 16 T5 tokens = 112 tokens, 7 blocks of 16. FluxPipeline's guidance
        # is an embedding (FLUX.1-dev); true_cfg_scale with a negative prompt adds the uncond branch.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            true_cfg_scale=2.0,
            guidance_scale=3.5,
            num_inference_steps=6,
            height=128,
            width=192,
            max_sequence_length=16,
            output_type="latent",
        ),  # fmt: skip
    )
)
