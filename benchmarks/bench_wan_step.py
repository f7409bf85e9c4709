"""Wan denoising-step time with random weights: dense against every preset, at real model shapes and sizes.

    python -m benchmarks.bench_wan_step                        # CUDA, bf16: the default models and sizes below
    python -m benchmarks.bench_wan_step --models wan2.1-1.3b --sizes 480x832x81 --configs radial taylorseer
    python -m benchmarks.bench_wan_step --dry-run              # the same code path, tiny, on the CPU (seconds)

What is timed: denoising steps, each = two ``WanTransformer3DModel`` forwards (classifier-free guidance: cond and
uncond, as ``WanPipeline`` runs them, each in its diffusers ``cache_context``) plus the Euler update; no text
encoder, no VAE. The transformer is built from its config with random weights on the device (time does not depend
on the weights; nothing is downloaded), and the step loop is a small pipeline object, so ``accelerate``,
``accel.stats`` and ``accel.calibrate`` act on it as on ``WanPipeline``. Methods and caches depend on the step index
(dense warm-up steps, TaylorSeer's full steps, Re-ttention's recalibrations), so each configuration runs a window of
a 50-step schedule past every dense warm-up, default steps 20-24 (one TaylorSeer full step and one Re-ttention
recalibration in five, as over the rest of a 50-step run), in one call after an untimed lead-in: at least 2 steps
(kernel compiles, mask builds), and for TaylorSeer and Re-ttention one whole period (steps 15-19), so the timed steps
carry the state and the memory they have in a whole run. A device sync follows every step; s/step is the mean over
the timed steps, and the attention-call and cache counts are theirs (cache counts are module calls: ``attn1``,
``attn2`` and ``ffn`` per block and branch). ``sparse-vdit`` first calibrates its plan with ``accel.calibrate`` on
2 steps of the window (its time is reported apart); with random weights that plan is not a trained model's, so its
kept fraction is shown. ``dense`` is the untouched model (diffusers' own attention: SDPA, flash on CUDA).

Budget: --budget-s bounds the run: before each configuration, once the elapsed time exceeds it, the remaining ones
are skipped with a note. A configuration that fails (out of memory, an error) is reported in its row and the rest go
on. Results: benchmarks/results/wan_step_<device>.{json,md} (--out to write elsewhere; --dry-run writes to a fresh
temporary folder).

Estimate of a default run on an H100/H200 in bf16, from a dense forward of about 0.4 s for 1.3B at 32,760 tokens,
2 s at 75,600, and 1 s for the 4-layer 14B shape at 75,600 (attention about 65% of it at 32,760 tokens, 85% at
75,600): dense runs 7 steps of 2 forwards; radial and draft 7 steps at about half that; Re-ttention, TaylorSeer and
radial+TaylorSeer 10 steps, of which TaylorSeer's are mostly predicted; sparse-vdit 2 calibration steps (dense
attention plus about three dense calls' worth of candidates per layer) and 7 steps. That is about 45 s for 1.3B at
480p (with the first kernel compiles), 80 s for the 14B shape and 140 s for 1.3B at 720p, run in that order
(cheapest first), sparse-vdit last in each: the default budget of 220 s cuts the end of the last case. At 720p the
1.3B model's TaylorSeer cache (30 blocks x attn1, attn2, ffn x 2 factors x 2 branches of 232 MB in bf16, about
84 GB) does not fit an 80 GB card; its rows then say "out of memory".
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import benchmarks.common as common

# Wan2.1 transformer configs (diffusers' WanTransformer3DModel). The 14B shape keeps 4 of its 40 layers: per-layer
# time is what matters, and the whole model (28 GB of bf16 weights) would not leave room for 75,600-token runs.
_WAN = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
MODELS = {
    "wan2.1-1.3b": dict(_WAN, num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960),
    "wan2.1-14b-4layers": dict(_WAN, num_layers=4, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824),
}
# Cheapest first: when the budget runs out, it cuts the most expensive case.
CASES = [("wan2.1-1.3b", "480x832x81"), ("wan2.1-14b-4layers", "720x1280x81"), ("wan2.1-1.3b", "720x1280x81")]
TEXT_TOKENS = 512  # Wan's T5 prompt length (the pipeline pads prompt embeddings to max_sequence_length=512)
# --dry-run: the same loop on a model small enough for a 2-core CPU; 640 tokens = 5 blocks of 128, enough for a mask.
TINY = {"tiny-wan": dict(_WAN, num_layers=2, num_attention_heads=2, attention_head_dim=32, ffn_dim=128, text_dim=32)}
TINY_CASES = [("tiny-wan", "128x256x17")]
TINY_TEXT_TOKENS = 16
# sparse-vdit last: its calibration costs most, and on random weights its plan says least.
CONFIGS = ["dense", "radial", "draft", "rettention", "taylorseer", "radial+taylorseer", "sparse-vdit"]
COLUMNS = [
    "model",
    "size",
    "tokens",
    "config",
    "s/step",
    "speed-up vs dense",
    "sparse / dense calls",
    "cache full / predicted",
]
GUIDANCE = 5.0
SHIFT = 5.0


def size_arg(text: str) -> str:
    """HEIGHTxWIDTHxFRAMES with Wan's size rules (multiples of 16 px, 4k+1 frames)."""
    try:
        h, w, f = (int(x) for x in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTHxFRAMES, e.g. 480x832x81, got {text!r}") from None
    if h % 16 or w % 16 or (f - 1) % 4 or min(h, w, f) <= 0:
        raise argparse.ArgumentTypeError(f"{text}: height and width must be multiples of 16 and frames 4k+1")
    return text


def latent_shape(size: str) -> tuple[int, int, int]:
    """(frames, height, width) of the latents: Wan's VAE compresses 4x in time (first frame apart) and 8x in space."""
    h, w, f = (int(x) for x in size.split("x"))
    return (f - 1) // 4 + 1, h // 8, w // 8


def tokens(size: str, config: dict) -> int:
    f, h, w = latent_shape(size)
    pt, ph, pw = config["patch_size"]
    return (f // pt) * (h // ph) * (w // pw)


# ------------------------------------------------------------------------------------------------ the step loop


def window_pipeline(transformer, scheduler):
    """A pipeline object holding ``transformer`` whose call runs a window of steps of a ``num_steps`` schedule."""
    from diffusers import DiffusionPipeline

    class StepWindow(DiffusionPipeline):
        def __init__(self, transformer, scheduler):
            super().__init__()
            self.register_modules(transformer=transformer, scheduler=scheduler)

        @torch.no_grad()
        def __call__(
            self, latents, prompt_embeds, negative_prompt_embeds, *, num_steps, start, count, on_step_end=None, **unused
        ):
            """Steps ``start .. start+count-1`` of the schedule, with CFG as ``WanPipeline`` runs them (``unused``:
            what ``accel.calibrate`` adds, e.g. ``generator`` and ``output_type``)."""
            self.scheduler.set_timesteps(num_steps, device=latents.device)
            sigmas = self.scheduler.sigmas
            dtype = self.transformer.dtype
            for i in range(start, start + count):
                t = self.scheduler.timesteps[i].expand(latents.shape[0])
                x = latents.to(dtype)
                with self.transformer.cache_context("cond"):
                    cond = self.transformer(x, t, prompt_embeds, return_dict=False)[0]
                with self.transformer.cache_context("uncond"):
                    uncond = self.transformer(x, t, negative_prompt_embeds, return_dict=False)[0]
                noise_pred = uncond + GUIDANCE * (cond - uncond)
                latents = latents + (sigmas[i + 1] - sigmas[i]) * noise_pred.float()
                if on_step_end is not None:
                    on_step_end(i)
            self.maybe_free_model_hooks()  # as every pipeline call ends: stateful hooks (caches, methods) reset
            return latents

    return StepWindow(transformer, scheduler)


def build(config: dict, size: str, text_tokens: int, device: str, dtype: torch.dtype):
    """The pipeline and the call inputs (latents, prompt embeddings) for one model and size; random, seeded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 1.3B model's CPU init alone takes longer than a step
        transformer = WanTransformer3DModel(**config).eval()
    # As from_pretrained(torch_dtype=dtype) loads it: the modules the class keeps in float32 (norms, time embedding,
    # rope) stay float32.
    keep = transformer._keep_in_fp32_modules or []
    for name, param in transformer.named_parameters():
        if not any(m in name.split(".") for m in keep):
            param.data = param.data.to(dtype)
    pipe = window_pipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, config["in_channels"], *latent_shape(size), generator=g).to(device)
    text = [torch.randn(1, text_tokens, config["text_dim"], generator=g).to(device, dtype) for _ in range(2)]
    return pipe, dict(latents=latents, prompt_embeds=text[0], negative_prompt_embeds=text[1])


@dataclass
class Window:
    """Steps ``start .. start+count-1`` of a ``num_steps`` schedule, timed after an untimed lead-in in one call."""

    num_steps: int
    start: int
    count: int
    min_lead: int  # the shortest lead-in: kernel compiles and mask builds happen there, not in the timed steps

    def lead(self, resolved) -> int:
        """Lead-in steps for a configuration: at least ``min_lead``, and one whole period of what it carries from step
        to step (TaylorSeer's factors from its last full step, Re-ttention's share and residual from its last
        recalibration), so the timed steps hold the state, and the memory, of the same steps in a whole run."""
        from accel.config import RettentionConfig

        period = 1
        if resolved is not None and resolved.cache is not None:
            period = resolved.cache.interval
        if resolved is not None and isinstance(resolved.attention, RettentionConfig):
            period = max(period, resolved.attention.recalibration_interval(self.num_steps))
        return max(self.min_lead, period)

    def run(self, pipe, inputs, device: str, lead: int, on_lead_end=None) -> list[float]:
        """One call over the lead-in and the window; seconds of each timed step. ``on_lead_end()`` runs between the
        lead-in and the window (untimed)."""
        if lead > self.start:
            raise ValueError(f"a lead-in of {lead} steps needs --start >= {lead}")
        ends = []

        def on_step_end(i):
            if i == self.start - 1 and on_lead_end is not None:
                on_lead_end()
            common.sync(device)
            ends.append(time.perf_counter())

        pipe(
            **inputs,
            num_steps=self.num_steps,
            start=self.start - lead,
            count=lead + self.count,
            on_step_end=on_step_end,
        )
        return [b - a for a, b in zip(ends[lead - 1 : -1], ends[lead:], strict=True)]


# ------------------------------------------------------------------------------------------------ one configuration


def calibrate(pipe, inputs, window: Window, steps: int, tolerance: float, folder: Path) -> dict:
    """Sparse-vDiT plan for this model and size from the window's first ``steps`` steps; returns what the row shows."""
    import accel

    t0 = time.perf_counter()
    plan = accel.calibrate(
        pipe,
        [inputs],
        path=str(folder / "plan.json"),
        tolerance=tolerance,
        num_steps=window.num_steps,
        start=window.start,
        count=steps,
    )
    return {
        "plan": plan.meta["path"],
        "calibration_s": time.perf_counter() - t0,
        "calibration_steps": steps,
        "tolerance": tolerance,
        "mean_kept_fraction": plan.meta["mean_kept_fraction"],
        "pattern_counts": plan.meta["pattern_counts"],
    }


def has_attention(preset: str) -> bool:
    from accel.config import resolve_config

    return resolve_config(preset, {}).attention is not None


def run_config(pipe, inputs, name: str, window: Window, device: str, overrides: dict) -> dict:
    """One call with ``name`` applied (``dense``: the untouched model): its lead-in, then the timed window."""
    import accel
    from accel.cli.runner import config_dict
    from accel.methods.base import dense_steps

    row: dict = {"config": name}
    accelerated = name != "dense"
    if accelerated:
        accel.accelerate(pipe, name, **overrides)
    try:
        resolved = accel.accel_config(pipe) if accelerated else None
        row["resolved"] = config_dict(resolved)
        attention = resolved.attention if resolved is not None else None
        if attention is not None and dense_steps(attention.dense_step_fraction, window.num_steps) > window.start:
            row["note"] = "window inside the dense warm-up"
        row["lead_steps"] = lead = window.lead(resolved)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        reset = (lambda: accel.stats(pipe, reset=True)) if accelerated else None  # count the timed steps only
        step_s = window.run(pipe, inputs, device, lead, on_lead_end=reset)
        row["step_s"], row["s_per_step"] = step_s, statistics.fmean(step_s)
        if device.startswith("cuda"):
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if accelerated:
            row["stats"] = {k: v for k, v in accel.stats(pipe).items() if v is not None}
    finally:
        if accelerated:
            accel.disable(pipe)
    return row


def run_case(model: str, config: dict, size: str, args, text_tokens: int, deadline: float, folder: Path) -> list:
    """Every configuration on one model and size; rows in the order run."""
    n = tokens(size, config)
    head = {"model": model, "size": size, "tokens": n}

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - START:6.1f} s] {model} {size}: {text}", file=sys.stderr, flush=True)

    if time.perf_counter() > deadline:
        return [dict(head, config=c, skipped="budget") for c in args.configs]
    say(f"building ({n} tokens)")
    pipe, inputs = build(config, size, text_tokens, args.device, args.dtype)
    window = Window(args.total_steps, args.start, args.steps, args.lead_steps)
    rows = []
    for name in args.configs:
        if time.perf_counter() > deadline:
            rows.append(dict(head, config=name, skipped="budget"))
            say(f"{name}: skipped (budget of {args.budget_s:.0f} s spent)")
            continue
        try:
            overrides, extra = dict(args.overrides) if has_attention(name) else {}, {}
            if "taylorseer" in name:
                # TaylorSeer's fixed published schedule: a window of steps has a known share of full steps; what an
                # adaptive schedule saves depends on the whole run's trajectory (benchmarks/bench_cache_front.py).
                overrides["threshold"] = None
            if name == "sparse-vdit":
                say("calibrating sparse-vdit")
                folder_case = folder / f"{model}-{size}"
                extra = calibrate(pipe, inputs, window, args.calibration_steps, args.vdit_tolerance, folder_case)
                overrides["plan"] = extra["plan"]
            row = dict(head, **run_config(pipe, inputs, name, window, args.device, overrides), **extra)
            say(f"{name}: {row['s_per_step']:.3f} s/step")
        except Exception as e:  # fail soft: report it in the row, go on with the next configuration
            traceback.print_exc()
            kind = "out of memory" if isinstance(e, torch.OutOfMemoryError) else type(e).__name__
            first_line = (str(e).splitlines() or [""])[0][:200].replace("|", "/")  # a table cell
            row = dict(head, config=name, error=f"{kind}: {first_line}")
            say(f"{name}: failed ({kind})")
        rows.append(row)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    del pipe, inputs
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------ report


