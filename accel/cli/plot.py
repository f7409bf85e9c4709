"""The ``diffusion-fast bench --plot`` figure, drawn with Pillow (already a diffusers dependency; no matplotlib).

Top: a frame strip, one row per configuration (dense first), a few frames spread over the clip, each row labelled
with its speed-up, PSNR and SSIM against dense. Bottom: wall time per configuration (bars) and speed-up against
SSIM (a scatter; up and to the right is better).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

BG = (255, 255, 255)
FG = (20, 20, 20)
GRID = (225, 225, 225)
COLORS = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_w(draw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def _thumb(frame: np.ndarray, height: int):
    from PIL import Image

    img = Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
    w = max(1, round(img.width * height / img.height))
    return img.resize((min(w, 2 * height), height), Image.Resampling.NEAREST if img.height < height else Image.LANCZOS)


def _nice_max(x: float) -> float:
    if x <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= x:
            return m * exp
    return 10 * exp


def bench_plot(rows: list[dict[str, Any]], outputs: dict[str, np.ndarray], title: str, n_frames: int = 4) -> bytes:
    """PNG bytes of the bench figure for ``rows`` (``accel.cli.compare.compare`` rows) and their decoded frames."""
    from PIL import Image, ImageDraw

    font, small, big = _font(14), _font(12), _font(16)
    thumb_h = 112
    count = min(n_frames, min(outputs[r["preset"]].shape[0] for r in rows))
    label_w = 230
    sample = outputs[rows[0]["preset"]]
    idx = np.linspace(0, sample.shape[0] - 1, count).round().astype(int) if count > 1 else np.array([0])
    thumbs = {r["preset"]: [_thumb(outputs[r["preset"]][i], thumb_h) for i in idx] for r in rows}
    tw = thumbs[rows[0]["preset"]][0].width
    pad = 12
    strip_w = label_w + len(idx) * (tw + 6)
    chart_h = 300
    width = max(strip_w + 2 * pad, 900)
    top = 40 + 22
    height = top + len(rows) * (thumb_h + 10) + 20 + chart_h + pad
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    d.text((pad, 10), title, fill=FG, font=big)
    for j, i in enumerate(idx):
        d.text((pad + label_w + j * (tw + 6), top - 20), f"frame {int(i)}", fill=FG, font=small)

    y = top
    for k, row in enumerate(rows):
        color = COLORS[k % len(COLORS)]
        d.rectangle([pad, y, pad + 6, y + thumb_h], fill=color)
        d.text((pad + 12, y + 4), row["preset"], fill=FG, font=font)
        if row["preset"] == "dense":
            lines = [f"{row['time_s']:.2f} s (reference)"]
        else:
            ps = row.get("psnr_db")
            ps_text = "identical" if ps is not None and math.isinf(ps) else ("-" if ps is None else f"{ps:.1f} dB")
            ss = row.get("ssim")
            lines = [
                f"{row['time_s']:.2f} s, x{row['speedup']:.2f}",
                f"PSNR {ps_text}",
                f"SSIM {'-' if ss is None else f'{ss:.4f}'}",
            ]
        for n, line in enumerate(lines):
            d.text((pad + 12, y + 26 + 18 * n), line, fill=FG, font=small)
        for j, th in enumerate(thumbs[row["preset"]]):
            img.paste(th, (pad + label_w + j * (tw + 6), y))
        y += thumb_h + 10

    # Charts.
    y0 = y + 20
    half = (width - 3 * pad) // 2
    _bars(d, (pad, y0, pad + half, y0 + chart_h), rows, font, small)
    _scatter(d, (2 * pad + half, y0, 2 * pad + 2 * half, y0 + chart_h), rows, font, small)

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bars(d, box, rows, font, small) -> None:
    x0, y0, x1, y1 = box
    d.text((x0, y0), "wall time per run (s, median)", fill=FG, font=font)
    left, right, top, bottom = x0 + 130, x1 - 50, y0 + 30, y1 - 30
    vmax = _nice_max(max(r["time_s"] for r in rows))
    for t in np.linspace(0, vmax, 5):
        x = left + (right - left) * t / vmax
        d.line([x, top, x, bottom], fill=GRID)
        d.text((x - 8, bottom + 6), f"{t:g}", fill=FG, font=small)
    bh = min(36, (bottom - top) / max(len(rows), 1) - 8)
    for k, row in enumerate(rows):
        yc = top + (k + 0.5) * (bottom - top) / len(rows)
        x = left + (right - left) * row["time_s"] / vmax
        d.rectangle([left, yc - bh / 2, x, yc + bh / 2], fill=COLORS[k % len(COLORS)])
        d.text((x0, yc - 8), row["preset"][:20], fill=FG, font=small)
        d.text((x + 4, yc - 8), f"x{row['speedup']:.2f}", fill=FG, font=small)
    d.line([left, top, left, bottom], fill=FG)


def _scatter(d, box, rows, font, small) -> None:
    x0, y0, x1, y1 = box
    d.text((x0, y0), "speed-up vs SSIM against dense", fill=FG, font=font)
    left, right, top, bottom = x0 + 60, x1 - 20, y0 + 30, y1 - 30
    speeds = [r["speedup"] for r in rows]
    ssims = [1.0 if r["preset"] == "dense" else r.get("ssim") for r in rows]
    xs_lo, xs_hi = min(min(speeds), 1.0), max(max(speeds), 1.0)
    span = max(xs_hi - xs_lo, 0.2)
    xs_lo, xs_hi = max(0.0, xs_lo - 0.1 * span), xs_hi + 0.1 * span
    valid = [s for s in ssims if s is not None]
    ys_lo = min(valid + [1.0])
    ys_lo = max(-1.0, min(ys_lo - 0.05 * max(1.0 - ys_lo, 0.02), 0.99))
    ys_hi = 1.0 + 0.05 * (1.0 - ys_lo)

    def px(sx, sy):
        return (
            left + (right - left) * (sx - xs_lo) / (xs_hi - xs_lo),
            bottom - (bottom - top) * (sy - ys_lo) / (ys_hi - ys_lo),
        )

    for t in np.linspace(xs_lo, xs_hi, 5):
        x, _ = px(t, ys_lo)
        d.line([x, top, x, bottom], fill=GRID)
        d.text((x - 10, bottom + 6), f"x{t:.2f}", fill=FG, font=small)
    for t in np.linspace(ys_lo, ys_hi, 5):
        _, y = px(xs_lo, t)
        d.line([left, y, right, y], fill=GRID)
        d.text((x0, y - 7), f"{t:.3f}", fill=FG, font=small)
    d.line([left, top, left, bottom], fill=FG)
    d.line([left, bottom, right, bottom], fill=FG)
    for k, (row, sp, ss) in enumerate(zip(rows, speeds, ssims, strict=True)):
        if ss is None:
            continue
        x, y = px(sp, ss)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=COLORS[k % len(COLORS)])
        label = row["preset"][:24]
        lw = _text_w(d, label, small)
        lx = x + 8 if x + 8 + lw <= x1 else x - 8 - lw  # keep labels inside the panel
        d.text((lx, y - 8 + 14 * (k % 2)), label, fill=FG, font=small)
