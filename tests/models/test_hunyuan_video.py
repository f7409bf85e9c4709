"""HunyuanVideo on the shared per-family checks (tests/models/harness.py), plus its own facts: the layout matches the
joint ``[video, text]`` attention call of every double- and single-stream block (T2V and both I2V conditionings),
layers numbered double blocks first, the text refiner never routed, padded text masked on the sparse path, the token
grid at the published resolutions, TaylorSeer's modules and the published settings."""

import importlib

import pytest
import torch
from accel.pipelines.hunyuan_video import tiny_hunyuan_video_transformer
from accel.pipelines.spec import modules_matching

import accel
from accel.errors import UnsupportedModelError
from tests.models.harness import SPARSE, accelerated_call, call, family_tests, resolved_config, spec_named

SPEC = spec_named("hunyuan_video")
globals().update(family_tests("hunyuan_video"))

SITE = "diffusers.models.transformers.transformer_hunyuan_video"


def _spy_dispatch(monkeypatch, transformer):
    """On an untouched transformer: ``({"layouts": [TokenLayout per forward], "calls": [(forward index, q [B, S, H, D]
    shape, attn_mask shape, real keys per batch item)]}, forward hook)``, filled by every call of the model file's
    dispatch_attention_fn."""
    module = importlib.import_module(SITE)
    seen = {"layouts": [], "calls": []}
    real = module.dispatch_attention_fn

    def spy(q, k, v, attn_mask=None, **kw):
        real_keys = None if attn_mask is None else attn_mask.reshape(q.shape[0], -1).sum(-1).tolist()
        mask_shape = None if attn_mask is None else tuple(attn_mask.shape)
        seen["calls"].append((len(seen["layouts"]) - 1, tuple(q.shape), mask_shape, real_keys))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(module, "dispatch_attention_fn", spy)
    hook = transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen["layouts"].append(SPEC.layout_from_inputs(m, args, kwargs)), with_kwargs=True
    )
    return seen, hook


def _run(pipe, preset, overrides, **kw):
    return accelerated_call(pipe, SPEC, preset, overrides, **kw)


def test_layout_matches_every_joint_attention_call(family, monkeypatch):
    pipe, _ = family
    seen, hook = _spy_dispatch(monkeypatch, pipe.transformer)
    try:
        call(pipe, SPEC)
    finally:
        hook.remove()
    t = pipe.transformer
    layers = len(t.transformer_blocks) + len(t.single_transformer_blocks)
    steps = SPEC.tiny_call["num_inference_steps"]
    # True CFG: a cond and an uncond forward per step; the text refiner's attention never reaches this call site.
    assert len(seen["layouts"]) == 2 * steps and len(seen["calls"]) == 2 * steps * layers
    video = 5 * 4 * 4  # 17 frames -> 5 latent frames; 64 px / (VAE 8 x patch 2) = 4
    for forward, q_shape, mask_shape, real_keys in seen["calls"]:
        layout = seen["layouts"][forward]
        assert (layout.video_tokens, layout.text_len, layout.text_pos) == (video, 16, "last")
        assert q_shape[1] == layout.num_tokens
        # A key-only mask [B, 1, 1, S]: padded text is masked (cond "w3 w4 w5": 3 real words; uncond "w6": 1).
        assert mask_shape == (1, 1, 1, layout.num_tokens)
        assert real_keys == [video + (3 if forward % 2 == 0 else 1)]


@pytest.mark.parametrize("condition", ["latent_concat", "token_replace"])
def test_layout_matches_image_to_video_transformers(condition, monkeypatch):
    """HunyuanVideoImageToVideoPipeline's transformers: latent_concat doubles the channels (+ a mask channel),
    token_replace re-modulates the first frame; neither changes the token sequence."""
    torch.manual_seed(0)
    in_channels = 2 * 4 + 1 if condition == "latent_concat" else 4
    t = tiny_hunyuan_video_transformer(in_channels=in_channels, image_condition_type=condition)
    seen, hook = _spy_dispatch(monkeypatch, t)
    mask = torch.tensor([[1] * 5 + [0] * 7])
    with torch.no_grad():
        t(hidden_states=torch.randn(1, in_channels, 3, 6, 8), timestep=torch.tensor([500.0]),
          encoder_hidden_states=torch.randn(1, 12, 32), encoder_attention_mask=mask,
          pooled_projections=torch.randn(1, 32), guidance=torch.tensor([6000.0]))  # fmt: skip
    hook.remove()
    (layout,) = seen["layouts"]
    assert (layout.frames, layout.height, layout.width, layout.text_len) == (3, 3, 4, 12)
    assert len(seen["calls"]) == len(SPEC.self_attention_layers(t))
    assert all(q[1] == layout.num_tokens and keys == [36 + 5] for _, q, _, keys in seen["calls"])


