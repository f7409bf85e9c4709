"""The ``diffusion-fast`` argument parser: subcommands, flags, argument types, and the implicit ``render``.

``diffusion-fast "a prompt" ...`` is short for ``diffusion-fast render "a prompt" ...``: :func:`parse_args` inserts
``render`` when the first word is not a subcommand, except when that word is a near miss of one (``modles``): then
it is an error that names the subcommand and says how to render such a one-word prompt anyway.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable

from .errors import PROG, CLIError
from .models import default_model

COMMANDS = ("render", "bench", "calibrate", "efficiency", "presets", "models")
DEFAULT_BENCH_PROMPT = "a red circle moving right"  # one the embedded default model draws
TYPO_CUTOFF = 0.8  # difflib ratio above which a one-word prompt is taken for a mistyped subcommand

# --dtype names -> torch dtype attribute (None: chosen from the device).
DTYPES: dict[str, str | None] = {
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def number(cast: Callable, what: str, ok: Callable, rule: str) -> Callable[[str], object]:
    """An argparse type: ``cast`` the text, then check ``ok(value)``; errors say what was expected."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


positive_int = number(int, "a whole number", lambda v: v >= 1, "at least 1")
non_negative_int = number(int, "a whole number", lambda v: v >= 0, "0 or more")
positive_float = number(float, "a number", lambda v: v > 0, "> 0")


