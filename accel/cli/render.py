"""``diffusion-fast render`` (the default command): a prompt, or a file of prompts, to video or image files."""

from __future__ import annotations

import argparse
import time

from .errors import EXIT_FAILURE, CLIError
from .output import OutputError, check_writable, numbered, parse_output, write_output
from .request import read_prompts, resolve_request, with_default_preset
from .runner import (
    apply_preset,
    attention_text,
    compile_denoisers,
    compile_notice,
    config_text,
    load,
    note,
    parallelize,
    run_pipeline,
    sparse_calls_expected,
    start_parallel,
    stop_parallel,
)

COMPILE_NOTICE = "the first sparse attention call compiles its kernel (once per process; about 10-20 s on CPU)"


def cmd_render(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompt, args.prompts_file)
    targets = []

    def check_outputs(is_video: bool, frames: int | None) -> None:
        single = (is_video and frames == 1) or not is_video
        out_spec = args.output or ("output.png" if single else "output.mp4")
        target = parse_output(out_spec, is_video=is_video, frames=frames)
        targets.extend(numbered(target, i, len(prompts)) for i in range(len(prompts)))
        for t in targets:
            check_writable(t)

    with_default_preset(args, "preset")
    request, configs = resolve_request(args, [args.preset], before_load=check_outputs)
    rank = start_parallel(request)
    try:
        return _render(request, configs, prompts, targets, args, rank)
    finally:
        stop_parallel(request)


def _render(request, configs, prompts, targets, args, rank: int) -> int:
    import accel

    config = configs[args.preset]
    quiet = args.quiet or rank > 0  # under --ulysses every rank renders; rank 0 speaks and writes
    for text in request.notes:
        note(f"note: {text}", quiet)

    t_load = time.perf_counter()
    pipe = load(request, quiet)
    if request.ulysses > 1:  # before accelerate (either order works; this one keeps accel's hooks outermost)
        note(
            f"Ulysses context parallelism over {request.ulysses} ranks: {', '.join(parallelize(pipe, request))}", quiet
        )
    accelerated = apply_preset(pipe, args.preset, config, request.overrides_by_preset[args.preset])
    resolved = accel.accel_config(pipe) if accelerated else None
    if request.compile:  # after accelerate, which refuses a compiled transformer
        note(f"torch.compile ({', '.join(compile_denoisers(pipe))}): the first run compiles", quiet)
    note(
        f"{request.source.describe()} on {request.device} ({request.dtype_name}), ready in "
        f"{time.perf_counter() - t_load:.1f} s; preset {args.preset}: {config_text(resolved)}",
        quiet,
    )
    expected = request.device == "cpu" and sparse_calls_expected(pipe, request, resolved)
    try:
        with compile_notice(COMPILE_NOTICE, expected, quiet):
            return _render_all(pipe, request, prompts, targets, args.preset, accelerated, quiet, write=rank == 0)
    finally:
        if accelerated:
            accel.disable(pipe)  # leave the process as we found it (the CLI also runs in-process in tests)


def _render_all(pipe, request, prompts, targets, preset: str, accelerated: bool, quiet: bool, write=True) -> int:
    import accel

    t_all = time.perf_counter()
    n = len(prompts)
    for i, (prompt, tgt) in enumerate(zip(prompts, targets, strict=True)):
        tag = f"[{i + 1}/{n}] " if n > 1 else ""
        res = run_pipeline(pipe, request, prompt, progress=not quiet, desc=f"{tag}denoising")
        stats = accel.stats(pipe, reset=True) if accelerated else None
        if not write:  # another rank of a --ulysses run: rank 0 holds the same gathered output and writes it
            continue
        try:
            written = write_output(tgt, res.frames, request.fps)
        except (OutputError, OSError) as e:  # e.g. the disk filled up; nothing half-written is left
            raise CLIError(f"cannot write {tgt}: {e}", code=EXIT_FAILURE) from None
        where = str(tgt) if len(written) == 1 else f"{tgt} ({len(written)} files)"
        speed = (
            f"denoising {res.denoise_s:.1f} s = {res.denoise_s / max(res.steps, 1):.2f} s/step"
            if res.denoise_s is not None
            else f"{res.total_s / max(res.steps, 1):.2f} s/step incl. encode and decode"
        )
        fps_text = f" at {request.fps:g} fps" if request.is_video and res.frames.shape[0] > 1 else ""
        print(
            f"{tag}saved {where}: {request.size_text(res.frames.shape)}{fps_text} | {res.total_s:.1f} s, {speed} "
            f"({res.steps} steps) | preset {preset} | {attention_text(stats)} | model {request.source.name}",
            flush=True,
        )
    if n > 1 and write:
        print(f"done: {n} outputs in {time.perf_counter() - t_all:.1f} s", flush=True)
    return 0