def speedups(rows: list[dict]) -> None:
    dense = {(r["model"], r["size"]): r["s_per_step"] for r in rows if r["config"] == "dense" and "s_per_step" in r}
    for r in rows:
        ref = dense.get((r["model"], r["size"]))
        r["speedup"] = ref / r["s_per_step"] if ref and "s_per_step" in r else None


def cells(r: dict) -> list[str]:
    stats = r.get("stats", {})
    if "s_per_step" in r:
        time_cell = f"{r['s_per_step']:.3f}"
    else:
        time_cell = "skipped (budget)" if r.get("skipped") else f"failed: {r.get('error', '?')}"
    calls = "-"
    if any(k in stats for k in ("sparse", "dense")):
        calls = f"{stats.get('sparse', 0)} / {stats.get('dense', 0)}"
        if stats.get("fallback"):
            calls += f" (+{stats['fallback']} fallback)"
        if stats.get("mean_sparse_density") is not None:
            calls += f", density {stats['mean_sparse_density']:.2f}"
    cache = "-"
    if "cache:computed" in stats or "cache:predicted" in stats:
        cache = f"{stats.get('cache:computed', 0)} / {stats.get('cache:predicted', 0)}"
    config = r["config"]
    if "mean_kept_fraction" in r:
        config += f" (plan keeps {r['mean_kept_fraction']:.2f})"
    if r.get("note"):
        config += f" ({r['note']})"
    speedup = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}"
    return [r["model"], r["size"], f"{r['tokens']:,}", config, time_cell, speedup, calls, cache]


