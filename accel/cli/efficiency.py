"""``diffusion-fast efficiency``: the sparse backends' measured speed per kept block against dense attention.

Prints the table the never-slower decisions read for a device, dtype and head dim (measured on first use, a few
seconds, then cached; ``--remeasure`` measures again) and, with ``--json``, writes it in the format
``--efficiency PATH`` pins.
"""

from __future__ import annotations

import json
from pathlib import Path

import accel

from .errors import CLIError
from .request import resolve_device, resolve_dtype


def apply_mode(args, quiet: bool = False) -> None:
    """``--efficiency`` (every subcommand that runs a model has it): the table source, and the measuring notice
    printed on stderr unless quiet."""
    import sys

    from tqdm import tqdm

    mode = getattr(args, "efficiency", None)
    # tqdm.write: the notice comes during the first sparse call, under the denoising progress bar
    notify = None if quiet else (lambda text: tqdm.write(text, file=sys.stderr))
    try:
        accel.set_efficiency(mode, notify)
    except ValueError as e:
        raise CLIError(f"--efficiency: {e}") from None


def cmd_efficiency(args) -> int:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    table = accel.efficiency_table(device, dtype, args.head_dim, remeasure=args.remeasure, budget_s=args.budget)
    print(f"efficiency table {table.key} ({table.source}" + (f", {table.seconds:.1f} s" if table.seconds else "") + ")")
    print("speed-up over dense attention at density d is about efficiency / d")
    print()
    print("| backend | efficiency | by sequence length | measured: tokens, density, dense s, sparse s |")
    print("|---|---|---|---|")
    for backend, value in table.values.items():
        rows = table.measured.get(backend, [])
        detail = "; ".join(
            f"{r.get('tokens', '?')}, {r['density']:.2f}, {r['dense_s']:.4f}, {r['sparse_s']:.4f}" for r in rows
        )
        lengths = ", ".join(f"{n}: {e:.2f}" for n, e in sorted(table.by_tokens.get(backend, {}).items()))
        print(f"| {backend} | {value:.3f} | {lengths or '-'} | {detail or '-'} |")
    for backend in table.unmeasured:
        print(f"| {backend} | (typed) | - | not measured: over the time budget or not available |")
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(table.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
