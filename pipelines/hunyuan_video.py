"""HunyuanVideo (T2V, I2V) and HunyuanVideo 1.5 (T2V, I2V): joint attention over ``[video, text]``.

Both transformers flatten the patchified video frame-major (``(t, h, w)``, ``w`` fastest) and append the text tokens
AFTER the video (``HunyuanVideoAttnProcessor2_0`` / ``HunyuanVideo15AttnProcessor2_0`` concatenate
``[query, encoder_query]`` and call the model file's ``dispatch_attention_fn`` with q/k/v ``[B, S, H, D]``).

- HunyuanVideo: 20 double-stream blocks (``transformer_blocks.N.attn``, text through ``add_*_proj``) then 40
  single-stream blocks (``single_transformer_blocks.N.attn``, text concatenated inside the processor); one global
  layer index, double blocks 0-19, single blocks 20-59 (as Radial Attention numbers them). Padded text is masked by
  a key mask ``attention_mask [B, 1, 1, S]`` that the forward builds from ``encoder_attention_mask``.
- HunyuanVideo 1.5: 54 double-stream blocks only. Its text sequence is three streams concatenated per batch item,
  valid tokens first: ``[valid image, valid byT5, valid MLLM, invalid image, invalid byT5, invalid MLLM]`` (image
  tokens are all invalid for T2V); the processor passes ``attention_mask [B, 1, S, S] = valid_q & valid_k``.

The text refiners (``context_embedder.token_refiner.refiner_blocks.N.attn``) are self-attention over the text alone
and run through ``diffusers.models.attention_processor``'s SDPA processor: not selected, never routed.
"""

from __future__ import annotations

import torch
from accel.attention_kernels import TokenLayout

from ._tiny import TINY_VOCAB, finish, tiny_t5_encoder, tiny_tokenizer
from .spec import ModelSpec, register_spec


