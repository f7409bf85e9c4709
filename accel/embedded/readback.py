"""Prompt following, read back from rendered frames by simple image analysis (no learned model).

For a video ``[F, H, W, 3]`` in ``[0, 1]`` (what the CLI and ``output_type="np"`` give):

- background: the median colour of the 2-pixel border over all frames;
- foreground: pixels farther than ``FG_DISTANCE`` from it (RGB distance); objects: its 4-connected components of at
  least ``MIN_AREA`` pixels;
- colour: the mean foreground colour, nearest of the grammar's object colours; background likewise;
- count: the median number of objects per frame;
- shape: per object, the pixels in the top half of its bounding box against the bottom half (an upward triangle
  about 1:3, a circle or square 1:1), then how many of the box's four corner pixels are foreground (a square's
  all, a circle's none); medians over objects and frames;
- motion: read only from a coherent track (the read count of objects in at least 80% of the frames, and the
  foreground centroid never moving more than ``MAX_STEP`` pixels between frames): objects that scatter or jump
  between cells have no motion. Then two objects whose distance grows or shrinks by more than their common drift
  are moving apart/together; else a vertical path much longer than the net vertical move, with the centroid within
  one cell horizontally, is bouncing; else the larger of the net horizontal and vertical moves of the centroid
  (first three frames against last three) gives the direction.

:func:`score` compares what it reads with what each prompt says (:func:`accel.embedded.grammar.parse_prompt`) and
returns per-attribute accuracies. On the procedural clips themselves it scores 100% (tests/embedded).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

from .grammar import BACKGROUNDS, CELL, COLOURS, Scene, parse_prompt, sample_scene

FG_DISTANCE = 0.3
MIN_AREA = 12
MAX_STEP = 3.5 * CELL  # the grammar's fastest object (a quick bounce) moves 3 cells between frames
TRACKED = 0.8  # share of frames that must show the read number of objects
ATTRIBUTES = ("colour", "shape", "count", "motion", "background")


@dataclass(frozen=True)
class Reading:
    colour: str | None
    shape: str | None
    count: int
    motion: str | None
    background: str


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean ``[H, W]`` mask with at least MIN_AREA pixels, as ``[n, 2]`` (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) >= MIN_AREA:
            out.append(np.array(pixels))
    return out


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    return min(palette, key=lambda k: float(np.sum((np.array(palette[k]) - rgb) ** 2)))


def _shape_features(pixels: np.ndarray) -> tuple[float, float]:
    """(top-half / bottom-half pixel ratio, share of the bounding box's corners covered) of one object's
    ``[n, 2]`` (y, x) pixels."""
    (y0, x0), (y1, x1) = pixels.min(0), pixels.max(0)
    mid = (y0 + y1) / 2
    top, bottom = int((pixels[:, 0] < mid).sum()), int((pixels[:, 0] > mid).sum())
    have = {(int(y), int(x)) for y, x in pixels}
    corners = sum((y, x) in have for y in (y0, y1) for x in (x0, x1)) / 4
    return top / max(bottom, 1), corners


def read_video(frames: np.ndarray) -> Reading:
    """What the frames ``[F, H, W, 3]`` (float in ``[0, 1]``) show."""
    frames = np.asarray(frames, dtype=np.float32)
    border = np.concatenate(
        [frames[:, :2].reshape(-1, 3), frames[:, -2:].reshape(-1, 3), frames[:, :, :2].reshape(-1, 3),
         frames[:, :, -2:].reshape(-1, 3)]
    )  # fmt: skip
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(frames - bg, axis=-1)
    fg = dist > FG_DISTANCE
    background = _nearest(bg, BACKGROUNDS)
    if fg.sum() < MIN_AREA:
        return Reading(None, None, 0, None, background)
    core = dist > max(FG_DISTANCE, 0.6 * float(np.percentile(dist[fg], 90)))  # object interiors, not edges
    colour = _nearest(frames[core].mean(0), COLOURS)

    per_frame = [_components(m) for m in fg]
    counts = [len(c) for c in per_frame]
    count = int(np.median(counts))
    features = np.array([_shape_features(p) for comps in per_frame for p in comps]).reshape(-1, 2)
    shape = None
    if len(features):
        top_bottom, corners = np.median(features, axis=0)
        shape = "triangle" if top_bottom < 0.6 else "square" if corners >= 0.5 else "circle"
    return Reading(colour, shape, count, _motion(fg, per_frame, count), background)


def _motion(fg: np.ndarray, per_frame: list[list[np.ndarray]], count: int) -> str | None:
    valid = [i for i in range(len(fg)) if fg[i].sum() >= MIN_AREA]
    if len(valid) < 4 or count < 1 or sum(len(c) == count for c in per_frame) < TRACKED * len(fg):
        return None
    ys, xs = zip(*[np.nonzero(fg[i]) for i in valid], strict=True)
    cy = np.array([y.mean() for y in ys])
    cx = np.array([x.mean() for x in xs])
    if np.hypot(np.diff(cx), np.diff(cy)).max(initial=0.0) > MAX_STEP:
        return None
    dx = cx[-3:].mean() - cx[:3].mean()
    dy = cy[-3:].mean() - cy[:3].mean()
    if count == 2:
        two = [i for i, c in enumerate(per_frame) if len(c) == 2]
        if len(two) >= 4:
            sep = [np.linalg.norm(per_frame[i][0].mean(0) - per_frame[i][1].mean(0)) for i in two]
            change = np.mean(sep[-2:]) - np.mean(sep[:2])
            if abs(change) > 6 and abs(change) > max(abs(dx), abs(dy)):
                return "moving apart" if change > 0 else "moving together"
    path = np.abs(np.diff(cy)).sum()
    if np.ptp(cy) > 5 and path > 2 * abs(dy) + 4 and abs(dx) < np.ptp(cy) and np.ptp(cx) <= CELL:
        return "bouncing"
    if max(abs(dx), abs(dy)) < 3:
        return "still"
    if abs(dx) >= abs(dy):
        return "moving right" if dx > 0 else "moving left"
    return "moving down" if dy > 0 else "moving up"


def matches(reading: Reading, scene: Scene) -> dict[str, bool]:
    return {
        "colour": reading.colour == scene.colour,
        "shape": reading.shape == scene.shape,
        "count": reading.count == scene.count,
        "motion": reading.motion == scene.motion,
        "background": reading.background == scene.background,
    }


def score(prompts: list[str], videos: list[np.ndarray]) -> dict[str, float]:
    """Accuracy per attribute (and ``all``: every attribute right) over prompts the grammar parses."""
    hits = {a: 0 for a in (*ATTRIBUTES, "all")}
    n = 0
    for prompt, video in zip(prompts, videos, strict=True):
        scene = parse_prompt(prompt)
        if scene is None:
            continue
        m = matches(read_video(video), scene)
        n += 1
        for a, ok in m.items():
            hits[a] += ok
        hits["all"] += all(m.values())
    return {a: hits[a] / n if n else float("nan") for a in hits} | {"prompts": n}


def held_out_prompts(n: int = 24, seed: int = 2026) -> list[str]:
    """A fixed list of prompts from the colour-shape-motion combinations the model never saw in training."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        p = sample_scene(rng, held_out=True).prompt
        if p not in out:
            out.append(p)
    return out