def test_layers_double_stream_first_then_single_stream():
    torch.manual_seed(0)
    t = tiny_hunyuan_video_transformer(num_layers=2, num_single_layers=3)
    names = {id(m): n for n, m in t.named_modules()}
    got = [(i, names[id(m)]) for i, m in SPEC.self_attention_layers(t)]
    assert got == [
        (0, "transformer_blocks.0.attn"),
        (1, "transformer_blocks.1.attn"),
        (2, "single_transformer_blocks.0.attn"),
        (3, "single_transformer_blocks.1.attn"),
        (4, "single_transformer_blocks.2.attn"),
    ]
    # The text refiner's self-attention over the prompt alone is not a video layer.
    assert any(n.startswith("context_embedder.token_refiner") and n.endswith(".attn") for n in names.values())


def test_only_joint_attention_is_routed(family):
    """Every routed call is counted once (sparse, dense or fallback): as many as joint-attention calls, so the text
    refiner's attention (an SDPA processor in another module) is never touched."""
    pipe, _ = family
    _, s = _run(pipe, "radial", SPARSE["radial"])
    layers = len(SPEC.self_attention_layers(pipe.transformer))
    steps = SPEC.tiny_call["num_inference_steps"]
    assert s.get("sparse", 0) + s.get("dense", 0) + s.get("fallback", 0) == 2 * steps * layers
    assert s.get("sparse", 0) > 0 and s.get("fallback", 0) == 0, s


@pytest.mark.parametrize("preset", ["radial", "draft"])
def test_padded_text_is_masked_on_the_sparse_path(family, preset):
    """The same prompt padded to 16 or to 40 text tokens gives the same video: padded keys take no part, sparse
    steps included (the core drops them and runs the method over the real tokens)."""
    pipe, _ = family
    short, s1 = _run(pipe, preset, SPARSE[preset])
    long, s2 = _run(pipe, preset, SPARSE[preset], max_sequence_length=40)
    assert s1.get("sparse", 0) > 0 and s2.get("sparse", 0) == s1["sparse"], (s1, s2)
    assert s1.get("fallback", 0) == s2.get("fallback", 0) == 0
    torch.testing.assert_close(long, short, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("frames", "height", "width", "grid"),
    [
        (129, 720, 1280, (33, 45, 80)),  # HunyuanVideo's default 720p: 118,800 video tokens
        (117, 768, 1280, (30, 48, 80)),  # Radial Attention's script: 115,200
        (129, 768, 1280, (33, 48, 80)),  # DraftAttention's script: 126,720
    ],
)
def test_token_grid_at_published_resolutions(frames, height, width, grid):
    layout = SPEC.token_grid(frames, height, width)
    assert (layout.frames, layout.height, layout.width) == grid


def test_published_defaults_are_applied(family):
    pipe, _ = family
    for preset, expected in [
        ("radial", {"decay": 0.95, "dense_step_fraction": 12 / 50, "dense_layers": 0, "sink": False}),
        ("draft", {"sparsity": 0.9, "dense_step_fraction": 15 / 50, "dense_layers": 2}),
        ("taylorseer", {"interval": 5, "order": 1, "warmup_steps": 1}),
    ]:
        cfg = resolved_config(pipe, preset)
        got = cfg.cache if preset == "taylorseer" else cfg.attention
        assert {k: getattr(got, k) for k in expected} == expected


def test_taylorseer_modules_return_tensors(family):
    """The cached modules are the double blocks' attention (a (video, text) pair) and both MLPs, and the single
    blocks' attention and MLP input projection; each returns a tensor or a tuple of tensors. Nothing of the text
    refiner is cached."""
    pipe, _ = family
    t = pipe.transformer
    matched = modules_matching(t, SPEC.cache_module_patterns)
    names = [n for n, _ in matched]
    per_double, per_single = 3, 2
    assert len(names) == per_double * len(t.transformer_blocks) + per_single * len(t.single_transformer_blocks)
    assert not any(n.startswith("context_embedder") for n in names)
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.setdefault(n, o)) for n, m in matched]
    try:
        call(pipe, SPEC, num_inference_steps=1)
    finally:
        for h in hooks:
            h.remove()
    assert set(outputs) == set(names)
    for name, out in outputs.items():
        parts = out if isinstance(out, tuple) else (out,)
        assert all(isinstance(p, torch.Tensor) for p in parts), name
    assert isinstance(outputs["transformer_blocks.0.attn"], tuple)


def test_lite_caching_is_refused_clearly(family):
    """The blocks return (video, text) pairs, which lite caching cannot pass through: refused, nothing installed."""
    pipe, _ = family
    with pytest.raises(UnsupportedModelError, match="lite caching"):
        accel.accelerate(pipe, "taylorseer", lite=True)
    assert not accel.is_accelerated(pipe)