def _arg(args, kwargs, name: str, index: int):
    """A forward argument passed by keyword (as the pipelines do) or by position."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _video_grid(transformer, args, kwargs) -> tuple[int, int, int]:
    """(frames, height, width) of the token grid after patchify, from ``hidden_states [B, C, F, H, W]``."""
    hs = _arg(args, kwargs, "hidden_states", 0)
    if hs is None or hs.dim() != 5:
        raise ValueError("HunyuanVideo transformers expect hidden_states [B, C, F, H, W]")
    p, pt = transformer.config.patch_size, transformer.config.patch_size_t
    _, _, f, h, w = hs.shape
    return f // pt, h // p, w // p


def hunyuan_video_layout(transformer, args, kwargs) -> TokenLayout:
    """``[video, text]``: the token refiner keeps the text length, so text_len is ``encoder_hidden_states [B, L, C]``'s
    padded length L (the forward's ``condition_sequence_length``)."""
    ehs = _arg(args, kwargs, "encoder_hidden_states", 2)
    return TokenLayout(*_video_grid(transformer, args, kwargs), text_len=int(ehs.shape[1]), text_pos="last")


def hunyuan_video15_layout(transformer, args, kwargs) -> TokenLayout:
    """``[video, image + byT5 + MLLM text]``: the forward concatenates all three streams, padding included, so
    text_len is the sum of their padded lengths (``image_embeds [B, N_img, C]``, ``encoder_hidden_states_2
    [B, L2, C2]``, ``encoder_hidden_states [B, L, C]``)."""
    ehs = _arg(args, kwargs, "encoder_hidden_states", 2)
    ehs2 = _arg(args, kwargs, "encoder_hidden_states_2", 5)
    img = _arg(args, kwargs, "image_embeds", 7)
    text_len = sum(int(t.shape[1]) for t in (ehs, ehs2, img) if t is not None)
    return TokenLayout(*_video_grid(transformer, args, kwargs), text_len=text_len, text_pos="last")


def hunyuan_video_timestep(args, kwargs):
    return _arg(args, kwargs, "timestep", 1)


def hunyuan_video_defaults(pipe) -> dict:
    # Radial Attention, scripts/hunyuan_t2v_inference.sh (768x1280, 117 frames): decay 0.95, 12 of 50 steps dense,
    # dense_layers 0; no attention sink for HunyuanVideo (removed in radial-attention commit 2f61c30).
    radial = {"decay": 0.95, "dense_step_fraction": 12 / 50, "dense_layers": 0, "sink": False}
    # DraftAttention, hunyuan/ (768x1280, 129 frames): sparsity 0.9, dense while diffusion t > 945 (the first 15 of 50
    # steps at flow shift 7) and in double-stream blocks 0-1 (global layers 0-1: double blocks come first).
    draft = {"sparsity": 0.9, "dense_step_fraction": 15 / 50, "dense_layers": 2}
    # TaylorSeer-HunyuanVideo (cache_functions/cache_init.py, Taylor mode): fresh_threshold 5, max_order 1,
    # first_enhance 1. Re-ttention and Sparse-vDiT publish no HunyuanVideo settings: generic defaults apply.
    taylorseer = {"interval": 5, "order": 1, "warmup_steps": 1}
    return {"radial": radial, "draft": draft, "taylorseer": taylorseer}


def hunyuan_video15_defaults(pipe) -> dict:
    # No method publishes HunyuanVideo 1.5 settings. Ours: HunyuanVideo's published values carried over (same
    # [video, text] joint attention and 50-step flow-matching schedule): radial decay 0.95, 12/50 steps dense, no
    # dense layer, no sink; draft sparsity 0.9, 15/50 steps and the first two (double-stream) blocks dense;
    # TaylorSeer interval 5, order 1, warm-up 1.
    return hunyuan_video_defaults(pipe)


# TaylorSeer-HunyuanVideo caches, per double-stream block, img_attn / txt_attn (diffusers: ``attn``, which returns
# the (video, text) output pair), img_mlp (``ff``) and txt_mlp (``ff_context``); per single-stream block the fused
# linear2 output. diffusers has no module returning that fused output alone (``proj_out`` consumes attention and MLP
# in one call), so the single blocks cache their attention (``attn``) and MLP input projection (``proj_mlp``): the
# expensive parts are skipped on predicted steps while the gates, the residual and ``proj_out`` stay live. Caching
# the whole single block would drop the live residual and make every earlier prediction irrelevant.
HUNYUAN_VIDEO_CACHE_MODULES = (
    r"transformer_blocks\.\d+\.attn",
    r"transformer_blocks\.\d+\.ff",
    r"transformer_blocks\.\d+\.ff_context",
    r"single_transformer_blocks\.\d+\.attn",
    r"single_transformer_blocks\.\d+\.proj_mlp",
)
HUNYUAN_VIDEO15_CACHE_MODULES = HUNYUAN_VIDEO_CACHE_MODULES[:3]

# Hub checkpoints known to load as these families (for `diffusion-fast models` and messages).
EXAMPLE_REPOS = ("hunyuanvideo-community/HunyuanVideo", "hunyuanvideo-community/HunyuanVideo-I2V")
EXAMPLE_REPOS_15 = (
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v",
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v",
)


# ---------------------------------------------------------------------------------------------------------------
# Tiny test configurations: every code path of the real pipelines (both text encoders and tokenizers, prompt
# templates with cropping, padded text, transformer, VAE, scheduler, guidance) built offline from configs. Random
# weights: the video is noise.


def tiny_hunyuan_video_transformer(
    *,
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    pooled_dim: int = 32,
    in_channels: int = 4,
    **extra,
):
    """A randomly initialised ``HunyuanVideoTransformer3DModel`` (``extra``: further config, e.g.
    ``image_condition_type`` for I2V). Patch 2 like the real model, so one token covers 16x16 px."""
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=in_channels,
        out_channels=4,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_axes_dim=(4, 6, 6),  # sums to head_dim
        **extra,
    ).eval()


