"""Sparse-vDiT requests: the calibration plan a render needs is checked before any weights load."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from .errors import EXIT_FAILURE, PROG, CLIError
from .models import ModelSource, default_model
from .sizes import grid_text, runs_all_dense, token_grid


def _calibrate_command(source: ModelSource, request_flags: list[str], overrides: dict[str, Any]) -> str:
    words = [PROG, "calibrate"]
    if source.name != default_model():
        words += ["--model", source.location]
    words += request_flags
    for key, value in overrides.items():
        if key != "plan":
            words += ["--set", f"{key}={value}"]
    return " ".join(words)


def check_plan(
    source: ModelSource,
    config,
    overrides: dict[str, Any],
    *,
    is_video: bool,
    height: int | None,
    width: int | None,
    frames: int | None,
    steps: int | None,
) -> None:
    """For a sparse-vdit config: raise CLIError (exit status 1) unless a calibration plan for this model, token
    grid and step count exists (``--set plan=PATH`` or the plan directory), before any weights load.

    The plan key needs the transformers' architecture keys (spec, class, config hash): they come from the
    transformers built on the meta device from their configs (no weights). Where the configs cannot be read, at
    least some plan for this token grid and step count must exist. Nothing is checked when no sparse call will
    happen (every step or layer dense, a short sequence) or when the sizes are left to the pipeline."""
    from accel.errors import PlanError
    from accel.plans import load_plan, plan_dir, plan_path

    spec = source.spec
    if spec is None or steps is None:
        return
    layout = token_grid(source.size_rules, is_video, frames, height, width)
    skeletons = source.transformer_skeletons()
    models = {name: spec.architecture_key(m) for name, m in skeletons.items()} if skeletons else None
    attention = config.attention
    defaults, layers = {}, None
    if skeletons:
        holder = types.SimpleNamespace(**{a: skeletons.get(a) for a in spec.transformer_attrs})
        try:
            defaults = spec.defaults(holder).get(attention.method, {})
        except Exception:  # defaults that need more of the pipeline than its transformers: the generic ones
            defaults = {}
        layers = min(len(spec.self_attention_layers(m)) for m in skeletons.values())
    attention = attention.with_defaults(defaults)
    if runs_all_dense(attention, steps, layout, layers):
        return
    flags = []
    for flag, value in (("--height", height), ("--width", width), ("--frames", frames), ("--steps", steps)):
        if value is not None:
            flags += [flag, str(value)]
    how = (
        f"calibrate one first: `{_calibrate_command(source, flags, overrides)}` (the same model, sizes, steps and "
        "--set values as this render), or pass a plan file with --set plan=PATH"
    )
    what = grid_text(layout, steps) if layout is not None else f"{steps} steps"

    if attention.plan is not None:
        path = Path(attention.plan).expanduser()
        if not path.is_file():
            raise CLIError(
                f"--set plan={attention.plan}: no such plan file; create it with "
                f"`{_calibrate_command(source, flags, overrides)} -o {attention.plan}`",
                code=EXIT_FAILURE,
            )
        try:
            load_plan(path, models, layout, steps)
        except PlanError as e:
            raise CLIError(f"--set plan={attention.plan}: {_cli_spelling(str(e))}", code=EXIT_FAILURE) from None
        return

    folder = plan_dir()
    if models is not None and layout is not None:
        path = plan_path(models, layout, steps)
        if path.is_file():
            try:
                load_plan(path, models, layout, steps)
            except PlanError as e:
                raise CLIError(_cli_spelling(str(e)), code=EXIT_FAILURE) from None
            return
        first = models[sorted(models)[0]]
        others = sorted(p.name for p in folder.glob(f"{first['spec']}-{first['config_sha1']}-*.json"))
        known = f"; this model's plans there: {', '.join(others)}" if others else ""
        raise CLIError(
            f"no Sparse-vDiT plan for this model at {what} (looked for {str(path)!r}{known}); {how}",
            code=EXIT_FAILURE,
        )
    # The exact key is unknown here: at least one plan for this grid and step count must exist.
    grid = f"{layout.frames}x{layout.height}x{layout.width}" if layout is not None else "*"
    if not any(folder.glob(f"*-{grid}-{steps}steps.json")) and not any(folder.glob(f"*-{grid}-*-{steps}steps.json")):
        raise CLIError(f"no Sparse-vDiT plan at {what} in {str(folder)!r}; {how}", code=EXIT_FAILURE)


def _cli_spelling(message: str) -> str:
    """A core message in the command line's words: ``plan=PATH`` is ``--set plan=PATH`` here."""
    return message.replace("pass plan=PATH", "pass --set plan=PATH")
