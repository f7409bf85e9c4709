"""Test and benchmark support: tiny offline pipelines of every family and the quality metrics.

Not part of the acceleration API: nothing in ``accel``'s hot path imports it. The tiny builders live with their
family's facts in ``accel.pipelines`` (one file per family); this module only names them.
"""

from __future__ import annotations


def tiny_pipeline(family: str, **kwargs):
    """The tiny randomly initialised pipeline of a supported family (``"wan"``), built offline."""
    from accel.pipelines import supported_specs

    for spec in supported_specs():
        if spec.name == family and spec.tiny_pipeline is not None:
            return spec.tiny_pipeline(**kwargs)
    raise ValueError(f"no tiny pipeline for family {family!r}")


def __getattr__(name: str):
    # The Wan builders by name (tiny_wan_pipeline, tiny_wan_transformer, ...), loaded on first use.
    if name.startswith("tiny_wan") or name == "tiny_tokenizer":
        from accel.pipelines import wan

        return getattr(wan, name)
    raise AttributeError(name)
