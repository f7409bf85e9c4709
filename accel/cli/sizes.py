"""Request sizes: the latent token grid of a request, its text, and whether an attention config makes no sparse call at
it."""

from __future__ import annotations


def token_grid(spec, is_video: bool, frames: int | None, height: int | None, width: int | None):
    """The self-attention ``TokenLayout`` of a request in pixels and frames (from the size rules: a ModelSpec or
    an embedded model's ``SizeRules``, i.e. ``ModelSource.size_rules``), or None when it cannot be known before
    the model runs (sizes left to the pipeline, text tokens in self-attention)."""
    if spec is None or height is None or width is None or spec.text_pos != "none":
        return None
    if is_video and frames is None:
        return None
    return spec.token_grid(frames if is_video else 1, height, width)


def grid_text(layout, steps: int | None) -> str:
    return f"{layout.frames}x{layout.height}x{layout.width} latent tokens, {steps} steps"


def runs_all_dense(attention, steps: int | None, layout, num_layers: int | None) -> bool:
    """True when a resolved attention config (or None) makes no sparse call at all for this request: the methods'
    own rules (:func:`accel.api.never_sparse`)."""
    from accel.api import never_sparse

    return never_sparse(attention, steps, layout, num_layers)
