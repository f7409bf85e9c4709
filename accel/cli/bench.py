"""``diffusion-fast bench``: the same prompt and seed, dense and with each preset, on one loaded pipeline.

The runs are :func:`accel.cli.compare.compare` (``--warmup`` untimed runs, then ``--repeats`` timed runs, median);
this module prints the table and writes the JSON (``--json``) and the figure (``--plot``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .compare import PeakMemory, compare, finite
from .errors import PROG, CLIError
from .output import OutputError, OutputTarget, check_writable, write_atomic
from .request import resolve_request, with_default_preset
from .runner import (
    attention_text,
    environment,
    load,
    note,
    parallelize,
    start_parallel,
    stop_parallel,
)

METRICS = {
    "time_s": "median wall time of the whole pipeline call (text encoding, denoising, VAE decode)",
    "denoise_s": "median time from the first denoiser forward to the last step callback",
    "speedup": "dense time_s / preset time_s",
    "psnr_db": "PSNR of decoded frames in [0, 1] against dense (data range 1); null when identical",
    "ssim": "mean SSIM (11x11 gaussian window, sigma 1.5) of decoded frames against dense, per channel",
    "rel_l2": "relative L2 error of decoded frames against dense",
    "stats": "accel.stats of the last timed run (attention calls by outcome and reason)",
    "prompt_following": "embedded trained model only: each attribute of the prompt, read back from the frames",
}


def _check_side_file(path: str, flag: str, ext: str | None) -> Path:
    p = Path(path).expanduser()
    if ext is not None and p.suffix.lower() != ext:
        raise CLIError(f"{flag} {path!r}: the file must end in {ext}")
    try:
        check_writable(OutputTarget(p, "file"))
    except OutputError as e:
        raise CLIError(f"{flag}: {e}") from None
    return p


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    if x is None:
        return none
    if math.isinf(x):
        return "inf"
    return format(x, spec)


def cmd_bench(args) -> int:
    with_default_preset(args, "presets")
    presets = ["dense"] + list(dict.fromkeys(p.strip() for p in args.presets if p.strip() != "dense"))
    json_path = _check_side_file(args.json, "--json", None) if args.json else None
    plot_path = _check_side_file(args.plot, "--plot", ".png") if args.plot else None
    request, configs = resolve_request(args, presets)
    rank = start_parallel(request)
    try:
        return _bench(args, request, configs, presets, json_path, plot_path, rank)
    finally:
        stop_parallel(request)


def _bench(args, request, configs, presets, json_path, plot_path, rank: int) -> int:
    quiet = args.quiet or rank > 0  # under --ulysses every rank runs; rank 0 reports and writes

    for text in request.notes:
        note(f"note: {text}", quiet)
    memory = PeakMemory(request.device)
    pipe = load(request, quiet)
    if request.ulysses > 1:
        note(
            f"Ulysses context parallelism over {request.ulysses} ranks: {', '.join(parallelize(pipe, request))}", quiet
        )
    env = environment(request.device)
    note(
        f"bench {request.source.describe()} on {env['device_name']}: {request.size_text()}, {request.steps} steps, "
        f"{args.warmup} warm-up + {args.repeats} timed run(s) per preset",
        quiet,
    )
    rows, outputs = compare(
        pipe,
        request,
        args.prompt,
        presets,
        configs,
        warmup=args.warmup,
        repeats=args.repeats,
        memory=memory,
        progress=lambda text: note(text, quiet),
    )
    if rank > 0:
        return 0
    reads_back = _prompt_following(request, args.prompt, rows, outputs)
    _print_table(rows, memory, reads_back)

    if json_path is not None:
        payload = {
            "tool": f"{PROG} bench",
            "environment": env,
            "model": {
                "name": request.source.name,
                "kind": request.source.kind,
                "pipeline_class": request.source.pipeline_class,
                "transformer_classes": list(request.source.transformer_classes),
                "family": request.source.spec.name if request.source.spec else None,
                "random_weights": request.source.embedded is not None and request.source.embedded.random_weights,
            },
            "settings": {
                "prompt": args.prompt,
                "negative_prompt": request.negative_prompt,
                "seed": request.seed,
                "height": request.height,
                "width": request.width,
                "frames": request.frames,
                "steps": request.steps,
                "guidance_scale": request.guidance_scale,
                "dtype": request.dtype_name,
                "cpu_offload": request.cpu_offload,
                "compile": request.compile,
                "ulysses": request.ulysses,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "overrides": request.overrides_by_preset,
            },
            "metrics": {**METRICS, "peak_memory": memory.label},
            # The efficiency tables the presets' never-slower decisions read (measured on this device, cached).
            "efficiency": {k: v for row in rows for k, v in (row.get("stats") or {}).get("efficiency", {}).items()},
            "results": [{**row, "psnr_db": finite(row["psnr_db"])} for row in rows],
        }
        text = json.dumps(payload, indent=2, default=str) + "\n"
        write_atomic(json_path, lambda tmp: tmp.write_text(text))
        print(f"wrote {json_path}")
    if plot_path is not None:
        from .plot import bench_plot

        title = (
            f"{PROG} bench: {request.source.name}, {request.size_text()}, {request.steps} steps, {env['device_name']}"
        )
        png = bench_plot(rows, outputs, title)
        write_atomic(plot_path, lambda tmp: tmp.write_bytes(png))
        print(f"wrote {plot_path}")
    return 0


def _prompt_following(request, prompt: str, rows: list[dict[str, Any]], outputs: dict[str, Any]) -> bool:
    """On the embedded trained model, with a prompt its grammar parses: what each preset's frames show, read back
    (accel.embedded.readback), as ``row["prompt_following"]`` (attribute -> right). False when not applicable."""
    emb = request.source.embedded
    if emb is None or emb.random_weights or request.output_type != "np" or not request.is_video:
        return False
    from accel.embedded.grammar import parse_prompt
    from accel.embedded.readback import matches, read_video

    scene = parse_prompt(prompt)
    if scene is None:
        return False
    for row in rows:
        row["prompt_following"] = matches(read_video(outputs[row["preset"]]), scene)
    return True


def _print_table(rows: list[dict[str, Any]], memory: PeakMemory, reads_back: bool = False) -> None:
    header = ["preset", "time s", "speed-up", "s/step", f"{memory.short} GiB", "PSNR dB", "SSIM"]
    header += ["prompt"] if reads_back else []
    header += ["attention calls"]
    table = [header]
    for row in rows:
        mem = row["peak_memory_bytes"]
        follow = row.get("prompt_following")
        table.append(
            [
                row["preset"],
                f"{row['time_s']:.2f}",
                f"x{row['speedup']:.2f}",
                f"{row['s_per_step']:.3f}",
                _fmt(None if mem is None else mem / 2**30, ".2f"),
                "(ref)" if row["preset"] == "dense" else _fmt(row["psnr_db"], ".1f"),
                "(ref)" if row["preset"] == "dense" else _fmt(row["ssim"], ".4f"),
                *([f"{sum(follow.values())}/{len(follow)}"] if reads_back else []),
                attention_text(row["stats"]).replace(" attention calls", ""),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    last = len(header) - 1
    for i, r in enumerate(table):
        cells = [c.ljust(w) if j in (0, last) else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"time: median of the timed runs (whole call); {memory.short}: {memory.label}")
    if reads_back:
        print(
            "prompt: attributes of the prompt read back from the frames (colour, shape, count, motion, background; "
            "accel.embedded.readback)"
        )
