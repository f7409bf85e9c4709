"""``diffusion-fast calibrate``: Sparse-vDiT's offline search, saving the plan that ``--preset sparse-vdit`` finds."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import EXIT_FAILURE, CLIError
from .request import read_prompts, resolve_request
from .runner import load

DEFAULT_CALIBRATION_PROMPTS = (
    "a red fox running through snow",
    "waves breaking on a rocky beach at sunset",
    "a busy city street at night, neon signs reflecting in puddles",
)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import accel

    if args.prompts and args.prompts_file:
        raise CLIError("give prompts or --prompts-file, not both")
    if args.prompts_file:
        prompts = read_prompts(None, args.prompts_file)
    request, _ = resolve_request(args, ["sparse-vdit"], check_plans=False)
    if not args.prompts_file:
        emb = request.source.embedded
        defaults = (emb.calibration_prompts if emb is not None else ()) or DEFAULT_CALIBRATION_PROMPTS
        prompts = list(args.prompts) or list(defaults)
    over = request.overrides_by_preset["sparse-vdit"]
    if "plan" in over:
        raise CLIError("calibrate writes a plan: give its path with -o/--output, not --set plan=...")
    pipe = load(request, args.quiet)
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, file=sys.stderr)
    kwargs = {**request.call_kwargs(), "output_type": "latent"}
    t0 = time.perf_counter()
    try:
        plan = accel.calibrate(
            pipe,
            prompts,
            path=args.output,
            tolerance=args.tolerance,
            step_buckets=args.step_buckets,
            cost_model=args.cost_model,
            **over,
            **kwargs,
        )
    except ValueError as e:
        raise CLIError(str(e), code=EXIT_FAILURE) from None
    counts = ", ".join(f"{v} {k}" for k, v in sorted(plan.meta["pattern_counts"].items()))
    print(
        f"saved {plan.meta['path']}: {len(prompts)} prompts in {time.perf_counter() - t0:.1f} s | head patterns: "
        f"{counts} | mean kept fraction {plan.meta['mean_kept_fraction']:.2f} at tolerance {args.tolerance:g} | "
        f"model {request.source.name}",
        flush=True,
    )
    return 0
