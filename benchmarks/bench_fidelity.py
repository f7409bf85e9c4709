"""Fidelity of the sparse attention methods against dense attention, at matched density.

    python -m benchmarks.bench_fidelity [--device cpu|cuda] [--quick] [--skip-pipeline]

Part 1, synthetic attention with realistic structure. Queries and keys are smooth random fields over the latent
(t, h, w) grid rotated by 3D rotary position embeddings (RoPE, split over t/h/w like Wan's), so attention decays
with spatial and temporal distance. Heads differ the way video DiT heads do:

- ``local``: content and RoPE over t, h, w (a 3D neighbourhood);
- ``temporal``: content constant over time, RoPE on h, w only (the same spatial position in every frame);
- ``frame``: strong RoPE on t, weak spatial structure (the own frame, broadly);
- ``sink``: keys of the first frame carry a component every query shares (a few global key columns);
- ``diffuse``: weak logits (close to uniform attention: hard for every sparse method).

Inputs evolve slowly over "steps" (the fields drift). Each method runs at several target densities (kept fraction of
(query block, key block) pairs); its knob is set to land near each target:

- radial: the decay factor (static mask, Wan's first-frame sink);
- draft: sparsity = 1 - target (dynamic per head and call);
- sparse-vdit: the calibration tolerance (patterns chosen on step 0 of one seed, evaluated on another seed);
- rettention: the window (static); compared with the same mask without the reshape: calibrated at step 0, evaluated
  on the next steps as Re-ttention's schedule does between recalibrations.

Error: relative L2 of the attention output against dense, over all heads, and per head type.

Part 2, the tiny offline Wan pipeline (random weights): latent relative L2 and PSNR of each preset against the dense
run. Results: benchmarks/results/fidelity_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from accel.attention_kernels import BlockMask, TokenLayout, block_sparse_attention, radial_mask
from accel.attention_kernels.draft import draft_attention
from accel.attention_kernels.rettention import mass_ratio, reshape_sparse, rettention_mask
from accel.attention_kernels.sparse_vdit import pattern_density, sparse_vdit_attention

from accel.methods.calibration import LayerSearch
from benchmarks.common import bench, environment, write_results

HEAD_TYPES = ("local", "local", "temporal", "temporal", "frame", "sink", "local", "diffuse")


# ---- synthetic inputs ----------------------------------------------------------------------------------------------
def _smooth_field(gen, channels, frames, height, width, sigma_t, sigma_s):
    """Unit-variance Gaussian random field [channels, F, H, W], smoothed by separable Gaussian blurs."""
    x = torch.randn(channels, frames, height, width, generator=gen)
    for dim, sigma in ((1, sigma_t), (2, sigma_s), (3, sigma_s)):
        if sigma <= 0:
            continue
        r = max(1, int(3 * sigma))
        kern = torch.exp(-0.5 * (torch.arange(-r, r + 1) / sigma) ** 2)
        kern = kern / kern.sum()
        x = x.movedim(dim, -1)
        shape = x.shape
        y = torch.nn.functional.conv1d(
            torch.nn.functional.pad(x.reshape(-1, 1, shape[-1]), (r, r), mode="replicate"), kern.view(1, 1, -1)
        )
        x = y.reshape(shape).movedim(-1, dim)
    return x / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _rope_angles(layout: TokenLayout, head_dim: int, theta: float = 10000.0):
    """Angles [S, D/2] of 3D RoPE: the pairs split over t, h, w (Wan splits its head dim the same way)."""
    pairs = head_dim // 2
    pt = pairs - 2 * (pairs // 3)
    splits = (pt, pairs // 3, pairs // 3)
    t, h, w = torch.meshgrid(
        torch.arange(layout.frames), torch.arange(layout.height), torch.arange(layout.width), indexing="ij"
    )
    parts = []
    for pos, n in zip((t, h, w), splits, strict=True):
        freqs = theta ** (-torch.arange(n) / n)
        parts.append(pos.reshape(-1, 1).float() * freqs)
    return torch.cat(parts, dim=1), splits


def _rotate(x, angles):
    """Apply RoPE: x [S, D] with pairs (2i, 2i+1)."""
    x2 = x.view(x.shape[0], -1, 2)
    cos, sin = angles.cos(), angles.sin()
    out = torch.stack((x2[..., 0] * cos - x2[..., 1] * sin, x2[..., 0] * sin + x2[..., 1] * cos), dim=-1)
    return out.view_as(x)


def synthetic_qkv(layout: TokenLayout, head_dim: int, seed: int, step: int = 0, drift: float = 0.08):
    """q, k, v ``[1, S, H, D]`` fp32 for the heads of HEAD_TYPES at denoising "step" ``step`` (fields drift)."""
    gen = torch.Generator().manual_seed(seed)
    F, Hh, W = layout.frames, layout.height, layout.width
    S, D = layout.num_tokens, head_dim
    angles, (pt, ph, _) = _rope_angles(layout, D)
    qs, ks, vs = [], [], []
    for kind in HEAD_TYPES:
        sig_t, sig_s = {"local": (1.5, 3.0), "temporal": (0.0, 3.0), "frame": (0.0, 1.0), "sink": (1.5, 3.0)}.get(
            kind, (1.5, 3.0)
        )
        base = _smooth_field(gen, D, F, Hh, W, sig_t, sig_s)
        move = _smooth_field(gen, D, F, Hh, W, sig_t, sig_s)
        nq = _smooth_field(gen, D, F, Hh, W, sig_t, sig_s)
        nk = _smooth_field(gen, D, F, Hh, W, sig_t, sig_s)
        val = _smooth_field(gen, D, F, Hh, W, 1.0, 2.0) + drift * step * _smooth_field(gen, D, F, Hh, W, 1.0, 2.0)
        if kind == "temporal":  # no change over time: the same position in every frame looks alike
            base, nq, nk = (x[:, :1].expand_as(x) for x in (base, nq, nk))
        content = base + drift * step * move
        q = (content + 0.5 * nq).reshape(D, S).T
        k = (content + 0.5 * nk).reshape(D, S).T
        ang = angles.clone()
        if kind == "temporal":
            ang[:, :pt] = 0.0  # RoPE only over h, w
        elif kind == "frame":
            ang[:, pt:] *= 0.05  # weak spatial rotation
            ang[:, :pt] *= 4.0  # strong temporal rotation: frames separate
        q, k = _rotate(q, ang), _rotate(k, ang)
        gain = {"diffuse": 0.35, "local": 1.6, "temporal": 1.6, "frame": 1.4, "sink": 1.3}[kind]
        q, k = q * gain, k * gain
        if kind == "sink":  # a shared direction: first-frame keys attract every query
            u = torch.randn(D, generator=gen)
            u = u / u.norm() * 3.0 * math.sqrt(D) ** 0.5
            q = q + u
            k[: Hh * W] += u
        qs.append(q)
        ks.append(k)
        vs.append(val.reshape(D, S).T)
    stack = lambda xs: torch.stack(xs, dim=1)[None].contiguous()  # noqa: E731
    return stack(qs), stack(ks), stack(vs)


def dense_attention(q, k, v):
    full = BlockMask.full(*(2 * [math.ceil(q.shape[1] / 128)]), 128)
    return block_sparse_attention(q, k, v, full, backend="reference", return_lse=True)


def rel_err(out, ref, heads=None):
    if heads is not None:
        out, ref = out[:, :, heads], ref[:, :, heads]
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def per_type(out, ref):
    return {t: round(rel_err(out, ref, [i for i, h in enumerate(HEAD_TYPES) if h == t]), 4) for t in set(HEAD_TYPES)}


# ---- part 1 ------------------------------------------------------------------------------------------------------
def synthetic_part(layout, head_dim, targets, backend, device):
    bs = 128
    steps = range(1, 5)  # the sparse steps after a recalibration (published interval 5)
    calib = [synthetic_qkv(layout, head_dim, seed=1, step=s) for s in (0, 2)]
    evals = {s: synthetic_qkv(layout, head_dim, seed=2, step=s) for s in (0, *steps)}
    dense = {s: dense_attention(*evals[s]) for s in evals}
    to = lambda t: tuple(x.to(device) for x in t)  # noqa: E731
    rows = []

    def add(method, target, density, outs, knob, **extra):
        errs = [rel_err(outs[s].cpu(), dense[s][0]) for s in steps]
        rows.append(
            dict(
                method=method,
                target=target,
                density=round(density, 4),
                knob=knob,
                rel_l2=round(sum(errs) / len(errs), 4),
                per_head_type=per_type(outs[steps[-1]].cpu(), dense[steps[-1]][0]),
                **extra,
            )
        )
        print(f"  {method:<26} target {target:.2f} density {density:.3f} rel L2 {rows[-1]['rel_l2']:.4f} ({knob})")

    decays = [0.01 * 1.5**i for i in range(16)]
    radial = {d: radial_mask(layout, bs, d, sink=True) for d in decays}
    windows = [(w, f) for f in (0, 1, 2, 3) for w in (0, 64, 128, 256, 384, 512, 768)]
    rmasks = {wf: rettention_mask(layout, bs, wf[0], wf[1]) for wf in windows}
    search = LayerSearch([to(c) for c in calib], layout, backend=backend)
    for target in targets:
        # radial
        d = min(decays, key=lambda d: abs(radial[d].density - target))
        m = radial[d]
        outs = {s: block_sparse_attention(*to(evals[s]), m.to(device), backend=backend) for s in steps}
        add("radial", target, m.density, outs, f"decay={d:.3g}")
        # draft
        sp = 1.0 - target
        outs, dens = {}, []
        for s in steps:
            outs[s], mask = draft_attention(*to(evals[s]), layout, sp, backend=backend, return_mask=True)
            dens.append(mask.density)
        add("draft", target, sum(dens) / len(dens), outs, f"sparsity={sp:.2f}")
        # sparse-vdit: bisect the tolerance for the target kept fraction
        lo, hi, best = 0.0, 1.5, None
        for _ in range(12):
            tol = (lo + hi) / 2
            pats, _errs = search.choose(tol)
            kept = sum(0.0 if p.kind == "skip" else pattern_density(p, layout, bs) for p in pats) / len(pats)
            if best is None or abs(kept - target) < abs(best[1] - target):
                best = (pats, kept, tol)
            lo, hi = (tol, hi) if kept > target else (lo, tol)
        pats, kept, tol = best
        outs = {s: sparse_vdit_attention(*to(evals[s]), layout, pats, backend=backend) for s in steps}
        kinds = [f"{p.kind}:{p.width}" if p.kind not in ("full", "skip") else p.kind for p in pats]
        add("sparse-vdit", target, kept, outs, f"tolerance={tol:.3f}", patterns=kinds)
        # re-ttention and the same mask without the reshape
        wf = min(windows, key=lambda wf: abs(rmasks[wf].density - target))
        m = rmasks[wf].to(device)
        q0, k0, v0 = to(evals[0])
        full = BlockMask.full(m.num_q_blocks, m.num_k_blocks, bs, device=device)
        o_full, lse_full = block_sparse_attention(q0, k0, v0, full, backend=backend, return_lse=True)
        o_s0, lse_s0 = block_sparse_attention(q0, k0, v0, m, backend=backend, return_lse=True)
        rho = mass_ratio(lse_s0, lse_full)
        resid_reshaped = o_full.float() - reshape_sparse(o_s0, rho).float()
        resid_plain = o_full.float() - o_s0.float()
        sparse = {s: block_sparse_attention(*to(evals[s]), m, backend=backend) for s in steps}
        knob = f"window_tokens={wf[0]}, window_frames={wf[1]}"
        add("sparse mask (no reshape)", target, m.density, sparse, knob)
        add("reshape only", target, m.density, {s: reshape_sparse(sparse[s], rho) for s in steps}, knob)
        add("residual only", target, m.density, {s: sparse[s] + resid_plain for s in steps}, knob)
        drifted = {
            s: reshape_sparse(sparse[s], rho + 0.04 * (s - 1)) + resid_reshaped.to(sparse[s].dtype) for s in steps
        }
        add("rettention", target, m.density, drifted, knob)
        no_drift = {s: reshape_sparse(sparse[s], rho) + resid_reshaped.to(sparse[s].dtype) for s in steps}
        add("rettention (no drift)", target, m.density, no_drift, knob)
    return rows


def draft_cost(layout, head_dim, backend, device):
    """Time of the draft mask (permute + pool + score + top-k) against the attention it plans, one call."""
    from accel.attention_kernels.draft import draft_block_mask, draft_permutation

    q, k, v = (t.to(device) for t in synthetic_qkv(layout, head_dim, seed=3))
    perm = draft_permutation(layout)

    def plan():
        return draft_block_mask(perm.apply(q), perm.apply(k), layout, 0.75)

    mask = plan()
    qp, kp, vp = perm.apply(q), perm.apply(k), perm.apply(v)
    t_plan = bench(plan, str(device))
    t_sparse = bench(lambda: block_sparse_attention(qp, kp, vp, mask, backend=backend), str(device))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    t_dense = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), str(device))
    return {
        "tokens": layout.num_tokens,
        "density": round(mask.density, 4),
        "draft_mask_s": round(t_plan, 5),
        "sparse_attention_s": round(t_sparse, 5),
        "dense_sdpa_s": round(t_dense, 5),
        "mask_over_dense": round(t_plan / t_dense, 4),
    }


# ---- part 2 ------------------------------------------------------------------------------------------------------
def pipeline_part(steps: int):
    import tempfile

    import accel
    from accel.testing import tiny_wan_pipeline
    from accel.testing.metrics import psnr, relative_l2

    call = dict(
        prompt="w3 w4 w5 w6",
        negative_prompt="w7",
        num_inference_steps=steps,
        height=256,
        width=512,
        num_frames=17,
        max_sequence_length=16,
        guidance_scale=5.0,
        output_type="latent",
    )
    pipe = tiny_wan_pipeline(num_layers=4, num_heads=4, head_dim=32)

    def render():
        return pipe(generator=torch.Generator().manual_seed(0), **call).frames

    ref = render()
    rows = []
    with tempfile.TemporaryDirectory() as plans:
        cal_call = {k: call[k] for k in ("num_inference_steps", "height", "width", "num_frames", "max_sequence_length")}
        plan = accel.calibrate(pipe, ["w8 w9", "w10 w11 w12"], path=f"{plans}/plan.json", tolerance=0.3, **cal_call)
        presets = [
            ("radial", {}),
            ("draft", {}),
            ("sparse-vdit", {"plan": plan.meta["path"]}),
            ("rettention", {}),
            ("rettention", {"reshape": False, "residual": False}),
        ]
        for name, kw in presets:
            accel.accelerate(pipe, name, **kw)
            try:
                t0 = time.perf_counter()
                out = render()
                dt = time.perf_counter() - t0
                s = accel.stats(pipe)
            finally:
                accel.disable(pipe)
            label = name + ("" if not kw or name == "sparse-vdit" else " (same mask, no reshape/residual)")
            rows.append(
                dict(
                    preset=label,
                    sparse_calls=s.get("sparse", 0),
                    dense_calls=s.get("dense", 0),
                    mean_density=None if s["mean_sparse_density"] is None else round(s["mean_sparse_density"], 4),
                    rel_l2=round(relative_l2(out, ref), 5),
                    psnr_db=round(psnr(out, ref), 2),
                    seconds=round(dt, 2),
                )
            )
            print(f"  {label:<45} {rows[-1]}")
    return rows, plan.meta["pattern_counts"]


def markdown(payload) -> str:
    env = payload["environment"]
    lay = payload["layout"]
    lines = [
        "# Sparse attention fidelity against dense",
        "",
        f"Device: {env['device']}; torch {env['torch']}. Command: `python -m benchmarks.bench_fidelity`.",
        "",
        f"## Synthetic 3D-RoPE attention ({lay['frames']}x{lay['height']}x{lay['width']} tokens, "
        f"{len(HEAD_TYPES)} heads x {payload['head_dim']}, blocks of 128)",
        "",
        "Relative L2 error of the attention output against dense, mean over the 4 steps after a recalibration / "
        "calibration on other inputs. Per head type at the last step.",
        "",
        "| target | method | density | rel L2 | local | temporal | frame | sink | diffuse | knob |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["synthetic"]:
        p = r["per_head_type"]
        lines.append(
            f"| {r['target']:.2f} | {r['method']} | {r['density']:.3f} | **{r['rel_l2']:.4f}** | {p['local']} | "
            f"{p['temporal']} | {p['frame']} | {p['sink']} | {p['diffuse']} | {r['knob']} |"
        )
    c = payload["draft_cost"]
    lines += [
        "",
        f"Draft planning cost ({c['tokens']} tokens, sparsity 0.75): mask {c['draft_mask_s'] * 1e3:.1f} ms, sparse "
        f"attention {c['sparse_attention_s'] * 1e3:.1f} ms, dense SDPA {c['dense_sdpa_s'] * 1e3:.1f} ms "
        f"(mask / dense = {c['mask_over_dense']:.3f}).",
    ]
    if payload.get("pipeline"):
        lines += [
            "",
            "## Tiny offline Wan pipeline (random weights, 4 layers, 5x16x32 latent tokens, "
            f"{payload['pipeline_steps']} steps, CFG)",
            "",
            f"Sparse-vDiT plan (tolerance 0.3): {payload['vdit_plan_counts']}.",
            "",
            "| preset | sparse calls | dense calls | mean density | latent rel L2 | PSNR dB | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in payload["pipeline"]:
            lines.append(
                f"| {r['preset']} | {r['sparse_calls']} | {r['dense_calls']} | {r['mean_density']} | {r['rel_l2']} "
                f"| {r['psnr_db']} | {r['seconds']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a smaller grid (a smoke run)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backend = "auto" if device.type == "cuda" else "gather"
    layout = TokenLayout(5, 16, 32) if args.quick else TokenLayout(13, 16, 32)
    head_dim = 64
    targets = (0.3, 0.15) if args.quick else (0.3, 0.15, 0.07)
    print(f"synthetic: {layout}, backend {backend}")
    synthetic = synthetic_part(layout, head_dim, targets, backend, device)
    cost = draft_cost(layout, head_dim, "auto" if device.type == "cuda" else "flex", device)
    print(f"draft cost: {cost}")
    payload = {
        "environment": environment(args.device),
        "layout": {"frames": layout.frames, "height": layout.height, "width": layout.width},
        "head_dim": head_dim,
        "head_types": list(HEAD_TYPES),
        "synthetic": synthetic,
        "draft_cost": cost,
    }
    if not args.skip_pipeline:
        steps = 6 if args.quick else 10
        payload["pipeline"], payload["vdit_plan_counts"] = pipeline_part(steps)
        payload["pipeline_steps"] = steps
    write_results("fidelity", args.device, args.tag or ("quick" if args.quick else None), payload, markdown(payload))


if __name__ == "__main__":
    main()
