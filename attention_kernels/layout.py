"""Where tokens sit in a DiT self-attention sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT_POSITIONS = ("none", "first", "last")


def text_dense(dense: torch.Tensor, layout: TokenLayout, block_size: int) -> torch.Tensor:
    """Set the rows and columns of blocks holding text to True in a block mask ``[..., QB, KB]`` (in place)."""
    text = layout.text_blocks(block_size)
    if len(text):
        dense[..., text.start : text.stop, :] = True
        dense[..., :, text.start : text.stop] = True
    return dense


@dataclass(frozen=True)
class TokenLayout:
    """The self-attention sequence of a video/image DiT.

    Video tokens are frame-major, ``(t, h, w)`` with ``w`` fastest (the order diffusers' patch embeddings give).
    ``text_len`` text tokens sit before (``"first"``) or after (``"last"``) the video tokens, or there are none.
    An image model is a video with one frame.
    """

    frames: int
    height: int
    width: int
    text_len: int = 0
    text_pos: str = "none"

    def __post_init__(self):
        if min(self.frames, self.height, self.width) < 1:
            raise ValueError(f"TokenLayout needs positive frames/height/width, got {self}")
        if self.text_pos not in TEXT_POSITIONS:
            raise ValueError(f"text_pos must be one of {TEXT_POSITIONS}, got {self.text_pos!r}")
        if (self.text_pos == "none") != (self.text_len == 0):
            raise ValueError("text_len must be 0 exactly when text_pos is 'none'")
        if self.text_len < 0:
            raise ValueError("text_len must be >= 0")

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_tokens(self) -> int:
        return self.video_tokens + self.text_len

    @property
    def video_start(self) -> int:
        return self.text_len if self.text_pos == "first" else 0

    @property
    def video_slice(self) -> slice:
        return slice(self.video_start, self.video_start + self.video_tokens)

    @property
    def text_slice(self) -> slice:
        if self.text_pos == "first":
            return slice(0, self.text_len)
        return slice(self.video_tokens, self.video_tokens + self.text_len)

    def text_blocks(self, block_size: int) -> range:
        """Blocks of ``block_size`` tokens holding any text token (empty without text)."""
        if not self.text_len:
            return range(0)
        ts = self.text_slice
        return range(ts.start // block_size, (ts.stop - 1) // block_size + 1)

    def video_only(self) -> TokenLayout:
        return TokenLayout(self.frames, self.height, self.width)
