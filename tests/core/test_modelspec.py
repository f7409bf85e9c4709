"""ModelSpec v2: layers over several block lists get one global index; lite caching walks the lists in order."""

import pytest
import torch
from accel.pipelines import supported_specs
from accel.pipelines.spec import ModelSpec


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Identity()


class TwoStream(torch.nn.Module):
    """The Flux / HunyuanVideo shape: double-stream blocks, then single-stream blocks."""

    def __init__(self, double=3, single=4):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block() for _ in range(double))
        self.single_transformer_blocks = torch.nn.ModuleList(Block() for _ in range(single))


SPEC = ModelSpec(
    name="two-stream",
    transformer_classes=("TwoStream",),
    pipeline_classes=(),
    transformer_attrs=("transformer",),
    attention_call_site="diffusers.models.attention_processor",
    self_attention=(r"transformer_blocks\.(\d+)\.attn", r"single_transformer_blocks\.(\d+)\.attn"),
    layout_from_inputs=lambda t, a, k: None,
    timestep_from_inputs=lambda a, k: None,
    cache_block_patterns=(r"transformer_blocks\.(\d+)", r"single_transformer_blocks\.(\d+)"),
)


def test_two_block_lists_share_one_global_layer_index():
    t = TwoStream()
    layers = SPEC.self_attention_layers(t)
    assert [i for i, _ in layers] == list(range(7))
    want = [b.attn for b in t.transformer_blocks] + [b.attn for b in t.single_transformer_blocks]
    assert all(m is w for (_, m), w in zip(layers, want, strict=True))
    assert SPEC.blocks(t) == [*t.transformer_blocks, *t.single_transformer_blocks]


def test_spec_fields_are_checked():
    with pytest.raises(ValueError, match="route"):
        ModelSpec(**{**SPEC.__dict__, "route": "magic"})
    with pytest.raises(ValueError, match="text_pos"):
        ModelSpec(**{**SPEC.__dict__, "text_pos": "middle"})


@pytest.mark.parametrize("spec", supported_specs(), ids=lambda s: s.name)
def test_every_family_ships_a_tiny_pipeline_whose_layout_matches_its_spec(spec):
    from tests.models.harness import call

    pipe = spec.tiny_pipeline()
    seen = []
    t = pipe.transformer
    handle = t.register_forward_pre_hook(
        lambda m, a, kw: seen.append(spec.layout_from_inputs(m, a, kw)), with_kwargs=True
    )
    try:
        call(pipe, spec, num_inference_steps=2)
    finally:
        handle.remove()
    assert seen and all(lay.text_pos == spec.text_pos for lay in seen)
    assert [i for i, _ in spec.self_attention_layers(t)] == list(range(len(spec.self_attention_layers(t))))
    assert spec.example_repos
