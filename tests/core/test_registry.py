"""Methods are found by config type, implement the protocol, and the core call counts what it refuses."""

import dataclasses

import pytest
import torch
from accel.attention_kernels import TokenLayout

from accel.config import ATTENTION_CONFIGS
from accel.core import attend
from accel.methods import AttentionMethod, build_method, method_class
from accel.methods.calibration import CalibrationConfig, Calibrator
from accel.state import LayerKey, LayerPlan, Stats, StepInfo


@pytest.mark.parametrize("name", sorted(ATTENTION_CONFIGS))
def test_every_attention_config_has_a_registered_method(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_PLAN_DIR", str(tmp_path))
    cfg = ATTENTION_CONFIGS[name]().with_defaults({})
    method = build_method(cfg, {"transformer": {"spec": "wan"}})
    assert isinstance(method, AttentionMethod)
    assert method.config is cfg and method.name == name
    assert isinstance(method.memory(), dict) and method.reset() is None
    assert isinstance(method.requires_full(0, 10), bool)


def test_calibration_is_a_registered_config_type():
    assert method_class(CalibrationConfig().with_defaults({})) is Calibrator


def test_unregistered_config_type_is_an_error():
    @dataclasses.dataclass(frozen=True)
    class Other:
        method = "radial"

    with pytest.raises(TypeError, match="no attention method is registered for Other"):
        method_class(Other())


class Echo:
    def attend(self, q, k, v, step, layer, scale, stats):
        stats.add("sparse")
        return q


def test_core_attend_counts_what_it_refuses():
    stats = Stats()
    plan = LayerPlan(LayerKey("transformer", 0), Echo(), stats)
    q = torch.randn(2, 8, 1, 4)
    step = StepInfo(0, 1, "cond", TokenLayout(2, 2, 2))
    assert attend(q, q, q, step, None) is None and not stats.counts  # not an accelerated layer: nothing counted
    assert attend(q, q, q, None, plan) is None
    assert attend(q, q[:, :4], q[:, :4], step, plan) is None
    padded = dataclasses.replace(step, key_valid=torch.arange(8).expand(2, 8) < 6)
    assert attend(q, q, q, padded, plan) is None  # padding among video tokens: not expressed
    assert attend(q, q, q, dataclasses.replace(step, key_valid=torch.ones(2, 8, dtype=torch.bool)), plan) is q
    assert dict(stats.counts) == {
        "fallback": 3,
        "fallback:no_step_info": 1,
        "fallback:cross_attention": 1,
        "fallback:key_padding_in_video": 1,
        "sparse": 1,
    }
