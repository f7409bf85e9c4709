"""Quality and speed of every preset on a real (trained) model: shapes-wan, the embedded model.

Held-out prompts (colour-shape-motion combinations never seen in training), default render (128x128, 33 frames:
4,352 video tokens, 20 UniPC steps, guidance 4), seed = prompt index. For each of the first ``--prompts`` prompts
every preset renders in turn (interleaved, so machine load hits all alike); dense alone renders the rest, for the
dense prompt-following score over ``--dense-prompts``.

Per preset: PSNR and SSIM of the frames against dense (mean over prompts), the prompt-following score read back
from the frames (accel.embedded.readback), the mean density of its sparse attention calls and the share of calls
that were sparse, cache predictions, and the speed-up (sum of dense times / sum of preset times, same prompts).
Sparse-vDiT is calibrated first on training-distribution prompts (not the evaluation ones).

    python benchmarks/embedded_quality.py                  # about 20 minutes on 2 CPU cores
Writes benchmarks/results/embedded_quality_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, device_name  # noqa: E402

PRESETS = ("dense", "radial", "draft", "sparse-vdit", "rettention", "taylorseer", "radial+taylorseer")


def calibration_prompts() -> list[str]:
    """The CLI's calibration prompts for this model (training combinations, none of the evaluation ones)."""
    from accel.cli.models import DEFAULT_MODEL, EMBEDDED

    return list(EMBEDDED[DEFAULT_MODEL].calibration_prompts)


def render(pipe, prompt: str, seed: int, kwargs) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).frames[0]
    return torch.from_numpy(out), time.perf_counter() - t0