def markdown(rows: list[dict], env: dict, settings: dict) -> str:
    w = settings
    last = w["start"] + w["steps"] - 1
    lines = [
        f"# Wan denoising step on {env['device']}",
        "",
        f"Random-weight `WanTransformer3DModel`s built from their configs, {w['dtype']}. One step = 2 transformer "
        f"forwards (CFG: cond + uncond, {w['text_tokens']} text tokens) + an Euler update. Per configuration, one "
        f"call: an untimed lead-in of at least {w['lead_steps']} steps (TaylorSeer and Re-ttention: one whole cache "
        "interval or recalibration period, so the timed steps carry the state and memory they have in a whole run), "
        f"then steps {w['start']}-{last} of a {w['total_steps']}-step flow-matching schedule (shift {SHIFT:g}) "
        "timed, with a device sync after each; s/step is their mean. Calls and cache counts are the timed steps' "
        "(attention calls: sparse / dense self-attention calls, with the mean kept block fraction of the sparse ones; "
        "cache: computed / predicted module calls of attn1, attn2, ffn). sparse-vdit's plan: `accel.calibrate` on "
        f"steps {w['start']}-{w['start'] + w['calibration_steps'] - 1}, tolerance {w['vdit_tolerance']}, on random "
        "weights (not a trained model's plan). Speed-up: dense s/step "
        "over the configuration's, same model and size.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    notes = [
        f"- {r['model']} {r['size']}: sparse-vdit calibration took {r['calibration_s']:.1f} s"
        for r in rows
        if "calibration_s" in r
    ]
    if any(r.get("skipped") for r in rows):
        notes.append(
            f"- skipped: the time budget of {w['budget_s']:g} s was spent (--budget-s; subset with --models, "
            "--sizes, --configs)"
        )
    notes.append(f"- total {w['elapsed_s']:.0f} s")
    return "\n".join([*lines, "", *notes]) + "\n"


