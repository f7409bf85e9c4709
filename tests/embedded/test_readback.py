"""The prompt-following metric, checked on the procedural clips themselves (their truth is known)."""

from __future__ import annotations

import numpy as np
import pytest

from accel.embedded.grammar import Scene, parse_prompt, render_clip
from accel.embedded.readback import held_out_prompts, read_video, score


def frames_of(scene: Scene, frames: int = 33, size: int = 128, seed: int = 0) -> np.ndarray:
    return ((render_clip(scene, frames, size, seed=seed).permute(1, 2, 3, 0).numpy() + 1) / 2).astype(np.float32)


def test_scores_every_attribute_right_on_the_true_clips():
    prompts = held_out_prompts(24)
    result = score(prompts, [frames_of(parse_prompt(p), seed=i) for i, p in enumerate(prompts)])
    assert result["prompts"] == 24
    assert all(result[a] == 1.0 for a in ("colour", "shape", "count", "motion", "background", "all")), result


@pytest.mark.parametrize(
    "scene",
    [
        Scene("red", "circle", "moving right"),
        Scene("blue", "square", "moving up", background="white"),
        Scene("yellow", "triangle", "moving left", count=2, speed="quickly"),
        Scene("white", "circle", "moving down", background="gray"),
        Scene("purple", "square", "bouncing", background="green"),
        Scene("green", "triangle", "moving apart", count=2),
        Scene("red", "square", "moving together", count=2, background="blue"),
    ],
)
def test_reads_each_attribute(scene):
    r = read_video(frames_of(scene, seed=5))
    assert (r.colour, r.shape, r.count, r.motion, r.background) == (
        scene.colour, scene.shape, scene.count, scene.motion, scene.background
    )  # fmt: skip


def test_wrong_videos_score_wrong():
    right = frames_of(Scene("red", "circle", "moving right"))
    assert score(["a blue circle moving left"], [right])["colour"] == 0.0
    assert score(["a blue circle moving left"], [right])["motion"] == 0.0
    assert score(["a red circle moving right"], [right])["all"] == 1.0
    noise = np.random.default_rng(0).random((33, 128, 128, 3), dtype=np.float32)
    assert score(["a red circle moving right"], [noise])["all"] == 0.0
    blank = np.zeros((33, 128, 128, 3), np.float32)
    reading = read_video(blank)
    assert reading.colour is None and reading.motion is None and reading.count == 0


def test_objects_that_jump_or_scatter_have_no_motion():
    """Motion is read only from one coherent track: an object that jumps between cells (what a weak model draws)
    must not read as bouncing or as any direction."""
    right = frames_of(Scene("red", "circle", "moving right", speed="quickly"), seed=1)
    order = np.random.default_rng(0).permutation(17)  # latent frames in random order: the object jumps about
    jumping = np.concatenate([right[:1]] + [right[1 + 2 * (k - 1) : 3 + 2 * (k - 1)] for k in order if k > 0])
    assert len(jumping) == 33 and read_video(jumping).motion is None
    first = np.argwhere(np.linalg.norm(right[0] - right[0, 0, 0], axis=-1) > 0.3).min(0)  # the object's corner
    y, x = (first // 8) * 8
    y2, x2 = (y + 64) % 128, (x + 64) % 128  # the cell half a canvas away
    scattered = right.copy()
    scattered[::3, y2 : y2 + 8, x2 : x2 + 8] = right[0, y : y + 8, x : x + 8]
    reading = read_video(scattered)  # a second red circle in every third frame
    assert reading.colour == "red" and reading.motion is None
    assert read_video(right).motion == "moving right"


def test_held_out_prompts_are_fixed_and_held_out():
    from accel.embedded.grammar import is_held_out

    a, b = held_out_prompts(24), held_out_prompts(24)
    assert a == b and len(set(a)) == 24
    assert all(is_held_out(*parse_prompt(p).triple) for p in a)
