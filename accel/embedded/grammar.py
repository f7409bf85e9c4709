"""The prompt grammar of the embedded model and the procedural clips it was trained on.

A prompt names one or two objects of one colour and shape, how they move, optionally how fast, and optionally the
background, e.g. ``"a red circle moving right on a blue background"``, ``"a yellow square bouncing quickly"``,
``"two green triangles moving apart"``. :func:`render_clip` draws the clip a prompt describes (seeded: the start
position and the bounce phase are random), :func:`parse_prompt` reads a prompt back into a :class:`Scene`.

Clip tensors are ``[3, F, H, W]`` float32 in ``[-1, 1]`` (RGB, frames, rows, columns), the layout the pipeline's
video processor decodes.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

# Object colours (RGB in [0, 1]); the read-back metric classifies a rendered object by the nearest of these.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.62, 0.20, 0.85),
}
# Backgrounds: darker or greyer than the object colours of the same name, so every pair stays distinguishable.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.04, 0.04, 0.04),
    "gray": (0.42, 0.42, 0.42),
    "blue": (0.08, 0.12, 0.40),
    "green": (0.08, 0.32, 0.12),
    "white": (0.92, 0.92, 0.92),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS_ONE = ("moving left", "moving right", "moving up", "moving down", "bouncing")
MOTIONS_TWO = (*MOTIONS_ONE, "moving apart", "moving together")
MOTIONS = MOTIONS_TWO
COUNTS = {"a": 1, "two": 2}

CELL = 8  # pixels per token side: objects are one token, drawn inside their cell, moving cell by cell
# Speeds in cells per latent frame (two video frames; the first frame is a latent frame of its own).
SPEEDS = {"slowly": 0.25, "": 0.5, "quickly": 1.0}

VOCABULARY = sorted(
    {w for phrase in (*COLOURS, *BACKGROUNDS, *SHAPES, *MOTIONS, *SPEEDS, *COUNTS) for w in phrase.split()}
    | {s + "s" for s in SHAPES}
    | {"on", "background"}
)


@dataclass(frozen=True)
class Scene:
    """What a prompt says: ``count`` objects of ``colour`` and ``shape`` doing ``motion`` at ``speed``."""

    colour: str
    shape: str
    motion: str
    count: int = 1
    speed: str = ""  # "", "slowly", "quickly"
    background: str = "black"

    @property
    def prompt(self) -> str:
        count = "a" if self.count == 1 else "two"
        shape = self.shape if self.count == 1 else self.shape + "s"
        words = [count, self.colour, shape, self.motion]
        if self.speed:
            words.append(self.speed)
        if self.background != "black":
            words += ["on", "a", self.background, "background"]
        return " ".join(words)

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.motion


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """Colour-shape-motion combinations never seen in training (about one in eight): the metric's prompts come
    from these, so the score measures composition, not recall."""
    c, s, m = list(COLOURS).index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (3 * c + 5 * s + m) % 8 == 5


def sample_scene(rng: random.Random, *, held_out: bool = False) -> Scene:
    """A random scene from the training combinations (``held_out=True``: from the held-out ones)."""
    while True:
        count = rng.choice((1, 1, 2))
        motion = rng.choice(MOTIONS_ONE if count == 1 else MOTIONS_TWO)
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if is_held_out(colour, shape, motion) != held_out:
            continue
        background = rng.choice(("black", "black", *[b for b in BACKGROUNDS if b not in ("black", colour)]))
        return Scene(colour, shape, motion, count, rng.choice(list(SPEEDS)), background)


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt describes, or None when it names no known colour, shape and motion. Case, punctuation
    and words outside the grammar are ignored; missing parts take defaults (one object, normal speed, black
    background)."""
    words = re.sub(r"[^a-z]+", " ", prompt.lower()).split()
    text = " ".join(words)
    shape = next((s for s in SHAPES if s in words or s + "s" in words), None)
    motion = next((m for m in MOTIONS if m in text), None)
    if motion is None and "bouncing" in words:
        motion = "bouncing"
    background = "black"
    if "background" in words:
        i = words.index("background")
        background = next((w for w in reversed(words[:i]) if w in BACKGROUNDS), "black")
        words = words[: max(0, i - 3)] + words[i + 1 :] if i >= 3 else words
    colour = next((w for w in words if w in COLOURS), None)
    if shape is None or motion is None or colour is None:
        return None
    count = 2 if "two" in words or shape + "s" in words else 1
    speed = next((w for w in ("slowly", "quickly") if w in words), "")
    return Scene(colour, shape, motion, count, speed, background)


