"""Attention structure of the embedded trained model (shapes-wan): post-softmax attention mass against temporal
and spatial distance, per layer, to compare with the "spatiotemporal energy decay" the Radial Attention paper
reports for real video models (Wan 2.1, HunyuanVideo, Mochi: scores fall off with frame distance and with spatial
distance, which it models as exponential decay).

Dense renders of a few held-out prompts at the default size (17 x 16 x 16 = 4,352 tokens). At three denoising steps
(early, middle, late) every self-attention call's q and k are recorded (through accel's router with every step
dense, so the model's own processor and RoPE produce them) and the full softmax(q k^T / sqrt(d)) is formed per head.

Per layer, averaged over heads, prompts, steps and queries:
- temporal: the mass on keys at frame distance d = |f_q - f_k| (sums to 1 over d), and the mean score per key at
  that distance (mass / keys at that distance), relative to d = 0;
- spatial: the same against the in-frame Chebyshev distance max(|dh|, |dw|) in tokens, over all frame pairs.
``decay`` is the fitted exponential rate a of score ~ exp(-a d) (least squares on log scores).

    python benchmarks/attention_structure.py        # about 3 minutes on 2 CPU cores
Writes benchmarks/results/attention_structure_cpu.{json,md,png}.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402

PROMPTS = 3
STEPS = (2, 10, 17)  # of 20: early, middle, late


def distances(layout):
    f, h, w = layout.frames, layout.height, layout.width
    idx = torch.arange(f * h * w)
    ft, ht, wt = idx // (h * w), (idx // w) % h, idx % w
    dt = (ft[:, None] - ft[None, :]).abs()
    ds = torch.maximum((ht[:, None] - ht[None, :]).abs(), (wt[:, None] - wt[None, :]).abs())
    return dt.flatten(), ds.flatten(), f, max(h, w)


def record(pipe, prompt, render):
    import accel
    import accel.hosts.diffusers as host

    seen = {}
    real = host.attend

    def spy(q, k, v, step, layer, **kw):
        if layer is not None and step.step_index in STEPS and step.branch in ("cond", "cond_uncond", "default"):
            seen[(step.step_index, layer.layer.index)] = (q[0].float().clone(), k[0].float().clone(), step.layout)
        return real(q, k, v, step, layer, **kw)

    host.attend = spy
    accel.accelerate(pipe, "radial", dense_step_fraction=1.0, dense_layers=0)  # every call dense, all routed
    try:
        pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **render)
    finally:
        accel.disable(pipe)
        host.attend = real
    return seen


def fit_decay(score: np.ndarray) -> float:
    d = np.arange(len(score))
    ok = score > 0
    return float(-np.polyfit(d[ok], np.log(score[ok] / score[0]), 1)[0])


def main() -> None:
    from accel.embedded import load_shapes_wan
    from accel.embedded.model import MAX_TEXT_TOKENS, RENDER
    from accel.embedded.readback import held_out_prompts

    torch.set_num_threads(2)
    pipe = load_shapes_wan()
    render = {**RENDER, "max_sequence_length": MAX_TEXT_TOKENS}
    prompts = held_out_prompts()[:PROMPTS]
    acc: dict[int, dict[str, np.ndarray]] = {}
    counts = None
    for prompt in prompts:
        for (_, layer), (q, k, layout) in record(pipe, prompt, render).items():
            dt, ds, nf, ns = distances(layout)
            if counts is None:
                counts = (torch.bincount(dt, minlength=nf).double(), torch.bincount(ds, minlength=ns).double())
            s = q.shape[0]
            a = acc.setdefault(layer, {"t": np.zeros(nf), "s": np.zeros(ns), "n": 0})
            for head in range(q.shape[1]):
                p = torch.softmax(q[:, head] @ k[:, head].T / math.sqrt(q.shape[-1]), dim=-1).flatten().double()
                a["t"] += (torch.bincount(dt, p, minlength=nf) / s).numpy()
                a["s"] += (torch.bincount(ds, p, minlength=ns) / s).numpy()
                a["n"] += 1
    tokens = q.shape[0]
    per_query_keys_t = (counts[0] / tokens).numpy()  # keys per query at each distance (average over queries)
    per_query_keys_s = (counts[1] / tokens).numpy()
    out = {"model": "shapes-wan", "prompts": prompts, "steps": list(STEPS), "tokens": tokens, "layers": {}}
    for layer in sorted(acc):
        a = acc[layer]
        mt, ms = a["t"] / a["n"], a["s"] / a["n"]
        st, ss = mt / per_query_keys_t, ms / per_query_keys_s
        out["layers"][layer] = {
            "temporal_mass": mt.round(4).tolist(),
            "temporal_score_rel": (st / st[0]).round(4).tolist(),
            "temporal_decay": round(fit_decay(st), 3),
            "spatial_mass": ms.round(4).tolist(),
            "spatial_score_rel": (ss / ss[0]).round(4).tolist(),
            "spatial_decay": round(fit_decay(ss), 3),
            "mass_within_1_frame": round(float(mt[:2].sum()), 3),
            "mass_within_2_tokens": round(float(ms[:3].sum()), 3),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_structure_cpu.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "attention_structure_cpu.png").write_bytes(plot(out))
    lines = [
        "# Attention structure of shapes-wan (dense, 128x128x33 = 17x16x16 tokens)",
        "",
        f"Prompts: {', '.join(repr(p) for p in prompts)}; steps {', '.join(map(str, STEPS))} of 20; every head.",
        "Mass: share of a query's attention on keys at that distance. Decay: a in score ~ exp(-a d), per key.",
        "",
        "| layer | mass at frame distance 0 / <=1 | temporal decay a (per frame) | mass at spatial distance <=2 tokens "
        "| spatial decay a (per token) |",
        "|---|---|---|---|---|",
    ]
    for layer, r in out["layers"].items():
        lines.append(
            f"| {layer} | {r['temporal_mass'][0]:.2f} / {r['mass_within_1_frame']:.2f} | {r['temporal_decay']:.2f} | "
            f"{r['mass_within_2_tokens']:.2f} | {r['spatial_decay']:.2f} |"
        )
    (RESULTS / "attention_structure_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(out) -> bytes:
    """Two panels (temporal, spatial): relative per-key score (log scale) against distance, one line per layer."""
    import io

    from PIL import Image, ImageDraw

    from accel.cli.plot import _font

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    img = Image.new("RGB", (1000, 460), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    title = "shapes-wan: attention score per key vs distance (relative to distance 0), per layer"
    d.text((20, 8), title, "black", font)
    lo = -4.0  # log10 floor
    panels = (("temporal_score_rel", "frame distance"), ("spatial_score_rel", "spatial distance (tokens, Chebyshev)"))
    for panel, (key, label) in enumerate(panels):
        x0, y0, w, h = 70 + panel * 480, 50, 400, 340
        d.rectangle((x0, y0, x0 + w, y0 + h), outline="black")
        n = len(next(iter(out["layers"].values()))[key])
        for e in range(0, int(-lo) + 1):
            y = y0 + h * e / -lo
            d.line((x0, y, x0 + w, y), fill=(225, 225, 225))
            d.text((x0 - 45, y - 7), f"1e-{e}", "black", small)
        for t in range(0, n, 2):
            d.text((x0 + w * t / (n - 1) - 4, y0 + h + 4), str(t), "black", small)
        d.text((x0 + w / 2 - 80, y0 + h + 22), label, "black", small)
        for i, (layer, r) in enumerate(out["layers"].items()):
            pts = []
            for t, v in enumerate(r[key]):
                y = y0 + h * min(-lo, -math.log10(max(v, 10**lo))) / -lo
                pts.append((x0 + w * t / (n - 1), y))
            d.line(pts, fill=colours[i % len(colours)], width=2)
            if panel == 0:
                d.text((x0 + w - 90, y0 + 10 + 16 * i), f"layer {layer}", colours[i % len(colours)], small)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
