"""benchmarks/embedded_denoiser.py's ``--sizes``: what it accepts, and a clear refusal (before any model loads) of
what it does not."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.embedded_denoiser import SIZES, canvas_and_frames, main


def test_sizes_parse():
    assert canvas_and_frames("64x17") == (64, 17)
    assert canvas_and_frames("128x33") == (128, 33)
    assert all(canvas_and_frames(f"{s}x{f}") == (s, f) for s, f in SIZES)


@pytest.mark.parametrize("bad", ["64", "64x17x3", "ax17", "60x17", "64x16", "0x17"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 64x17"):
        canvas_and_frames(bad)


def test_bad_size_exits_before_loading(monkeypatch, capsys):
    import accel.embedded

    monkeypatch.setattr(accel.embedded, "load_shapes_wan", lambda **kw: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exit_:
        main(["--sizes", "64x16"])
    assert exit_.value.code == 2 and "frames 2k+1" in capsys.readouterr().err
