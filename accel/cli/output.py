"""Output targets of ``diffusion-fast``: format from the path, checks before rendering, atomic writes.

Formats: ``.mp4`` (H.264 through imageio-ffmpeg), ``.gif`` and ``.webp`` (animated, Pillow), ``.png`` / ``.jpg``
(one image: an image pipeline's output or a one-frame video), PNG frames into a folder (a path ending in ``/`` or an
existing folder: ``frame_0000.png`` ...) or after a printf pattern (``frames/f_%04d.png``).

Every file is written under a hidden temporary name in the target folder and renamed into place when complete, so a
failure or Ctrl-C never leaves a half-written output; the temporaries are removed on error, and
:func:`remove_partials` removes those still in flight when the process must exit at once (a second Ctrl-C).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accel.errors import AccelError

VIDEO_EXTS = (".mp4", ".gif", ".webp")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_PATTERN = re.compile(r"%0?\d*d")


class OutputError(AccelError):
    """An output path that cannot be used; the message says what to fix (a usage error: exit status 2)."""

    usage = True


# Temporary files and staging folders being written right now (removed by remove_partials on a hard exit).
_PARTIAL: set[Path] = set()


def remove_partials() -> None:
    """Remove every temporary file or staging folder still being written (for an exit that skips ``finally``)."""
    for path in list(_PARTIAL):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        _PARTIAL.discard(path)


@dataclass(frozen=True)
class OutputTarget:
    path: Path  # the file, the folder, or the pattern (a path containing %d)
    kind: str  # "mp4" | "gif" | "webp" | "image" | "frames_dir" | "frames_pattern"
    create_parent: bool = False  # frames/000/ of several prompts: frames/ is created when missing

    @property
    def folder(self) -> Path:
        """The folder that must exist and be writable."""
        if self.create_parent and not self.path.parent.exists():
            return self.path.parent.parent
        return self.path.parent

    def __str__(self) -> str:
        return str(self.path) + ("/" if self.kind == "frames_dir" else "")


def parse_output(spec: str, *, is_video: bool, frames: int | None) -> OutputTarget:
    """The output target for ``-o spec``; raises OutputError for an unknown or unsuitable format."""
    if not spec:
        raise OutputError("empty output path")
    path = Path(spec).expanduser()
    if spec.endswith(("/", os.sep)) or path.is_dir():
        return OutputTarget(path, "frames_dir")
    ext = path.suffix.lower()
    if _PATTERN.search(path.name):
        if ext not in IMAGE_EXTS:
            raise OutputError(f"frame pattern {spec!r} must end in .png or .jpg (e.g. frames/f_%04d.png)")
        if len(_PATTERN.findall(path.name)) != 1:
            raise OutputError(f"frame pattern {spec!r} must contain exactly one %d-style field")
        return OutputTarget(path, "frames_pattern")
    if ext in (".mp4", ".gif", ".webp"):
        if not is_video:
            raise OutputError(
                f"{spec!r}: this is an image pipeline, it makes one image; write it to a .png or .jpg file"
            )
        if ext == ".webp":
            from PIL import features

            if not features.check("webp"):
                raise OutputError("this Pillow build has no WebP support; write .mp4 or .gif instead")
        return OutputTarget(path, ext[1:])
    if ext in IMAGE_EXTS:
        if is_video and frames is not None and frames > 1:
            raise OutputError(
                f"{spec!r} holds one image but the video has {frames} frames: write .mp4/.gif/.webp, PNG frames "
                f"to a folder ('{path.with_suffix('')}/') or a pattern ('{path.with_suffix('')}_%04d{ext}'), or "
                "render one frame with --frames 1"
            )
        return OutputTarget(path, "image")
    if not ext:
        raise OutputError(
            f"output {spec!r} has no extension: use .mp4, .gif, .webp, .png or .jpg, or end a folder name with "
            "'/' for PNG frames"
        )
    raise OutputError(
        f"unknown output extension {ext!r} in {spec!r}: use .mp4, .gif or .webp (video), .png or .jpg (an image "
        "or one frame), a folder ending in '/' or a pattern like frames_%04d.png (PNG frames)"
    )


def numbered(target: OutputTarget, index: int, count: int) -> OutputTarget:
    """The target for prompt ``index`` of ``count`` (several prompts): ``out_000.mp4``, ``frames/000/``,
    ``f_000_%04d.png``; the target itself for a single prompt."""
    if count <= 1:
        return target
    tag = f"{index:0{max(3, len(str(count - 1)))}d}"
    p = target.path
    if target.kind == "frames_dir":
        return OutputTarget(p / tag, "frames_dir", create_parent=True)
    if target.kind == "frames_pattern":
        m = _PATTERN.search(p.name)
        return OutputTarget(p.with_name(p.name[: m.start()] + f"{tag}_" + p.name[m.start() :]), "frames_pattern")
    return OutputTarget(p.with_name(f"{p.stem}_{tag}{p.suffix}"), target.kind)


def check_writable(target: OutputTarget) -> None:
    """Raise OutputError unless the target's folder exists and accepts a new file (checked by creating one)."""
    folder = target.folder
    if not folder.exists():
        raise OutputError(f"cannot write {target}: folder {str(folder)!r} does not exist (create it first)")
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {str(folder)!r} is not a folder")
    if target.kind != "frames_dir" and target.path.is_dir():
        raise OutputError(f"cannot write {target}: a folder of that name exists")
    if target.kind == "frames_dir" and target.path.exists() and not target.path.is_dir():
        raise OutputError(f"cannot write frames into {target}: a file of that name exists")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".diffusion-fast-probe-")
    except OSError as e:
        reason = e.strerror or str(e)
        raise OutputError(f"cannot write {target}: folder {str(folder)!r} is not writable ({reason})") from None
    os.close(fd)
    os.unlink(probe)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] (float) -> uint8 RGB, shape (F, H, W, 3)."""
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames


def _temp_name(path: Path) -> Path:
    # Keep the extension last: imageio picks the encoder from it.
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")


def _write_file(kind: str, path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    if kind == "mp4":
        import imageio.v2 as iio

        # libx264 + yuv420p plays everywhere; macro_block_size 2 keeps even sizes exact (Wan sizes are x16).
        writer = iio.get_writer(
            path,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            quality=8,
            pixelformat="yuv420p",
            macro_block_size=2,
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        return
    images = [Image.fromarray(f) for f in frames]
    duration = max(1, round(1000.0 / fps))
    if kind == "gif":
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    elif kind == "webp":
        images[0].save(
            path, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=90
        )
    elif kind == "image":
        _save_image(frames[0], path)
    else:
        raise ValueError(kind)


def _save_image(frame: np.ndarray, path: Path) -> None:
    """One frame as PNG, or JPEG (quality 95) for any other image extension."""
    from PIL import Image

    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(frame).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` to a hidden temporary name beside ``path``, then rename it into place; on any failure the
    temporary file is removed, so nothing half-written is left."""
    tmp = _temp_name(path)
    _PARTIAL.add(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _PARTIAL.discard(tmp)


def write_output(target: OutputTarget, frames: np.ndarray, fps: float) -> list[Path]:
    """Write ``frames`` (F, H, W, 3; uint8, or float in [0, 1]) to ``target``; returns the files written."""
    frames = to_uint8(frames)
    if target.kind in ("mp4", "gif", "webp", "image"):
        write_atomic(target.path, lambda tmp: _write_file(target.kind, tmp, frames, fps))
        return [target.path]
    return _write_frames(target, frames)


def _frame_names(target: OutputTarget, count: int) -> list[str]:
    if target.kind == "frames_dir":
        width = max(4, len(str(count - 1)))
        return [f"frame_{i:0{width}d}.png" for i in range(count)]
    name = target.path.name
    return [_PATTERN.sub(lambda m, i=i: m.group(0) % i, name) for i in range(count)]


def _write_frames(target: OutputTarget, frames: np.ndarray) -> list[Path]:
    created = None  # a folder made here for this write, removed again if the write fails
    if target.kind == "frames_dir":
        dest = target.path
        if target.create_parent and not dest.parent.exists():
            dest.parent.mkdir()  # several prompts: frames/ holds frames/000/, frames/001/, ...
            created = dest.parent
            _PARTIAL.add(created)
        staging_parent = dest.parent
    else:
        dest = target.path.parent
        staging_parent = dest
    names = _frame_names(target, len(frames))
    staging = staging_parent / f".{dest.name or 'frames'}.{secrets.token_hex(4)}.partial"
    staged = staging
    try:
        staging.mkdir()  # (not mkdtemp: its 0700 mode would stick to a folder renamed into place)
        _PARTIAL.add(staged)
        for name, frame in zip(names, frames, strict=True):
            _save_image(frame, staging / name)
        if target.kind == "frames_dir" and not dest.exists():
            os.replace(staging, dest)  # the whole folder appears at once
            staging = None
        else:
            dest.mkdir(exist_ok=True)
            for name in names:
                os.replace(staging / name, dest / name)
        created = None  # complete: the folder stays
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _PARTIAL.discard(staged)
        if created is not None:  # the write failed: the folder made for it goes too
            shutil.rmtree(created, ignore_errors=True)
        if target.create_parent:
            _PARTIAL.discard(dest.parent)
    return [dest / n for n in names]
