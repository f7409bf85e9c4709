"""Joint attention with text in the core: calls with fewer text tokens than the forward's layout (Mochi) and
padded text keys (HunyuanVideo / Qwen-Image key masks) against the masked dense original.

The oracle method below is dense attention over whatever tokens the core hands it, so the core's compaction and
the padded-row path must reproduce ``F.scaled_dot_product_attention`` with the key mask for every row.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from accel.attention_kernels import TokenLayout

from accel.core import attend, call_layout, key_mask
from accel.state import LayerKey, LayerPlan, Stats, StepInfo


class DenseOracle:
    """Dense attention on the tokens it gets; records the layouts and call keys it saw."""

    def __init__(self):
        self.seen = []

    def attend(self, q, k, v, step, layer, scale, stats):
        self.seen.append((step.layout, step.call, q.shape[0]))
        stats.add("sparse")
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=scale).transpose(1, 2)


def masked_reference(q, k, v, valid):
    mask = valid[:, None, None, :]  # [B, 1, 1, S]
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("text_pos", ["first", "last"])
@pytest.mark.parametrize("same_padding", [True, False])
def test_padded_text_keys_match_the_masked_original(text_pos, same_padding):
    torch.manual_seed(0)
    layout = TokenLayout(2, 3, 4, text_len=6, text_pos=text_pos)  # 24 video + 6 text
    B, S, H, D = 2, layout.num_tokens, 2, 8
    q, k, v = (torch.randn(B, S, H, D, dtype=torch.float64) for _ in range(3))
    valid = torch.ones(B, S, dtype=torch.bool)
    ts = layout.text_slice
    real_text = [4, 4] if same_padding else [4, 2]
    for b, n in enumerate(real_text):
        valid[b, ts.start + n : ts.stop] = False
    method, stats = DenseOracle(), Stats()
    plan = LayerPlan(LayerKey("transformer", 0), method, stats)
    out = attend(q, k, v, StepInfo(0, 4, "cond_uncond", layout), plan, key_valid=valid)
    torch.testing.assert_close(out, masked_reference(q, k, v, valid), rtol=0, atol=1e-12)
    groups = 1 if same_padding else 2
    assert stats.counts["sparse"] == groups
    assert [(lay.text_len, call, b) for lay, call, b in method.seen] == (
        [(4, (0, 0), 2)] if same_padding else [(4, (0, 0), 1), (2, (0, 1), 1)]
    )


def test_a_call_with_fewer_text_tokens_takes_the_layout_of_its_length():
    layout = TokenLayout(2, 2, 4, text_len=8, text_pos="last")
    assert call_layout(layout, 16 + 8) == layout
    assert call_layout(layout, 16 + 3) == dataclasses.replace(layout, text_len=3)
    assert call_layout(layout, 16) == layout.video_only()
    assert call_layout(layout, 15) is None and call_layout(layout, 25) is None
    assert call_layout(TokenLayout(2, 2, 4), 17) is None
    method, stats = DenseOracle(), Stats()
    plan = LayerPlan(LayerKey("transformer", 0), method, stats)
    q = torch.randn(1, 19, 1, 8)
    step = StepInfo(0, 4, "cond", layout)
    attend(q, q, q, step, plan)
    attend(q[:, :17], q[:, :17], q[:, :17], step, plan)
    # Mochi's processor: one call per batch item in one forward of the layer -> separate call ordinals
    assert [(lay.text_len, call) for lay, call, _ in method.seen] == [(3, (0,)), (1, (1,))]


def test_key_mask_reads_only_masks_that_mark_keys():
    B, S = 2, 5
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(key_mask(valid[:, None, None, :], B, S), valid)
    assert torch.equal(key_mask(valid[:, None, :], B, S), valid)
    assert torch.equal(key_mask(valid, B, S), valid)
    additive = torch.zeros(B, 1, 1, S).masked_fill(~valid[:, None, None, :], float("-inf"))
    assert torch.equal(key_mask(additive, B, S), valid)
    assert torch.equal(key_mask(additive.clamp(min=-1e9), B, S), valid)
    assert key_mask(torch.ones(B, 1, S, S, dtype=torch.bool).tril(), B, S) is None  # per-query mask
    assert key_mask(torch.ones(B, 2, 1, S, dtype=torch.bool), B, S) is None  # per-head mask
    assert key_mask(torch.full((B, 1, 1, S), 0.5), B, S) is None  # a bias, not a mask
    assert key_mask(valid, 3, S) is None and key_mask(valid, B, S + 1) is None


def test_key_mask_reads_outer_product_masks_of_one_valid_vector():
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    outer = (valid[:, :, None] & valid[:, None, :])[:, None]  # [B, 1, S, S], HunyuanVideo 1.5's mask
    assert torch.equal(key_mask(outer, 2, 5), valid)
    broken = outer.clone()
    broken[0, 0, 0, 2] = True  # a real query attends a padded key
    assert key_mask(broken, 2, 5) is None
    partial = outer.clone()
    partial[0, 0, 1, 3] = False  # one real pair missing
    assert key_mask(partial, 2, 5) is None
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    assert key_mask(causal, 1, 5) is None
    assert key_mask(outer.float(), 2, 5) is None  # additive full masks: not read
