"""The embedded text-to-video model ("shapes-wan"): a stock diffusers ``WanPipeline`` whose parts are a
word-level tokenizer over the prompt grammar, a small UMT5 encoder (Wan's text encoder class) and a
``WanTransformer3DModel`` trained together with flow matching (``accel/embedded/train.py``), the pixel-packing VAE
and Wan's UniPC flow scheduler.

Weights ship in ``accel/embedded/shapes_wan/`` (after ``import accel.embedded``,
``WanPipeline.from_pretrained(SHAPES_WAN_DIR)`` loads them; diffusers finds the VAE's class by its module path
``accel.embedded.pixel_vae`` once that module is imported). :func:`build_untrained` makes the same architecture with
fresh weights: the training script's starting point.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .grammar import VOCABULARY

SHAPES_WAN_DIR = Path(__file__).with_name("shapes_wan")

# Architecture (also the record of what the shipped weights are).
TEXT_DIM = 64
LATENT_CHANNELS = 12  # principal components of a cell: the clips' cells span exactly 12 dimensions
TRANSFORMER = dict(
    patch_size=(1, 1, 1),  # one latent cell (8x8 pixels, two frames) is one token
    num_attention_heads=2,
    attention_head_dim=64,  # a head dim the Triton kernels take (64), like Wan's 128 in spirit
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    text_dim=TEXT_DIM,
    freq_dim=64,
    ffn_dim=384,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=256,
)
FLOW_SHIFT = 3.0
MAX_TEXT_TOKENS = 16  # what the CLI passes as max_sequence_length (prompts are at most 10 words)

# The default render: 128x128 px, 33 frames -> 17 latent frames of 16x16 tokens = 4,352 video tokens.
RENDER = dict(height=128, width=128, num_frames=33, num_inference_steps=20, guidance_scale=4.0)


def shapes_tokenizer():
    """Word-level fast tokenizer over the grammar (lower-cased; other words become ``<unk>``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(VOCABULARY)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_untrained(seed: int = 0):
    """A ``WanPipeline`` of the embedded architecture with freshly initialised weights and an unfitted VAE
    projection (offline, seconds)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from .pixel_vae import PixelPackVAE

    torch.manual_seed(seed)
    tokenizer = shapes_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0,
        )
    )  # fmt: skip
    vae = PixelPackVAE(scale_factor_spatial=8, scale_factor_temporal=2, components=LATENT_CHANNELS)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT, num_train_timesteps=1000
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=WanTransformer3DModel(**TRANSFORMER),
        vae=vae,
        scheduler=scheduler,
    )
    return pipe


def transformer_skeleton():
    """The shipped transformer on the meta device, from its config alone (what calibration plans are keyed by)."""
    from diffusers import WanTransformer3DModel

    config = WanTransformer3DModel.load_config(SHAPES_WAN_DIR / "transformer")
    with torch.device("meta"):
        return WanTransformer3DModel.from_config(config)


def load_shapes_wan(dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """The shipped, trained pipeline (offline). Raises FileNotFoundError when the weights are missing."""
    from diffusers import WanPipeline

    folder = Path(path) if path is not None else SHAPES_WAN_DIR
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model's weights are missing from {folder}: reinstall diffusion-fast, or rebuild them with "
            "`python -m accel.embedded.train` (about 45 minutes on 2 CPU cores)"
        )
    from . import pixel_vae  # noqa: F401  (diffusers loads a component only if its module is imported)

    pipe = WanPipeline.from_pretrained(folder, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_prompts(pipe, prompts: list[str], max_tokens: int = MAX_TEXT_TOKENS) -> torch.Tensor:
    """Text embeddings exactly as ``WanPipeline`` makes them (tokens through the encoder, then zeros after each
    prompt's last token up to ``max_tokens``), with gradients: ``[B, max_tokens, TEXT_DIM]``."""
    enc = pipe.tokenizer(
        prompts, padding="max_length", max_length=max_tokens, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )  # fmt: skip
    mask = enc.attention_mask
    out = pipe.text_encoder(enc.input_ids, mask).last_hidden_state
    return out * mask.unsqueeze(-1).to(out.dtype)
