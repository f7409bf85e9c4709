"""A mask that leaves real queries without keys never reaches the output: the method runs dense and says why."""

import pytest
import torch
from accel.attention_kernels import BlockMask, TokenLayout

from accel.config import RadialConfig, RettentionConfig
from accel.methods import build_method
from accel.state import LayerKey, Stats, StepInfo

LAYOUT = TokenLayout(4, 4, 4)  # 64 tokens, 4 blocks of 16
STEP = StepInfo(5, 10, "cond", LAYOUT)
LAYER = LayerKey("transformer", 1)


def _uncovered(step, device):
    blocks = torch.ones(4, 4, dtype=torch.bool)
    blocks[3] = False  # the last query block keeps nothing
    return BlockMask.from_dense(blocks.to(device), 16)


@pytest.mark.parametrize("config", [RadialConfig, RettentionConfig], ids=["radial", "rettention_recalibration"])
def test_a_mask_without_keys_for_real_queries_runs_dense(config, monkeypatch):
    cfg = config(block_size=16, dense_step_fraction=0.0, dense_layers=0, min_speedup=0).with_defaults({})
    method = build_method(cfg, {"transformer": {}})
    monkeypatch.setattr(method, "mask_for", _uncovered)
    q, k, v = (torch.randn(1, 64, 2, 8) for _ in range(3))
    stats = Stats()
    with pytest.warns(RuntimeWarning, match="running dense instead: .*1 query block"):
        assert method.attend(q, k, v, STEP, LAYER, None, stats) is None
    assert dict(stats.counts) == {"dense": 1, "dense:empty_query_block": 1}
    assert method.memory().get("rettention_bytes", 0) == 0  # nothing cached from a refused recalibration


def test_never_sparse_is_runs_dense_over_a_whole_request():
    from accel.methods.base import never_sparse

    cfg = RadialConfig(block_size=16, dense_step_fraction=0.5, dense_layers=1).with_defaults({})
    assert not never_sparse(cfg, 10, LAYOUT, 2)
    assert never_sparse(cfg, 1, LAYOUT, 2)  # round(0.5 * 1) = 1 dense step of 1
    assert never_sparse(cfg, 10, LAYOUT, 1)  # the only layer is a dense first layer
    assert never_sparse(cfg, 10, TokenLayout(1, 4, 4), 2)  # 16 tokens: 1 block < min_blocks 4
    assert not never_sparse(cfg, None, None, None)  # nothing known decides nothing