# ------------------------------------------------------------------------------------------------ main

START = time.perf_counter()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default: bfloat16 on CUDA, float32 otherwise",
    )
    p.add_argument("--models", nargs="+", default=None, help=f"subset of {list(MODELS)}")
    p.add_argument(
        "--sizes",
        nargs="+",
        type=size_arg,
        default=None,
        help="HxWxF; default: 1.3B at 480x832x81 and 720x1280x81, the 14B shape at 720x1280x81; given, "
        "every chosen model runs every size",
    )
    p.add_argument("--configs", nargs="+", default=None, help=f"presets (dense always runs first); default {CONFIGS}")
    p.add_argument("--budget-s", type=float, default=220.0, help="skip the configurations left once this is spent")
    p.add_argument("--total-steps", type=int, default=50, help="the schedule's step count")
    p.add_argument("--start", type=int, default=20, help="first timed step (past the dense warm-ups)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--lead-steps", type=int, default=2, help="untimed steps before the window, at least")
    p.add_argument("--calibration-steps", type=int, default=2, help="sparse-vdit: steps accel.calibrate runs")
    p.add_argument("--vdit-tolerance", type=float, default=0.05, help="accel.calibrate's tolerance")
    p.add_argument("--out", type=Path, default=None, help="folder for the result files (default benchmarks/results)")
    p.add_argument("--tag", default=None, help="suffix of the result file names")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the same code path, tiny model and size, on the CPU; results in a temporary folder",
    )
    args = p.parse_args(argv)
    if not 1 <= args.lead_steps <= args.start < args.start + args.steps <= args.total_steps:
        p.error("need 1 <= --lead-steps <= --start < --start + --steps <= --total-steps")
    if not 1 <= args.calibration_steps <= args.steps:
        p.error("need 1 <= --calibration-steps <= --steps")

    models, cases, text_tokens = MODELS, CASES, TEXT_TOKENS
    args.overrides = {}
    if args.dry_run:
        models, cases, text_tokens = TINY, TINY_CASES, TINY_TEXT_TOKENS
        args.device = args.device or "cpu"
        args.out = args.out or Path(tempfile.mkdtemp(prefix="wan_step_dry_run."))
        args.tag = args.tag or "dry-run"
        # Tiny tensors: one thread is as fast, and on a busy machine a second one turns each op into a wait for
        # a core (100x slower measured on a loaded 2-core machine).
        torch.set_num_threads(1)
        # Sparsity cannot pay at 640 tokens on a CPU, and every call would stay dense: force the sparse paths (kernels,
        # masks, Re-ttention's state) that the full-size run takes.
        args.overrides = {"min_speedup": 0.0}
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    chosen = args.models or list(dict.fromkeys(m for m, _ in cases))
    unknown = [m for m in chosen if m not in models]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(models)}")
    cases = [(m, s) for m in chosen for s in args.sizes] if args.sizes else [(m, s) for m, s in cases if m in chosen]
    args.configs = ["dense", *dict.fromkeys(c for c in (args.configs or CONFIGS) if c != "dense")]
    from accel.config import resolve_config

    for c in args.configs:
        try:
            resolve_config(c, {})
        except ValueError as e:
            p.error(str(e))

    deadline = START + args.budget_s
    rows = []
    with tempfile.TemporaryDirectory(prefix="wan_step_plans.") as plans:  # calibration plans: never the user's
        for model, size in cases:
            rows += run_case(model, models[model], size, args, text_tokens, deadline, Path(plans))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    speedups(rows)

    env = common.environment(args.device)
    settings = {
        "dtype": str(args.dtype).removeprefix("torch."),
        "total_steps": args.total_steps,
        "start": args.start,
        "steps": args.steps,
        "lead_steps": args.lead_steps,
        "calibration_steps": args.calibration_steps,
        "guidance": f"CFG, 2 forwards per step, scale {GUIDANCE:g}",
        "text_tokens": text_tokens,
        "scheduler": f"FlowMatchEulerDiscreteScheduler(shift={SHIFT:g})",
        "vdit_tolerance": args.vdit_tolerance,
        "budget_s": args.budget_s,
        "elapsed_s": time.perf_counter() - START,
        "models": {m: models[m] for m in dict.fromkeys(m for m, _ in cases)},
        "dry_run": args.dry_run,
    }
    md = markdown(rows, env, settings)
    print(md)
    payload = {"environment": env, "settings": settings, "rows": rows}
    common.write_results("wan_step", args.device, args.tag, payload, md, folder=args.out)  # --out, every dry run
    if all("s_per_step" not in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