# --------------------------------------------------------------------------------------------------- rendering
#
# Objects fill one token's cell (CELL x CELL pixels) and move from cell to cell between latent frames: the
# transformer has no absolute positions (Wan's RoPE is relative), so a scene it can learn quickly is one where each
# token either holds an object or background, and the motion is a fixed offset between neighbouring latent frames.


def latent_frame(frame: int) -> int:
    """The latent frame a video frame is packed into (Wan's grouping: frame 0 alone, then pairs)."""
    return (frame + 1) // 2


def _tracks(scene: Scene, latents: int, cells: int, rng: random.Random) -> list[list[tuple[int, int]]]:
    """Per object, its (column, row) cell in every latent frame."""
    v = SPEEDS[scene.speed]
    j = range(latents)
    last = cells - 1
    if scene.motion == "bouncing":
        period = 4 / v  # latent frames per bounce
        phase = rng.uniform(0, period)
        height = min(3, last)
        floor = rng.randint(height, last)
        rise = [round(height * abs(math.sin(math.pi * (k + phase) / period))) for k in j]
        cols = [rng.randint(0, last)] if scene.count == 1 else rng.sample(range(cells), 2)
        return [[(c, floor - r) for r in rise] for c in cols]
    if scene.motion in ("moving apart", "moving together"):
        travel = min(int(v * (latents - 1)), (last - 2) // 2)
        centre = rng.randint(1 + travel, last - 1 - travel)
        row = rng.randint(0, last)
        d = [1 + min(int(v * k), travel) for k in j]
        if scene.motion == "moving together":
            d = [1 + travel - (e - 1) for e in d]
        return [[(centre - e, row) for e in d], [(centre + e, row) for e in d]]
    travel = min(int(v * (latents - 1)), last)
    start = rng.randint(0, last - travel)
    along = [start + min(int(v * k), travel) for k in j]
    if scene.motion in ("moving left", "moving up"):
        along = [last - a for a in along]
    if scene.count == 1:
        across = [rng.randint(0, last)]
    else:
        a = rng.randint(0, last - 2)
        across = [a, rng.randint(a + 2, last)]
    horizontal = scene.motion in ("moving left", "moving right")
    return [[(a, c) if horizontal else (c, a) for a in along] for c in across]


def _cell_mask(shape: str) -> torch.Tensor:
    """Coverage of ``shape`` in one ``CELL x CELL`` cell (4x4 supersampled, anti-aliased), ``[CELL, CELL]``."""
    ss = 4
    c = (torch.arange(CELL * ss, dtype=torch.float32) + 0.5) / ss - CELL / 2
    x, y = c.view(1, -1), c.view(-1, 1)
    r = CELL / 2 - 0.6
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        inside = (x.abs() <= r - 0.4) & (y.abs() <= r - 0.4)
    else:  # upward triangle: apex at the top, full width at the bottom
        rel = (y + r) / (2 * r)
        inside = (rel >= 0) & (rel <= 1) & (x.abs() <= rel * r)
    return torch.nn.functional.avg_pool2d(inside.float()[None, None], ss)[0, 0]


def clip_tracks(scene: Scene, frames: int, size: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """The objects' tracks in ``render_clip(scene, frames, size, seed)``: per object, its (column, row) cell in each
    of the clip's ``latent_frame(frames - 1) + 1`` latent frames."""
    return _tracks(scene, latent_frame(frames - 1) + 1, size // CELL, random.Random(seed))


def render_clip(scene: Scene, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """The clip of ``scene``: ``[3, frames, size, size]`` in ``[-1, 1]`` (``size`` a multiple of CELL)."""
    if size % CELL:
        raise ValueError(f"render_clip: size must be a multiple of {CELL}, got {size}")
    cover = torch.zeros(frames, size, size)
    mask = _cell_mask(scene.shape)
    for track in clip_tracks(scene, frames, size, seed):
        for f in range(frames):
            cx, cy = track[latent_frame(f)]
            cell = cover[f, cy * CELL : (cy + 1) * CELL, cx * CELL : (cx + 1) * CELL]
            torch.maximum(cell, mask, out=cell)
    bg = torch.tensor(BACKGROUNDS[scene.background]).view(3, 1, 1, 1)
    fg = torch.tensor(COLOURS[scene.colour]).view(3, 1, 1, 1)
    clip = bg + (fg - bg) * cover.unsqueeze(0)
    return clip * 2 - 1