def main(argv=None) -> None:
    import accel
    from accel.embedded import load_shapes_wan
    from accel.embedded.model import MAX_TEXT_TOKENS, RENDER
    from accel.embedded.readback import held_out_prompts, score
    from accel.testing.metrics import psnr, ssim

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8, help="prompts every preset renders")
    ap.add_argument("--dense-prompts", type=int, default=24, help="prompts for the dense prompt-following score")
    ap.add_argument("--presets", default=",".join(PRESETS))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    presets = [p for p in args.presets.split(",") if p]
    kwargs = {**RENDER, "max_sequence_length": MAX_TEXT_TOKENS}
    pipe = load_shapes_wan()
    prompts = held_out_prompts(max(args.dense_prompts, args.prompts))

    plan = Path(tempfile.mkdtemp()) / "shapes_wan_plan.json"
    if "sparse-vdit" in presets:
        t0 = time.perf_counter()
        accel.calibrate(pipe, calibration_prompts(), path=str(plan), output_type="latent", **kwargs)
        print(f"sparse-vdit calibrated on {calibration_prompts()} in {time.perf_counter() - t0:.0f} s", flush=True)
    overrides = {"sparse-vdit": {"plan": str(plan)}}

    frames: dict[str, list] = {p: [] for p in presets}
    times: dict[str, list] = {p: [] for p in presets}
    stats: dict[str, list] = {p: [] for p in presets}
    for i, prompt in enumerate(prompts):
        for preset in presets if i < args.prompts else ["dense"]:
            if preset != "dense":
                accel.accelerate(pipe, preset, **overrides.get(preset, {}))
            try:
                out, t = render(pipe, prompt, i, kwargs)
                if preset != "dense":
                    stats[preset].append(accel.stats(pipe))
            finally:
                if preset != "dense":
                    accel.disable(pipe)
            frames[preset].append(out)
            times[preset].append(t)
            print(f"{i:2d} {preset:18s} {t:6.1f} s  {prompt}", flush=True)

    def psnr_1(x, r):
        return psnr(x, r, 1.0)

    def ssim_1(x, r):  # (F, H, W, C) -> (F, C, H, W): every channel of every frame is one SSIM image
        return ssim(x.permute(0, 3, 1, 2), r.permute(0, 3, 1, 2), 1.0)

    n = args.prompts
    dense_time = sum(times["dense"][:n])
    rows = []
    for preset in presets:
        f = frames[preset]
        ref = frames["dense"][: len(f)]
        s = score(prompts[: len(f)], [x.numpy() for x in f])
        calls = {k: sum(st.get(k, 0) for st in stats[preset]) for k in ("sparse", "dense", "fallback")}
        dens = [st["mean_sparse_density"] for st in stats[preset] if st.get("mean_sparse_density") is not None]
        cache = {}
        for st in stats[preset]:
            for k, v in st.items():
                if k.startswith("cache:") and isinstance(v, int):
                    cache[k[6:]] = cache.get(k[6:], 0) + v
        total_calls = sum(calls.values())
        rows.append(
            {
                "preset": preset,
                "prompts": len(f),
                "psnr_db": None if preset == "dense" else statistics.mean(map(psnr_1, f, ref)),
                "ssim": None if preset == "dense" else statistics.mean(map(ssim_1, f, ref)),
                "score": s,
                "score_same_prompts_as_presets": score(prompts[:n], [x.numpy() for x in f[:n]]),
                "mean_sparse_density": statistics.mean(dens) if dens else None,
                "sparse_call_share": calls["sparse"] / total_calls if total_calls else None,
                "calls": calls,
                "cache": cache,
                "time_s": sum(times[preset][:n]) / min(n, len(times[preset])),
                "speedup": dense_time / sum(times[preset][:n]),
            }
        )
    payload = {
        "model": "shapes-wan (embedded, trained)",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "render": kwargs,
        "prompts": prompts,
        "calibration_prompts": calibration_prompts() if "sparse-vdit" in presets else None,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embedded_quality_cpu.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = table(payload, n)
    (RESULTS / "embedded_quality_cpu.md").write_text(md)
    print(md)


def table(payload, n: int) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    dense = next(r for r in payload["rows"] if r["preset"] == "dense")
    rs = payload["render"]
    lines = [
        "# Every preset on shapes-wan, the embedded trained model (CPU)",
        "",
        f"{payload['device']}, torch {payload['torch']}. Default render: {rs['height']}x{rs['width']}, "
        f"{rs['num_frames']} frames (17x16x16 = 4,352 video tokens), {rs['num_inference_steps']} steps, guidance "
        f"{rs['guidance_scale']:g}. "
        "Held-out prompts (combinations never trained on), seed = prompt index.",
        f"Dense prompt following over {dense['prompts']} prompts: colour {pct(dense['score']['colour'])}, shape "
        f"{pct(dense['score']['shape'])}, count {pct(dense['score']['count'])}, motion "
        f"{pct(dense['score']['motion'])}, background {pct(dense['score']['background'])}, all five "
        f"{pct(dense['score']['all'])}.",
        "",
        f"Presets on the first {n} prompts (the same renders for every column; speed-up: total dense time / total "
        "preset time, interleaved runs):",
        "",
        "| preset | PSNR dB | SSIM | colour | shape | motion | all | sparse calls | mean density | cache predicted "
        "| s / video | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        s = r["score_same_prompts_as_presets"]
        pred = r["cache"].get("predicted")
        p = "ref" if r["psnr_db"] is None else format(r["psnr_db"], ".1f")
        q = "ref" if r["ssim"] is None else format(r["ssim"], ".3f")
        lines.append(
            f"| {r['preset']} | {p} | {q} | {pct(s['colour'])} | {pct(s['shape'])} | "
            f"{pct(s['motion'])} | {pct(s['all'])} | {pct(r['sparse_call_share'])} | {pct(r['mean_sparse_density'])} | "
            f"{'-' if pred is None else pred} | {r['time_s']:.1f} | x{r['speedup']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:  # rewrite the .md from the .json
        data = json.loads((RESULTS / "embedded_quality_cpu.json").read_text())
        rows = data["rows"]
        (RESULTS / "embedded_quality_cpu.md").write_text(table(data, rows[1]["prompts"] if len(rows) > 1 else 0))
    else:
        main()
