"""`diffusion-fast "prompt"` on the embedded tiny model: files that decode with the requested shape."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
from PIL import Image

from .conftest import TINY, listing, run_cli


def _assert_summary(proc, name: str, preset: str = "radial"):
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert f"saved {name}" in line
    assert "s/step" in line and f"preset {preset}" in line and "model tiny-random-wan" in line
    return line


def test_mp4(tmp_path):
    proc = run_cli("a red fox running through snow", "-o", "fox.mp4", *TINY, cwd=tmp_path)
    line = _assert_summary(proc, "fox.mp4")
    assert "9 frames 64x64 at 16 fps" in line
    assert "sparse" in line and "dense" in line and "attention calls" in line  # accel.stats counts
    assert "random weights" in proc.stderr and "noise" in proc.stderr  # the embedded model says what it is
    assert listing(tmp_path) == ["fox.mp4"]  # no temporary left next to it
    frames = iio.imread(tmp_path / "fox.mp4", index=None)
    assert frames.shape == (9, 64, 64, 3)
    assert frames.std() > 0  # the random model's noise, not a blank video
    meta = iio.immeta(tmp_path / "fox.mp4")
    assert meta["fps"] == 16 and meta["codec"] == "h264"


def test_gif_for_each_prompt_of_a_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red fox\n\n# a comment line\na cat on a sofa at night\n")
    proc = run_cli(
        "--prompts-file", "prompts.txt", "-o", "clip.gif", "--preset", "dense", "--fps", "8", *TINY, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[1/2] saved clip_000.gif") and lines[1].startswith("[2/2] saved clip_001.gif")
    assert "dense attention (no acceleration)" in lines[0]
    assert lines[2].startswith("done: 2 outputs")
    assert listing(tmp_path) == ["clip_000.gif", "clip_001.gif", "prompts.txt"]
    for name in ("clip_000.gif", "clip_001.gif"):
        frames = iio.imread(tmp_path / name, index=None)
        assert frames.shape[:3] == (9, 64, 64)
        with Image.open(tmp_path / name) as im:
            assert abs(im.info["duration"] - 125) <= 10  # 8 fps (GIF stores hundredths of a second)


def test_png_for_one_frame(tmp_path):
    proc = run_cli(
        "a red fox", "-o", "still.png", "--frames", "1", "--height", "64", "--width", "80", "--steps", "2", cwd=tmp_path
    )
    line = _assert_summary(proc, "still.png")
    assert "1 frame 80x64" in line
    with Image.open(tmp_path / "still.png") as im:
        assert im.format == "PNG" and im.size == (80, 64) and im.mode == "RGB"
    assert listing(tmp_path) == ["still.png"]


def test_png_frames_from_a_pattern(tmp_path):
    (tmp_path / "frames").mkdir()
    proc = run_cli("a red fox", "-o", "frames/f_%03d.png", *TINY, cwd=tmp_path)
    _assert_summary(proc, "frames/f_%03d.png (9 files)")
    names = [f"frames/f_{i:03d}.png" for i in range(9)]
    assert listing(tmp_path) == ["frames", *names]
    pngs = np.stack([iio.imread(tmp_path / n) for n in names])
    assert pngs.shape == (9, 64, 64, 3) and pngs.dtype == np.uint8
    assert len({p.tobytes() for p in pngs}) > 1  # frames of a video, not one image repeated