def override(text: str) -> tuple[str, str]:
    """``--set KEY=VALUE`` -> ``(key, value text)``; the value is converted to the config field's type once the
    preset is known (see ``request.convert_overrides``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. decay=0.5), got {text!r}")
    return key.strip(), raw.strip()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and acceleration")
    g.add_argument(
        "--model",
        default=default_model(),
        help=f"embedded model name, diffusers pipeline folder or Hugging Face repo id (default: {default_model()}, "
        f"built offline, random weights); `{PROG} models` lists them",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        type=override,
        action="append",
        default=[],
        help="override a preset parameter, e.g. --set decay=0.5 --set dense_step_fraction=0.3 (repeatable; values "
        "are checked against the parameter's type; 'none' resets an optional one to the model's default)",
    )
    g.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, mps (default: auto = cuda if available, else cpu)"
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="weights and compute dtype (default: auto = bfloat16 on CUDA, float32 otherwise)",
    )
    g.add_argument(
        "--cpu-offload",
        action="store_true",
        help="diffusers model CPU offload (enable_model_cpu_offload): each component moves to the GPU only while "
        "it runs; needs CUDA and the `accelerate` package",
    )
    _add_efficiency_arg(g)
    g.add_argument("-v", "--verbose", action="store_true", help="show diffusers/transformers log messages")


def _add_efficiency_arg(g) -> None:
    g.add_argument(
        "--efficiency",
        metavar="MODE",
        default=None,
        help="where the sparse backends' speed table comes from: auto (cached, else measured once, a few seconds), "
        "remeasure, typed (built-in values), or a JSON file to pin (default: $ACCEL_EFFICIENCY, else auto)",
    )


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: the embedded model's small sizes, else the pipeline's own)")
    g.add_argument("--steps", type=positive_int, help="denoising steps (tiny-random-wan: 10)")
    g.add_argument("--height", type=positive_int, help="pixels (Wan: multiple of 16; tiny-random-wan: 256)")
    g.add_argument("--width", type=positive_int, help="pixels (Wan: multiple of 16; tiny-random-wan: 256)")
    g.add_argument("--frames", type=positive_int, help="video frames (Wan: 4k+1; tiny-random-wan: 33)")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (tiny-random-wan: 5.0)")
    g.add_argument("--negative-prompt", help="what to steer away from")
    g.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output (default: 0)")
    g.add_argument("--image", help="input image for image-to-video pipelines (e.g. WanImageToVideoPipeline)")


def _add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser(s) after applying the preset (regional: the repeated transformer blocks, "
        "where the model declares them); the first run compiles (minutes on CPU for large models)",
    )


def _add_ulysses_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ulysses",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the denoiser(s) over N processes with diffusers' Ulysses context parallelism (each rank attends "
        "the full sequence with 1/N of the heads; sparse attention keeps working). Launch with torchrun: "
        "`torchrun --nproc-per-node N -m accel.cli render ... --ulysses N`; rank 0 writes the outputs",
    )


def build_parser() -> argparse.ArgumentParser:
    from accel import __version__

    top = argparse.ArgumentParser(
        prog=PROG,
        description="Render videos and images with diffusers pipelines accelerated by sparse attention "
        f'(accel). `{PROG} "prompt"` is short for `{PROG} render "prompt"`.',
        epilog=f'examples:\n  {PROG} "a red circle moving right" -o circle.mp4\n'
        f"  {PROG} bench --presets radial --json bench.json --plot bench.png\n"
        f"  {PROG} render --help\n\n"
        "Exit status: 0 done, 1 failed (model cannot be loaded, no calibration plan, ...), 2 bad request "
        "(checked before any weights load), 130 interrupted (Ctrl-C; press it twice to stop at once).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = top.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    r = sub.add_parser(
        "render",
        help="render a prompt (or a file of prompts) to a video or image file (the default command)",
        description=f'Render a prompt to a file. `{PROG} "prompt"` is short for `{PROG} render "prompt"`. The '
        "output format follows the extension: .mp4 (H.264), .gif, .webp, .png/.jpg (an image, or a one-frame "
        "video), a folder ending in '/' or a pattern like frames/f_%04d.png (PNG frames).",
    )
    r.add_argument("prompt", nargs="?", help="the text prompt (or use --prompts-file)")
    r.add_argument(
        "-o",
        "--output",
        help="output path; the extension picks the format (default: output.mp4 for video, output.png for an "
        "image or one frame). Several prompts are numbered: out_000.mp4, out_001.mp4, ...",
    )
    r.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (blank lines and # comments skipped)")
    r.add_argument(
        "--preset",
        default=None,
        help="acceleration preset; '+' composes (e.g. radial+taylorseer); 'dense' for none (default: radial on "
        "video models, draft on image models). "
        f"`{PROG} presets` lists them",
    )
    r.add_argument("--fps", type=positive_float, help="video frame rate (default: the model's, Wan 16)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes; only the summary line")
    _add_model_args(r)
    _add_compile_arg(r)
    _add_ulysses_arg(r)
    _add_generation_args(r)

    b = sub.add_parser(
        "bench",
        help="same prompt and seed, dense vs presets: time, speed-up, peak memory, PSNR/SSIM vs dense",
        description="Run the same prompt and seed dense and with each preset on one loaded pipeline: warm-up runs, "
        "then timed repeats (median). Quality is PSNR and SSIM of the decoded frames (in [0, 1]) against the dense "
        "output. Peak memory: torch.cuda.max_memory_allocated on CUDA (reset per run); on CPU the process's peak "
        "resident set size (Linux VmHWM, reset per run through /proc/self/clear_refs), which includes everything "
        "the process holds, not just this run's tensors.",
    )
    b.add_argument("prompt", nargs="?", default=DEFAULT_BENCH_PROMPT, help=f"(default: {DEFAULT_BENCH_PROMPT!r})")
    b.add_argument(
        "--presets",
        nargs="+",
        default=None,
        metavar="PRESET",
        help="presets to compare with dense (default: radial on video models, draft on image models); dense always "
        "runs first as the reference. Give the "
        "prompt before --presets, which takes every word after it",
    )
    b.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs per preset (default: 1)")
    b.add_argument("--repeats", type=positive_int, default=3, help="timed runs per preset; median (default: 3)")
    b.add_argument("--json", metavar="PATH", help="write the numbers, environment and configs as JSON")
    b.add_argument("--plot", metavar="PATH.png", help="write a PNG: frame strips and a speed/quality chart")
    b.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    _add_model_args(b)
    _add_compile_arg(b)
    _add_ulysses_arg(b)
    _add_generation_args(b)

    c = sub.add_parser(
        "calibrate",
        help="Sparse-vDiT: measure per-head attention patterns on dense runs and save the plan the sparse-vdit "
        "preset loads",
        description="Run dense generations of a few prompts, measure every candidate attention pattern per "
        "(layer, head) against dense attention, pick the cheapest one within --tolerance and save the plan (JSON). "
        "Calibrate with the height, width, frames and steps you will render: the plan is keyed by them and by the "
        f"model. Then render with `{PROG} --preset sparse-vdit ...` (the same sizes find the plan by themselves; "
        "a plan saved elsewhere is used with --set plan=PATH). --set takes the preset's dense_step_fraction, "
        "dense_layers, block_size and backend.",
    )
    c.add_argument("prompts", nargs="*", help="calibration prompts (default: three built-in prompts)")
    c.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (blank lines and # comments skipped)")
    c.add_argument(
        "-o", "--output", help="plan path (default: the plan directory, $ACCEL_PLAN_DIR or ~/.cache/diffusion-fast)"
    )
    c.add_argument(
        "--tolerance",
        type=positive_float,
        default=0.05,
        help="largest error of a head's output, relative to the layer's mean head energy (default: 0.05)",
    )
    c.add_argument("--step-buckets", type=positive_int, default=1, help="choose patterns per range of steps")
    c.add_argument("--cost-model", choices=("flops", "measured"), default="flops", help="how candidates are priced")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(c)
    _add_generation_args(c)

    e = sub.add_parser(
        "efficiency",
        help="show (or measure) the sparse backends' speed per kept block against dense attention on a device",
        description="The efficiency table the never-slower decisions read: each sparse backend's speed-up x density "
        "against the device's dense attention, measured on first use (a few seconds) and cached.",
    )
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps (default: auto)")
    e.add_argument("--dtype", default="auto", choices=list(DTYPES), help="(default: bfloat16 on CUDA, else float32)")
    e.add_argument("--head-dim", type=positive_int, default=64, help="attention head dim (default: 64)")
    e.add_argument("--remeasure", action="store_true", help="measure again and overwrite the cached table")
    e.add_argument(
        "--budget",
        type=positive_float,
        default=3.0,
        help="seconds a measurement may take; backends past it keep their typed values (default: 3, as on first use)",
    )
    e.add_argument("--json", metavar="PATH", help="also write the table as JSON (loadable with --efficiency PATH)")
    _add_efficiency_arg(e)
    sub.add_parser("presets", help="list acceleration presets, one per line")
    sub.add_parser("models", help="list the embedded model(s) and the supported model families, one per line")
    return top


def mistyped_command(word: str | None) -> str | None:
    """The subcommand a one-word ``word`` is a near miss of (``modles`` -> ``models``), else None."""
    if not word or len(word.split()) != 1 or word in COMMANDS or word.startswith("-"):
        return None
    close = difflib.get_close_matches(word.lower(), COMMANDS, n=1, cutoff=TYPO_CUTOFF)
    return close[0] if close else None


def _refuse_typo(word: str, command: str) -> None:
    raise CLIError(
        f"{word!r} is not a command; did you mean `{PROG} {command}`? To render the one-word prompt {word!r}, "
        f"say so: `{PROG} render {word}`"
    )


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv`` (not empty), inserting the implicit ``render`` subcommand where it is meant."""
    parser = parser or build_parser()
    implicit = argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")
    if implicit:
        if (command := mistyped_command(argv[0])) is not None:
            _refuse_typo(argv[0], command)
        argv = ["render", *argv]
    args = parser.parse_args(argv)
    if implicit and (command := mistyped_command(args.prompt)) is not None:
        _refuse_typo(args.prompt, command)
    return args
