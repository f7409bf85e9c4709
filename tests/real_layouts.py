"""The self-attention token layouts of the supported and target models at their real resolutions and frame counts.

Token rules (reference/sparse-attention-methods.md, table A): 8x spatial VAE and a 2x2 patch give one token per
16x16 pixels; latent frames are ``(F - 1) / 4 + 1`` for ``4k + 1`` frames (CogVideoX 1.5 then halves them with its
temporal patch of 2, padding up). Text sits in self-attention for HunyuanVideo (256 tokens, last), CogVideoX (226,
first) and Flux (512, first); Wan's text is cross-attention.

The other families (pipelines/<family>.py has each one's rules): Mochi 6x temporal (6k+1 frames, 163 published),
16 px per token, up to 256 text tokens last (each batch item's call holds only its real text, so shorter text lengths
occur too); LTX-Video 8x temporal (8k+1 frames), 32 px per token (VAE 32x, patch 1), text in cross-attention;
HunyuanVideo 1.5 16 px per token (VAE 16x, patch 1), text last (image + byT5 + LLM tokens, about a thousand);
PixArt one frame, 16 px per token, no text in self-attention; Qwen-Image one frame, 16 px per token, text first
(its real prompt length, tens to hundreds of tokens).
"""

from __future__ import annotations

import math

from accel.attention_kernels import TokenLayout

WAN_SIZES = [(480, 832), (832, 480), (720, 1280), (1280, 720), (480, 480), (544, 960), (960, 544), (768, 1280),
             (512, 768), (624, 624)]  # fmt: skip
HUNYUAN_SIZES = [(720, 1280), (1280, 720), (544, 960), (960, 544), (768, 1280), (720, 720), (624, 832)]
COG1_SIZES = [(480, 720)]
COG15_SIZES = [(768, 1360), (1360, 768)]
FLUX_SIZES = [(1024, 1024), (768, 1360), (1360, 768), (512, 512), (1024, 768), (832, 1216), (1216, 832),
              (1536, 1536)]  # fmt: skip


def _latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


def real_layouts(model: str) -> list[tuple[str, TokenLayout]]:
    """``(id, layout)`` for every resolution and valid frame count of ``model``."""
    out = []
    if model == "wan":  # 4k+1 frames, 1 to 121 (Wan 2.1: 81; Wan 2.2 TI2V: 121)
        for h, w in WAN_SIZES:
            for f in range(1, 122, 4):
                out.append((f"wan_{h}x{w}x{f}", TokenLayout(_latent_frames(f), h // 16, w // 16)))
    elif model == "hunyuan":  # 4k+1 frames, 1 to 129; 256 text tokens after the video
        for h, w in HUNYUAN_SIZES:
            for f in range(1, 130, 4):
                out.append((f"hunyuan_{h}x{w}x{f}", TokenLayout(_latent_frames(f), h // 16, w // 16, 256, "last")))
    elif model == "cogvideox":  # 1.0: 8k+1 frames up to 49; 1.5: 8k+1 up to 161, temporal patch 2
        for h, w in COG1_SIZES:
            for f in range(1, 50, 8):
                out.append((f"cog_{h}x{w}x{f}", TokenLayout(_latent_frames(f), h // 16, w // 16, 226, "first")))
        for h, w in COG15_SIZES:
            for f in range(1, 162, 8):
                t = math.ceil(_latent_frames(f) / 2)
                out.append((f"cog15_{h}x{w}x{f}", TokenLayout(t, h // 16, w // 16, 226, "first")))
    elif model == "flux":  # images: one frame, 512 text tokens first
        for h, w in FLUX_SIZES:
            out.append((f"flux_{h}x{w}", TokenLayout(1, h // 16, w // 16, 512, "first")))
    elif model == "mochi":  # 6k+1 frames up to 163; text last, full (256) or a short real prompt
        for h, w in MOCHI_SIZES:
            for f in range(1, 164, 18):
                for text in (256, 37):
                    lay = TokenLayout((f - 1) // 6 + 1, h // 16, w // 16, text, "last")
                    out.append((f"mochi_{h}x{w}x{f}_t{text}", lay))
    elif model == "ltx":  # 8k+1 frames up to 257; 32 px per token; no text in self-attention
        for h, w in LTX_SIZES:
            for f in range(1, 258, 24):
                out.append((f"ltx_{h}x{w}x{f}", TokenLayout((f - 1) // 8 + 1, h // 32, w // 32)))
    elif model == "hunyuan15":  # 4k+1 frames up to 121; 16 px per token; about a thousand text tokens last
        for h, w in HUNYUAN15_SIZES:
            for f in range(1, 122, 12):
                out.append((f"hy15_{h}x{w}x{f}", TokenLayout(_latent_frames(f), h // 16, w // 16, 1000, "last")))
    elif model == "pixart":
        for h, w in PIXART_SIZES:
            out.append((f"pixart_{h}x{w}", TokenLayout(1, h // 16, w // 16)))
    elif model == "qwen":  # text first, real prompt lengths
        for h, w in QWEN_SIZES:
            for text in (12, 150):
                out.append((f"qwen_{h}x{w}_t{text}", TokenLayout(1, h // 16, w // 16, text, "first")))
    else:
        raise ValueError(model)
    return out


MOCHI_SIZES = [(480, 848), (848, 480)]
LTX_SIZES = [(480, 704), (512, 704), (704, 1216), (768, 1280), (1216, 704)]
HUNYUAN15_SIZES = [(480, 848), (720, 1280), (848, 480)]
PIXART_SIZES = [(1024, 1024), (512, 512), (2048, 2048), (768, 1344), (1344, 768), (896, 1152), (1152, 896)]
QWEN_SIZES = [(1328, 1328), (1664, 928), (928, 1664), (1472, 1140), (1140, 1472)]

MODELS = ("wan", "hunyuan", "cogvideox", "flux", "mochi", "ltx", "hunyuan15", "pixart", "qwen")
# Wan 2.2 A14B, whose radial processor uses 64-token blocks.
WAN22_SIZES = [(480, 832), (832, 480), (720, 1280), (1280, 720)]
