"""HunyuanVideo 1.5 on the shared per-family checks (tests/models/harness.py), plus its own facts: the layout matches
the joint ``[video, image + glyph + text]`` attention call of every block (T2V through the pipeline, I2V with real
image tokens), its padded-text mask, layers, padded text masked on the sparse path, the token grid at the published
resolutions, TaylorSeer's modules and the carried-over settings.

HunyuanVideo 1.5's processor hands the attention a query-and-key mask ``[B, 1, S, S] = valid_q & valid_k``; until the
core reads that mask as key padding (it reads key-only masks ``[B, 1, 1, S]``), every call keeps the original
attention (``fallback:attn_mask``) and the tests that need sparse calls are expected to fail.
"""

import importlib

import pytest
import torch
from accel.pipelines.hunyuan_video import tiny_hunyuan_video15_transformer
from accel.pipelines.spec import modules_matching

import accel
from accel.errors import UnsupportedModelError
from tests.models.harness import SPARSE, accelerated_call, call, family_tests, resolved_config, spec_named

SPEC = spec_named("hunyuan_video_15")
globals().update(family_tests("hunyuan_video_15"))

SITE = "diffusers.models.transformers.transformer_hunyuan_video15"


def _spy_dispatch(monkeypatch, transformer):
    """On an untouched transformer: ``({"layouts": [TokenLayout per forward], "calls": [(forward index, q [B, S, H, D]
    shape, attn_mask [B, 1, S, S])]}, forward hook)``, filled by every call of the model file's
    dispatch_attention_fn."""
    module = importlib.import_module(SITE)
    seen = {"layouts": [], "calls": []}
    real = module.dispatch_attention_fn

    def spy(q, k, v, attn_mask=None, **kw):
        seen["calls"].append((len(seen["layouts"]) - 1, tuple(q.shape), attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(module, "dispatch_attention_fn", spy)
    hook = transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen["layouts"].append(SPEC.layout_from_inputs(m, args, kwargs)), with_kwargs=True
    )
    return seen, hook


def _real_keys(mask: torch.Tensor) -> torch.Tensor:
    """The key validity ``[B, S]`` of an outer-product mask ``[B, 1, S, S]``, checked to be one."""
    valid = mask[:, 0].any(dim=-2)
    assert torch.equal(mask[:, 0], valid[:, :, None] & valid[:, None, :])
    return valid


def _run(pipe, preset, overrides, **kw):
    return accelerated_call(pipe, SPEC, preset, overrides, **kw)


def test_layout_matches_every_joint_attention_call(family, monkeypatch):
    pipe, _ = family
    seen, hook = _spy_dispatch(monkeypatch, pipe.transformer)
    try:
        call(pipe, SPEC)
    finally:
        hook.remove()
    layers = len(pipe.transformer.transformer_blocks)
    steps = SPEC.tiny_call["num_inference_steps"]
    # Classifier-free guidance: a pred_cond and a pred_uncond forward per step; the refiner is not this call site.
    assert len(seen["layouts"]) == 2 * steps and len(seen["calls"]) == 2 * steps * layers
    video = 5 * 4 * 4  # 17 frames -> 5 latent frames; 64 px / (VAE 16 x patch 1) = 4
    text = pipe.vision_num_semantic_tokens + pipe.tokenizer_2_max_length + pipe.tokenizer_max_length
    for forward, q_shape, mask in seen["calls"]:
        layout = seen["layouts"][forward]
        assert (layout.video_tokens, layout.text_len, layout.text_pos) == (video, text, "last")
        assert q_shape[1] == layout.num_tokens
        assert mask.shape == (1, 1, layout.num_tokens, layout.num_tokens)
        valid = _real_keys(mask)[0]
        # Video first, then the real text tokens (image, glyph, MLLM reordered valid-first), then the padding. Cond
        # 'w3 w4 "w5"': no real image token (T2V), 12 glyph bytes, 7 words; uncond (empty): 2 template words.
        real = video + (12 + 7 if forward % 2 == 0 else 2)
        assert valid[:real].all() and not valid[real:].any()


def test_layout_matches_image_to_video_calls(monkeypatch):
    """HunyuanVideo15ImageToVideoPipeline's forward: real image tokens (nonzero image_embeds) join the text."""
    torch.manual_seed(0)
    t = tiny_hunyuan_video15_transformer()
    seen, hook = _spy_dispatch(monkeypatch, t)
    with torch.no_grad():
        t(hidden_states=torch.randn(1, 9, 3, 3, 5), timestep=torch.tensor([500.0]),
          encoder_hidden_states=torch.randn(1, 10, 32), encoder_attention_mask=torch.tensor([[1] * 6 + [0] * 4]),
          encoder_hidden_states_2=torch.randn(1, 8, 32), encoder_attention_mask_2=torch.tensor([[1] * 3 + [0] * 5]),
          image_embeds=torch.randn(1, 4, 16))  # fmt: skip
    hook.remove()
    (layout,) = seen["layouts"]
    assert (layout.frames, layout.height, layout.width, layout.text_len) == (3, 3, 5, 4 + 8 + 10)
    assert len(seen["calls"]) == len(SPEC.self_attention_layers(t))
    for _, q_shape, mask in seen["calls"]:
        assert q_shape[1] == layout.num_tokens
        assert _real_keys(mask)[0].sum() == 45 + 4 + 3 + 6


def test_layers_are_the_double_stream_blocks():
    torch.manual_seed(0)
    t = tiny_hunyuan_video15_transformer(num_layers=3)
    names = {id(m): n for n, m in t.named_modules()}
    got = [(i, names[id(m)]) for i, m in SPEC.self_attention_layers(t)]
    assert got == [(i, f"transformer_blocks.{i}.attn") for i in range(3)]
    assert any(n.startswith("context_embedder.token_refiner") and n.endswith(".attn") for n in names.values())


def test_only_joint_attention_is_routed(family):
    pipe, _ = family
    _, s = _run(pipe, "radial", SPARSE["radial"])
    layers = len(SPEC.self_attention_layers(pipe.transformer))
    steps = SPEC.tiny_call["num_inference_steps"]
    assert s.get("sparse", 0) + s.get("dense", 0) + s.get("fallback", 0) == 2 * steps * layers
    assert s.get("sparse", 0) > 0 and s.get("fallback", 0) == 0, s


@pytest.mark.parametrize("preset", ["radial", "draft"])
def test_padded_text_is_masked_on_the_sparse_path(family, preset):
    """More padding on the text and glyph streams gives the same video, sparse steps included."""
    pipe, _ = family
    short, s1 = _run(pipe, preset, SPARSE[preset])
    lengths = pipe.tokenizer_max_length, pipe.tokenizer_2_max_length
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = lengths[0] + 8, lengths[1] + 8
    try:
        long, s2 = _run(pipe, preset, SPARSE[preset])
    finally:
        pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = lengths
    assert s1.get("sparse", 0) > 0 and s2.get("sparse", 0) == s1["sparse"], (s1, s2)
    assert s1.get("fallback", 0) == s2.get("fallback", 0) == 0
    torch.testing.assert_close(long, short, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("frames", "height", "width", "grid"),
    [
        (121, 480, 848, (31, 30, 53)),  # 480p, 121 frames (the pipelines' default count): 49,290 video tokens
        (121, 720, 1280, (31, 45, 80)),  # 720p: 111,600
    ],
)
def test_token_grid_at_published_resolutions(frames, height, width, grid):
    layout = SPEC.token_grid(frames, height, width)
    assert (layout.frames, layout.height, layout.width) == grid


def test_carried_over_defaults_are_applied(family):
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
    pipe, _ = family
    t = pipe.transformer
    matched = modules_matching(t, SPEC.cache_module_patterns)
    names = [n for n, _ in matched]
    assert sorted(names) == sorted(
        f"transformer_blocks.{i}.{m}" for i in range(len(t.transformer_blocks)) for m in ("attn", "ff", "ff_context")
    )
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


def test_lite_caching_is_refused_clearly(family):
    pipe, _ = family
    with pytest.raises(UnsupportedModelError, match="lite caching"):
        accel.accelerate(pipe, "taylorseer", lite=True)
    assert not accel.is_accelerated(pipe)
