"""The ``models`` and ``presets`` listings: every supported family with its presets, sizes and published defaults."""

from __future__ import annotations

from .models import EMBEDDED


def models_lines() -> list[str]:
    """One line per model for ``diffusion-fast models``: embedded models, then supported families."""
    from accel.pipelines import supported_specs

    from accel import supported_presets

    lines = []
    for m in EMBEDDED.values():
        lines.append(
            f"{m.name}: {m.description}; defaults {m.height}x{m.width}, {m.frames} frames, {m.steps} steps, "
            f"{m.fps} fps; {m.describe_more}"
        )
    for spec in supported_specs():
        rules = []
        if spec.spatial_multiple > 1:
            rules.append(f"height/width multiples of {spec.spatial_multiple}")
        if spec.frame_multiple > 1:
            rules.append(f"frames {spec.frame_multiple}k+1")
        if spec.default_fps:
            rules.append(f"{spec.default_fps} fps")
        rules.append("image" if not spec.is_video else "video")
        presets = [p for p in supported_presets(spec) if p != "dense"]
        rules.append(f"presets {', '.join(presets)} (attention presets also +taylorseer)")
        lines.append(
            f"{spec.name}: {', '.join(spec.pipeline_classes)} (transformer {', '.join(spec.transformer_classes)})"
            + (f"; {', '.join(rules)}" if rules else "")
            + (f"; e.g. --model {', '.join(spec.example_repos)}" if spec.example_repos else "")
        )
    return lines


_SHORT = {
    "dense_step_fraction": lambda v: f"{v:.0%} of steps dense",
    "dense_layers": lambda v: f"{v} dense layer{'s' if v != 1 else ''}",
    "sink": lambda v: "sink" if v else "no sink",
    "window_frames": lambda v: "every frame" if v == -1 else f"+-{v} frames",
    "window_tokens": lambda v: f"+-{v} tokens",
    "block_size": lambda v: f"{v}-token blocks",
    "recalibrate_every": lambda v: f"recalibrate every {v}",
    "warmup_steps": lambda v: f"warm-up {v}",
    # TaylorSeer's adaptive schedule (the preset's default where a model has one): its threshold and what it changes
    "adaptive": lambda v: "adaptive: " + ", ".join(_cell(k, x) for k, x in v.items()),
    "distance": lambda v: f"{v} distance",
}


def _cell(key: str, value) -> str:
    return _SHORT.get(key, lambda v: f"{key} {v:g}")(value)


def presets_table() -> str:
    """The models x presets table of the README (markdown), from the live registries: which presets each family
    takes and the per-model defaults it fills in (a cell without any says so: the preset's generic ones apply)."""
    import types

    from accel.pipelines import supported_specs

    from accel import supported_presets

    methods = ("radial", "draft", "sparse-vdit", "rettention", "taylorseer")
    lines = [
        "| model | pipelines | tokens | " + " | ".join(f"`{m}`" for m in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for spec in supported_specs():
        holder = types.SimpleNamespace(**dict.fromkeys(spec.transformer_attrs))
        defaults = spec.defaults(holder)
        supported = supported_presets(spec)
        text = {"none": "", "first": ", text first", "last": ", text last"}[spec.text_pos]
        kind = ("video" if spec.is_video else "image") + text
        cells = []
        for m in methods:
            if m not in supported:
                cells.append("refused (image)")
            elif m == "sparse-vdit":
                cells.append("calibrated plan")
            elif m in defaults:
                cells.append(", ".join(_cell(k, v) for k, v in defaults[m].items()))
            else:
                cells.append("generic")
        lines.append(f"| {spec.name} | {', '.join(spec.pipeline_classes)} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
