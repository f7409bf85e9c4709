"""Output targets in-process: format from the path, numbering, and no half-written file when a write fails."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from accel.cli import output as cli_output
from accel.cli.output import OutputError, check_writable, numbered, parse_output, write_output

from .conftest import listing


def _frames(n=5, h=32, w=48):
    return np.random.default_rng(0).random((n, h, w, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "spec,kind",
    [("a.mp4", "mp4"), ("a.GIF", "gif"), ("a.webp", "webp"), ("d/", "frames_dir"), ("f_%04d.png", "frames_pattern")],
)
def test_format_from_the_path(spec, kind):
    assert parse_output(spec, is_video=True, frames=9).kind == kind


def test_image_rules():
    assert parse_output("a.png", is_video=False, frames=None).kind == "image"
    assert parse_output("a.jpg", is_video=True, frames=1).kind == "image"
    with pytest.raises(OutputError, match="image pipeline"):
        parse_output("a.mp4", is_video=False, frames=None)
    with pytest.raises(OutputError, match="no extension"):
        parse_output("video", is_video=True, frames=9)
    with pytest.raises(OutputError, match="exactly one"):
        parse_output("f_%d_%d.png", is_video=True, frames=9)


def test_numbering_for_several_prompts():
    t = parse_output("out/clip.mp4", is_video=True, frames=9)
    assert numbered(t, 0, 1).path == Path("out/clip.mp4")
    assert [numbered(t, i, 3).path.name for i in range(3)] == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    p = parse_output("f_%04d.png", is_video=True, frames=9)
    assert numbered(p, 7, 2).path.name == "f_007_%04d.png"
    d = parse_output("frames/", is_video=True, frames=9)
    assert numbered(d, 1, 2).path == Path("frames/001")


@pytest.mark.parametrize("name", ["a.mp4", "a.gif", "a.webp"])
def test_video_files_round_trip(tmp_path, name):
    written = write_output(parse_output(str(tmp_path / name), is_video=True, frames=5), _frames(), fps=10)
    assert written == [tmp_path / name]
    if name.endswith(".webp"):  # imageio's readers return only the first frame of an animated WebP
        from PIL import Image, ImageSequence

        with Image.open(tmp_path / name) as im:
            shapes = [np.asarray(f.convert("RGB")).shape for f in ImageSequence.Iterator(im)]
        assert shapes == [(32, 48, 3)] * 5
    else:
        assert iio.imread(tmp_path / name, index=None).shape[:3] == (5, 32, 48)
    assert listing(tmp_path) == [name]


def test_frames_folder_appears_whole(tmp_path):
    frames = cli_output.to_uint8(_frames())
    target = numbered(parse_output(str(tmp_path / "frames") + "/", is_video=True, frames=5), 0, 2)
    check_writable(target)  # frames/ does not exist yet: it is created, its parent must exist
    write_output(target, frames, fps=10)
    names = [f"frames/000/frame_{i:04d}.png" for i in range(5)]
    assert listing(tmp_path) == ["frames", "frames/000", *names]
    assert np.array_equal(np.stack([iio.imread(tmp_path / n) for n in names]), frames)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(kind, path, frames, fps):
        Path(path).write_bytes(b"half a video")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(cli_output, "_write_file", broken)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_output(parse_output(str(tmp_path / "a.mp4"), is_video=True, frames=5), _frames(), fps=10)
    assert listing(tmp_path) == []


def test_failed_frame_write_leaves_nothing(tmp_path, monkeypatch):
    from PIL import Image

    real_save, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    (tmp_path / "frames").mkdir()
    for spec in (str(tmp_path / "frames") + "/", str(tmp_path / "frames" / "f_%02d.png"), str(tmp_path / "new") + "/"):
        calls.clear()
        with pytest.raises(OSError, match="disk full"):
            write_output(parse_output(spec, is_video=True, frames=5), _frames(), fps=10)
        assert listing(tmp_path) == ["frames"], spec


def test_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_writable(parse_output(str(tmp_path / "file" / "a.mp4"), is_video=True, frames=5))
    (tmp_path / "b.mp4").mkdir()
    with pytest.raises(OutputError, match="a folder of that name exists"):
        check_writable(cli_output.OutputTarget(tmp_path / "b.mp4", "mp4"))


def test_failed_write_of_numbered_frames_removes_the_folder_it_made(tmp_path, monkeypatch):
    """Several prompts write frames/000/, frames/001/: a failure in the first leaves no empty frames/ behind."""
    from PIL import Image

    def save(self, fp, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the frames

    monkeypatch.setattr(Image.Image, "save", save)
    target = numbered(parse_output(str(tmp_path / "frames") + "/", is_video=True, frames=5), 0, 2)
    with pytest.raises(KeyboardInterrupt):
        write_output(target, _frames(), fps=10)
    assert listing(tmp_path) == []
    assert cli_output._PARTIAL == set()
