"""The self-attention token layouts of the supported and target models at their real resolutions and frame counts.

Token rules (reference/sparse-attention-methods.md, table A): 8x spatial VAE and a 2x2 patch give one token per
16x16 pixels; latent frames are ``(F - 1) / 4 + 1`` for ``4k + 1`` frames (CogVideoX 1.5 then halves them with its
temporal patch of 2, padding up). Text sits in self-attention for HunyuanVideo (256 tokens, last), CogVideoX (226,
first) and Flux (512, first); Wan's text is cross-attention.
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
    else:
        raise ValueError(model)
    return out


MODELS = ("wan", "hunyuan", "cogvideox", "flux")
# Wan 2.2 A14B, whose radial processor uses 64-token blocks.
WAN22_SIZES = [(480, 832), (832, 480), (720, 1280), (1280, 720)]