def tiny_hunyuan_video_pipeline(*, seed: int = 0, dtype: torch.dtype = torch.float32, **transformer_kw):
    """A ``HunyuanVideoPipeline`` with tiny random components: Llama and CLIP text encoders from configs, word-level
    tokenizers (any text works, unknown words become ``<unk>``), an 8x/4x VAE and a patch-2 transformer."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    text_dim = transformer_kw.setdefault("text_dim", 32)
    pooled_dim = transformer_kw.setdefault("pooled_dim", 32)
    transformer = tiny_hunyuan_video_transformer(**transformer_kw)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    ).eval()
    # The pipeline takes hidden_states[-3] of Llama: at least two layers.
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=TINY_VOCAB, hidden_size=text_dim, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        )
    ).eval()  # fmt: skip
    # The pipeline pads CLIP prompts to 77 tokens; pooler_output has hidden_size features.
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=TINY_VOCAB, hidden_size=pooled_dim, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        )
    ).eval()  # fmt: skip
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),  # HunyuanVideo's flow shift
        text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_tokenizer(),
    )
    return finish(pipe, dtype)


def tiny_hunyuan_video15_transformer(
    *,
    num_layers: int = 3,
    num_heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
    text_2_dim: int = 32,
    image_dim: int = 16,
    latent_channels: int = 4,
    **extra,
):
    """A randomly initialised ``HunyuanVideo15Transformer3DModel``: input channels are latents, condition latents
    and a mask channel (``2 * latent_channels + 1``, as the pipelines concatenate them); patch 1 like the real
    model (its VAE compresses 16x)."""
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent_channels + 1,
        out_channels=latent_channels,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=text_dim,
        text_embed_2_dim=text_2_dim,
        image_embed_dim=image_dim,
        rope_axes_dim=(4, 6, 6),  # sums to head_dim
        target_size=64,
        **extra,
    ).eval()


# A chat template for the word-level tokenizer shaped like Qwen2.5-VL's: system turn, user turn, each closed by an
# end-of-turn word, then the generation prompt. The pipeline crops the system turn off by token count.
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }} w61 {% endfor %}{% if add_generation_prompt %}w62{% endif %}"
)


def tiny_hunyuan_video15_pipeline(
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    text_len: int = 12,
    byt5_len: int = 16,
    image_tokens: int = 4,
    **transformer_kw,
):
    """A ``HunyuanVideo15Pipeline`` with tiny random components: Qwen2.5-VL text model and ByT5 (T5) encoder from
    configs, a word-level tokenizer with a chat template, the in-memory byte-level ``ByT5Tokenizer``, a 16x/4x VAE,
    classifier-free guidance. ``text_len`` / ``byt5_len`` / ``image_tokens`` stand for the real 1000 / 256 / 729 text,
    glyph and image-token lengths (the pipeline's ``tokenizer_max_length``, ``tokenizer_2_max_length`` and
    ``vision_num_semantic_tokens``)."""
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    torch.manual_seed(seed)
    text_dim = transformer_kw.setdefault("text_dim", 32)
    text_2_dim = transformer_kw.setdefault("text_2_dim", 32)
    latent_channels = transformer_kw.setdefault("latent_channels", 4)
    transformer = tiny_hunyuan_video15_transformer(**transformer_kw)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=latent_channels,
        block_out_channels=(8, 8, 8, 8, 8),
        layers_per_block=1,
        spatial_compression_ratio=16,
        temporal_compression_ratio=4,
        downsample_match_channel=False,
        upsample_match_channel=False,
    ).eval()
    # The pipeline takes hidden_states[-3]: at least two layers. mrope sections sum to head_dim / 2.
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=TINY_VOCAB, hidden_size=text_dim, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1,
            rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        )
    ).eval()  # fmt: skip
    tokenizer_2 = ByT5Tokenizer()  # byte-level: needs no vocabulary file
    text_encoder_2 = tiny_t5_encoder(text_2_dim, vocab_size=len(tokenizer_2), num_layers=1)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    # Crop the system turn (its words and end-of-turn word), as the real pipeline crops its 108 template tokens.
    pipe.prompt_template_encode_start_idx = len(tokenizer(pipe.system_message).input_ids) + 1
    pipe.tokenizer_max_length = text_len
    pipe.tokenizer_2_max_length = byt5_len
    pipe.vision_num_semantic_tokens = image_tokens
    return finish(pipe, dtype)


HUNYUAN_VIDEO = register_spec(
    ModelSpec(
        name="hunyuan_video",
        transformer_classes=("HunyuanVideoTransformer3DModel",),
        pipeline_classes=(
            "HunyuanVideoPipeline",
            "HunyuanVideoImageToVideoPipeline",
            "HunyuanSkyreelsImageToVideoPipeline",
        ),
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.transformers.transformer_hunyuan_video",
        self_attention=(r"transformer_blocks\.(\d+)\.attn", r"single_transformer_blocks\.(\d+)\.attn"),
        layout_from_inputs=hunyuan_video_layout,
        timestep_from_inputs=hunyuan_video_timestep,
        route="dispatch",
        text_pos="last",
        cache_module_patterns=HUNYUAN_VIDEO_CACHE_MODULES,
        # No cache_block_patterns: the blocks return (hidden_states, encoder_hidden_states) pairs, which lite caching
        # (one residual of hidden_states over the stack) cannot pass through yet.
        defaults=hunyuan_video_defaults,
        spatial_multiple=16,  # VAE 8x spatial compression x patch size 2
        frame_multiple=4,  # causal VAE 4x temporal compression: 4k+1 frames
        default_fps=24,  # HunyuanVideo's sample_video.py saves at 24 fps
        example_repos=EXAMPLE_REPOS,
        tiny_pipeline=tiny_hunyuan_video_pipeline,
        # 64x64 px, 17 frames: 5 latent frames of 4x4 tokens = 80 video tokens + 16 text tokens (3 real, 13 padded:
        # the key mask matters) = 96 tokens, 6 blocks of 16. HunyuanVideo is guidance-distilled (guidance_scale goes
        # into the guidance embedding); true_cfg_scale > 1 with a negative prompt adds the uncond branch, whose text
        # has another valid length. The template "{}" keeps the tiny prompt uncropped (the default one is cut at
        # Llama's 95th template token).
        tiny_call=dict(
            prompt="w3 w4 w5",
            negative_prompt="w6",
            prompt_template={"template": "{}", "crop_start": 0},
            num_inference_steps=6,
            height=64,
            width=64,
            num_frames=17,
            max_sequence_length=16,
            guidance_scale=6.0,
            true_cfg_scale=2.0,
            output_type="latent",
        ),  # fmt: skip
    )
)


HUNYUAN_VIDEO_15 = register_spec(
    ModelSpec(
        name="hunyuan_video_15",
        transformer_classes=("HunyuanVideo15Transformer3DModel",),
        pipeline_classes=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
        transformer_attrs=("transformer",),
        attention_call_site="diffusers.models.transformers.transformer_hunyuan_video15",
        self_attention=(r"transformer_blocks\.(\d+)\.attn",),
        layout_from_inputs=hunyuan_video15_layout,
        timestep_from_inputs=hunyuan_video_timestep,
        route="dispatch",
        text_pos="last",
        cache_module_patterns=HUNYUAN_VIDEO15_CACHE_MODULES,
        defaults=hunyuan_video15_defaults,
        spatial_multiple=16,  # VAE 16x spatial compression x patch size 1
        frame_multiple=4,  # causal VAE 4x temporal compression: 4k+1 frames
        default_fps=24,  # diffusers' HunyuanVideo 1.5 I2V example exports at 24 fps
        example_repos=EXAMPLE_REPOS_15,
        tiny_pipeline=tiny_hunyuan_video15_pipeline,
        # 64x64 px, 17 frames: 5 latent frames of 4x4 tokens = 80 video tokens + 4 image + 16 glyph + 12 text tokens
        # = 112 tokens, 7 blocks of 16. The quoted word makes the byT5 glyph stream real (12 of 16 bytes); T2V image
        # tokens are all padding; the prompt fills 7 of the 12 text tokens. Classifier-free guidance (the tiny
        # pipeline's guider) adds the uncond branch: empty negative prompt, 2 real text tokens, no glyph text.
        tiny_call=dict(
            prompt='w3 w4 "w5"',
            num_inference_steps=6,
            height=64,
            width=64,
            num_frames=17,
            output_type="latent",
        ),  # fmt: skip
    )
)
