"""Mochi 1: joint self-attention over ``[video, text]`` in ``transformer_blocks.N.attn1``, one call per batch item.

``MochiAttnProcessor2_0`` (``diffusers.models.attention_processor``) projects video and text separately, then, for
each batch item, keeps only that item's valid text tokens (``encoder_attention_mask``) and calls
``F.scaled_dot_product_attention`` directly on q/k/v ``[1, H, video + valid_text_i, D]``: video tokens first, text
LAST, no mask. The padded text never reaches the attention call, so every key the call sees is real; the sequence is
shorter than the layout's ``video + padded_text`` by the item's padding (the core adapts the layout's text length to
the call's length).
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec


def _arg(args, kwargs, name: str, index: int):
    return kwargs.get(name, args[index] if len(args) > index else None)


def mochi_layout(transformer, args, kwargs) -> TokenLayout:
    """The self-attention sequence of one ``MochiTransformer3DModel.forward``: video tokens frame-major, then
    ``encoder_hidden_states.shape[1]`` (padded) text tokens.

    ``hidden_states`` is ``[B, C, F, H, W]``; the patch embedding is 2-D per frame (no temporal patch), so ``F``
    token frames of ``(H // p) x (W // p)`` tokens. Each attention call holds only its item's valid text (see the
    module docstring): ``text_len`` here is the padded length, the most any call can hold.
    """
    hs = _arg(args, kwargs, "hidden_states", 0)
    text = _arg(args, kwargs, "encoder_hidden_states", 1)
    if hs is None or hs.dim() != 5:
        raise ValueError("Mochi transformer expects hidden_states [B, C, F, H, W]")
    if text is None or text.dim() != 3:
        raise ValueError("Mochi transformer expects encoder_hidden_states [B, L, D]")
    p = transformer.config.patch_size
    _, _, f, h, w = hs.shape
    text_len = int(text.shape[1])
    return TokenLayout(f, h // p, w // p, text_len, "last" if text_len else "none")


def mochi_timestep(args, kwargs):
    return _arg(args, kwargs, "timestep", 2)


def mochi_defaults(pipe) -> dict:
    # No published Mochi settings: Radial Attention's mochi script is a stub (README: Mochi "TODO"), and
    # DraftAttention, Sparse-vDiT, Re-ttention and TaylorSeer do not cover Mochi. Generic defaults apply.
    return {}


# Hub checkpoints known to load as this family (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = ("genmo/mochi-1-preview",)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configuration: a real Mochi pipeline (T5 text encoder, tokenizer, transformer, VAE, flow-matching
# scheduler, batched classifier-free guidance) built offline from configs. Random weights: the video is noise.


def tiny_mochi_transformer(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 16, text_dim: int = 32):
    """A randomly initialised ``MochiTransformer3DModel`` (12 latent channels, patch 2, text length 16).

    Its learned RoPE frequencies start at zero in diffusers (RoPE would be the identity); they are drawn at random
    here so the rotary path really changes q and k.
    """
    from diffusers import MochiTransformer3DModel

    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        pooled_projection_dim=16,
        in_channels=12,
        qk_norm="rms_norm",
        text_embed_dim=text_dim,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=16,
    )
    with torch.no_grad():
        transformer.pos_frequencies.normal_(std=0.5)
    return transformer


def tiny_mochi_pipeline(
    *,
    num_layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A ``MochiPipeline`` with tiny random components (T5 text encoder from a config, word-level tokenizer).

    Any text maps onto the tiny vocabulary (unknown words become ``<unk>``), so any prompt works; the tokenizer adds
    no end token, so a prompt of ``n`` known words has ``n`` valid text tokens.
    """
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
    )  # fmt: skip
    text_encoder = tiny_t5_encoder(32)
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=tiny_mochi_transformer(num_layers=num_layers),
    )
    return finish(pipe, dtype)


MOCHI = register_spec(
    ModelSpec(
        name="mochi",
        transformer_classes=("MochiTransformer3DModel",),
        pipeline_classes=("MochiPipeline",),
        transformer_attrs=("transformer",),
        # MochiAttnProcessor2_0 lives in attention_processor.py and calls F.scaled_dot_product_attention.
        attention_call_site="diffusers.models.attention_processor",
        route="sdpa",
        # attn1 is Mochi's only attention: joint self-attention over [video, valid text] (no cross-attention).
        self_attention=(r"transformer_blocks\.(\d+)\.attn1",),
        layout_from_inputs=mochi_layout,
        timestep_from_inputs=mochi_timestep,
        text_pos="last",
        # The attention output (video, text) and both feed-forward outputs (video ``ff``; text ``ff_context``, absent
        # from the last block, whose text stream ends after attention) of each block.
        cache_module_patterns=(
            r"transformer_blocks\.\d+\.attn1",
            r"transformer_blocks\.\d+\.ff",
            r"transformer_blocks\.\d+\.ff_context",
        ),  # fmt: skip
        # No cache_block_patterns: MochiTransformerBlock returns (hidden_states, encoder_hidden_states), not
        # hidden_states, which lite caching (accel/hosts/diffusers_cache.py LiteBlockHook) does not handle.
        defaults=mochi_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=6,  # VAE 6x temporal compression: 6k+1 frames (163 = 28 latent frames)
        default_fps=30,  # genmo's and diffusers' Mochi examples export at 30 fps
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_mochi_pipeline,
        # 64x64 px, 25 frames: 5 latent frames of 4x4 tokens = 80 video tokens, then 3 (prompt) or 1 (negative
        # prompt) valid text tokens of the 16 padded ones.
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            num_inference_steps=6,
            height=64,
            width=64,
            num_frames=25,
            max_sequence_length=16,
            guidance_scale=4.5,
            output_type="latent",
        ),  # fmt: skip
    )
)
