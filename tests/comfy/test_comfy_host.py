"""The ComfyUI host against stand-ins of ComfyUI's model patcher, wrappers and attention conventions."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from accel.attention_kernels import TokenLayout, radial_mask

from accel.hosts.comfy import ComfyHost, accelerate_model, branch_of, host_of, model_stats, schedule_step
from tests.comfy import standins as s

# Small blocks and no speed check, so that sparse calls really happen on toy sizes; the dense oracle backend.
SPARSE = {"block_size": 16, "min_speedup": 0.0, "dense_layers": 0, "backend": "reference"}
SIGMAS = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def _ctx(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, 16, generator=g), torch.randn(1, n, 16, generator=g)


class _Exec:
    """What ComfyUI's wrapper executor hands a DIFFUSION_MODEL wrapper: callable, with ``class_obj``."""

    def __init__(self, dm, fn):
        self.class_obj, self.fn = dm, fn

    def __call__(self, *args, **kwargs):
        return self.fn()


def _in_forward(clone, x, context, fn, *, sigma=0.4, kinds=(0,), extra=()):
    """Run ``fn(to)`` inside one forward of ``clone`` as the DIFFUSION_MODEL wrapper sees it."""
    to = copy.deepcopy(clone.model_options["transformer_options"])
    to.update({"sample_sigmas": SIGMAS, "sigmas": torch.tensor([sigma]), "cond_or_uncond": list(kinds)})
    to["wrappers"] = {"diffusion_model": {"k": []}}
    host = host_of(clone)
    dm = clone.model.diffusion_model
    return host.diffusion_model_wrapper(_Exec(dm, lambda: fn(to)), x, torch.tensor([400.0]), context, *extra, to)


def _radial_reference(q, k, v, layout, decay, sink):
    """Plain PyTorch attention ``[B, H, L, D]`` under radial's token mask (what the sparse call must equal)."""
    blocks = radial_mask(layout, 16, decay, sink=sink).to_dense()[0, 0]
    tok = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)[: q.shape[2], : k.shape[2]]
    assert not bool(tok.all()), "the test layout must give a sparse mask"
    return F.scaled_dot_product_attention(q, k, v, attn_mask=tok)


CASES = {
    # name: (patcher kind, latent, text tokens, text position)
    "wan_BLHD_heads_kw": ("wan", (1, 4, 8, 8, 16), 0, "none"),
    # Flux's joint layout (text first) on a video grid: a one-frame radial mask would be dense.
    "joint_BHLD_text_first": ("hunyuan_text_first", (1, 4, 8, 8, 16), 32, "first"),
    "hunyuan_BHLD_text_last": ("hunyuan", (1, 4, 8, 8, 16), 32, "last"),
}


@pytest.mark.parametrize("skip_output_reshape", [False, True], ids=["out_BLHD", "out_BHLD"])
@pytest.mark.parametrize("case", list(CASES))
def test_sparse_call_equals_masked_pytorch_attention(case, skip_output_reshape):
    kind, shape, text, pos = CASES[case]
    mp = s.patcher(kind.split("_")[0])
    if kind == "hunyuan_text_first":
        mp.model.diffusion_model.flipped = False
        for block in mp.model.diffusion_model.double_blocks:
            block.flipped_img_txt = False
    clone = accelerate_model(mp, "radial", dense_step_fraction=0.0, decay=0.5, sink=True, **SPARSE)
    layout = TokenLayout(8, 4, 8, text, pos) if text else TokenLayout(8, 4, 8)
    g = torch.Generator().manual_seed(0)
    B, H, D, L = 2, 2, 16, layout.num_tokens
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    # Text fills whole blocks: the method may attend text exactly (text split) or as dense text blocks, and both
    # are then the same attention.
    expected = _radial_reference(q, k, v, layout, 0.5, True)  # [B, H, L, D]

    def call(to):
        if kind == "wan":  # [B, L, H*D], heads by keyword
            args = [t.transpose(1, 2).reshape(B, L, H * D) for t in (q, k, v)]
            return s.optimized_attention(
                *args, heads=H, skip_output_reshape=skip_output_reshape, transformer_options=to
            )
        return s.optimized_attention(q, k, v, H, skip_reshape=True, skip_output_reshape=skip_output_reshape,
                                     transformer_options=to)  # fmt: skip

    out = _in_forward(clone, torch.randn(*shape), torch.randn(1, text or 5, 16), call)
    assert host_of(clone).stats.counts["sparse"] == 1, host_of(clone).stats.counts
    want = expected if skip_output_reshape else expected.transpose(1, 2).reshape(B, L, H * D)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=1e-4)


def test_clone_shares_weights_and_leaves_the_input_untouched():
    mp = s.patcher("wan")
    prev = lambda func, *a, **kw: func(*a, **kw)
    mp.model_options["transformer_options"]["optimized_attention_override"] = prev
    before = copy.deepcopy(mp.model_options)
    clone = accelerate_model(mp, "radial+taylorseer", **SPARSE)
    assert clone.model is mp.model and clone is not mp
    assert mp.model_options == before and mp.wrappers == {}
    assert mp.model_options["transformer_options"]["optimized_attention_override"] is prev
    to = clone.model_options["transformer_options"]
    assert to["optimized_attention_override"] == host_of(clone).attention
    assert ("double_block", 0) in to["patches_replace"]["dit"]
    assert set(clone.wrappers) == {"diffusion_model", "outer_sample"}
    again = clone.clone()  # later clones (LoRA, sampler) reach the same host, not a copy
    assert host_of(again) is host_of(clone)
    with pytest.raises(Exception, match="already accelerated"):
        accelerate_model(clone, "radial")


@pytest.mark.parametrize("kind", ["wan", "hunyuan", "flux"])
def test_every_step_dense_is_bit_identical_to_no_node(kind):
    mp = s.patcher(kind)
    x = torch.randn(1, 4, 2, 4, 8) if kind != "flux" else torch.randn(1, 4, 8, 8)
    cond, uncond = _ctx()
    ref = s.sample(mp, x, SIGMAS, cond, uncond)
    attention = "draft" if kind == "flux" else "radial"
    for preset, kw in [
        ("dense", {}),
        (attention, {"dense_step_fraction": 1.0, **SPARSE}),
        (f"{attention}+taylorseer", {"dense_step_fraction": 1.0, "interval": 1, **SPARSE}),
    ]:
        if kind == "flux" and preset != "dense":
            kw["patch"] = (4, 4)  # draft pools (rows, cols) patches of one block
        clone = accelerate_model(mp, preset, **kw)
        assert torch.equal(s.sample(clone, x, SIGMAS, cond, uncond), ref), preset
    assert model_stats(clone)["dense"] > 0 and not model_stats(clone).get("sparse")


@pytest.mark.parametrize(
    "kind,preset,latent",
    [("wan", "radial", (1, 4, 4, 8, 16)), ("hunyuan", "radial", (1, 4, 4, 8, 16)), ("flux", "draft", (1, 4, 16, 32))],
)
def test_sampling_runs_sparse_calls(kind, preset, latent):
    mp = s.patcher(kind)
    extra = {"patch": (4, 4)} if preset == "draft" else {}
    clone = accelerate_model(mp, preset, dense_step_fraction=0.2, **SPARSE, **extra)
    cond, uncond = _ctx()
    out = s.sample(clone, torch.randn(*latent), SIGMAS, cond, uncond)
    st = model_stats(clone)
    assert torch.isfinite(out).all()
    # 5 steps x (1 batched forward) x 2 self-attention layers; the first step is the dense warm-up.
    assert st["sparse"] == 8 and st["dense:warmup_steps"] == 2, st
    if kind == "wan":
        assert st["fallback:cross_attention"] == 10


def test_chains_to_the_previous_override():
    seen = []

    def prev(func, *args, **kwargs):
        seen.append(args[0].shape)
        assert kwargs["_inside_attn_wrapper"] is True  # ComfyUI's kwargs handed on intact
        return func(*args, **kwargs)

    mp = s.patcher("wan")
    mp.model_options["transformer_options"]["optimized_attention_override"] = prev
    clone = accelerate_model(mp, "radial", dense_step_fraction=0.2, **SPARSE)
    cond, uncond = _ctx()
    s.sample(clone, torch.randn(1, 4, 4, 8, 16), SIGMAS, cond, uncond)
    st = model_stats(clone)
    # every call not taken sparse went through the previous override: 5 steps x 2 blocks x (self + cross)
    assert len(seen) == 20 - st["sparse"] and st["sparse"] == 8


def test_fallbacks_are_counted_with_their_reason():
    # HunyuanVideo: the text refiner's text-only calls; padded text keys are key padding the core handles.
    mp = s.patcher("hunyuan")
    clone = accelerate_model(mp, "radial", dense_step_fraction=0.0, **SPARSE)
    cond, uncond = _ctx()
    mask = torch.ones(2, 6)
    mask[:, 4:] = 0
    s.sample(clone, torch.randn(1, 4, 4, 8, 16), SIGMAS[:3], cond, uncond, extra={"attention_mask": mask})
    st = model_stats(clone)
    assert st["fallback:layout_mismatch"] == 2 and st["sparse"] == 4 and "fallback:attn_mask" not in st, st

    # Flux Kontext: reference tokens appended after the image.
    mp = s.patcher("flux")
    clone = accelerate_model(mp, "draft", dense_step_fraction=0.0, patch=(4, 4), **SPARSE)
    ref = [torch.randn(2, 4, 8, 8)]
    s.sample(clone, torch.randn(1, 4, 16, 32), SIGMAS[:2], cond, uncond, extra={"ref_latents": ref})
    assert model_stats(clone)["fallback:extra_tokens"] == 2

    # Direct calls: a mask that is not key padding, unknown layouts and arguments, no forward.
    clone = accelerate_model(s.patcher("wan"), "radial", dense_step_fraction=0.0, **SPARSE)
    host = host_of(clone)
    q = torch.randn(1, 128, 32)

    def calls(to):
        bias = torch.randn(1, 2, 128, 128)
        out = s.optimized_attention(q, q, q, heads=2, mask=bias, transformer_options=to)
        torch.testing.assert_close(out, s.attention_pytorch(q, q, q, 2, mask=bias))  # the original attention ran
        original = lambda *a, **kw: "original"
        assert host.attention(original, q[None], q[None], q[None], heads=2, transformer_options=to) == "original"
        assert host.attention(original, q, q, q, heads=2, transformer_options=to, var_len=True) == "original"

    _in_forward(clone, torch.randn(1, 4, 4, 8, 16), torch.randn(1, 5, 16), calls)  # 4 x 4 x 8 = 128 tokens
    s.optimized_attention(q, q, q, heads=2, transformer_options=clone.model_options["transformer_options"])
    c = host.stats.counts
    assert c["fallback:attn_mask"] == 1 and c["fallback:unknown_layout"] == 1 and c["fallback:call_signature"] == 1, c
    assert c["fallback:no_forward"] == 1


def test_step_from_sample_sigmas_and_branch_from_cond_or_uncond():
    clone = accelerate_model(s.patcher("wan"), "radial", **SPARSE)
    host: ComfyHost = host_of(clone)
    lay = TokenLayout(2, 4, 8)
    full = torch.tensor([1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    step = host.step_info({"sample_sigmas": full, "sigmas": torch.tensor([0.5, 0.5]), "cond_or_uncond": [0, 1]}, lay)
    assert (step.step_index, step.num_steps, step.branch, step.sigma) == (3, 6, "cond_uncond", 0.5)
    # A Wan 2.2 stage (KSamplerAdvanced start/end): its sample_sigmas are the stage's slice of the schedule.
    stage = full[3:]
    step = host.step_info({"sample_sigmas": stage, "sigmas": torch.tensor([0.3]), "cond_or_uncond": [1]}, lay)
    assert (step.step_index, step.num_steps, step.branch) == (1, 3, "uncond")
    assert branch_of([0]) == "cond" and branch_of(None) == "default"

    # In a run: separate cond / uncond forwards map to the same step, each on its branch.
    seen = []
    resolve = host.resolver.resolve

    def record(*a, **kw):
        info = resolve(*a, **kw)
        seen.append((info.step_index, info.num_steps, info.branch))
        return info

    host.resolver.resolve = record
    s.sample(clone, torch.randn(1, 4, 2, 8, 16), stage, *_ctx(), batched=False)
    assert seen == [(0, 3, "cond"), (0, 3, "uncond"), (1, 3, "cond"), (1, 3, "uncond"), (2, 3, "cond"),
                    (2, 3, "uncond")]  # fmt: skip


def test_block_index_from_transformer_options():
    clone = accelerate_model(s.patcher("hunyuan", double=2, single=2), "radial", dense_step_fraction=0.0, **SPARSE)
    host = host_of(clone)
    q = torch.randn(1, 2, 4 * 4 * 8 + 6, 16)

    def call(to):
        to.update({"block_index": 1, "block_type": "single"})
        return s.optimized_attention(q, q, q, 2, skip_reshape=True, transformer_options=to)

    _in_forward(clone, torch.randn(1, 4, 4, 8, 16), torch.randn(1, 6, 16), call)
    assert list(host._plans) == [3]  # two double blocks first, then single block 1


def test_taylorseer_predicts_blocks_and_resets_per_run():
    for kind, latent, blocks in [("wan", (1, 4, 2, 4, 8), 2), ("flux", (1, 4, 8, 8), 2)]:
        mp = s.patcher(kind)
        clone = accelerate_model(mp, "taylorseer", interval=2, warmup_steps=1, order=1, threshold=None)
        cond, uncond = _ctx()
        x = torch.randn(*latent)
        sigmas = torch.linspace(1.0, 0.0, 8)
        first = s.sample(clone, x, sigmas, cond, uncond)
        run1 = model_stats(clone)
        second = s.sample(clone, x, sigmas, cond, uncond)
        run2 = model_stats(clone)
        # full steps 0, 1, 3, 5 (warm-up 1, then every 2nd counted from step 0) of 7; the rest predicted
        assert run1["cache:predicted"] == 3 * blocks and run1["cache:computed"] == 4 * blocks, run1
        assert torch.equal(first, second)  # nothing carried over from the first run
        assert {k: v for k, v in run2.items() if k != "runs"} == {k: v for k, v in run1.items() if k != "runs"}
        assert run2["runs"] == 2
        dense = s.sample(mp, x, sigmas, cond, uncond)
        assert torch.isfinite(first).all() and (first - dense).abs().max() < 0.5 * dense.abs().max()


def test_adaptive_taylorseer_probes_the_first_block_and_decides_per_branch():
    for kind, latent, blocks in [("wan", (1, 4, 2, 4, 8), 2), ("flux", (1, 4, 8, 8), 2)]:
        mp = s.patcher(kind)
        cond, uncond = _ctx()
        x = torch.randn(*latent)
        sigmas = torch.linspace(1.0, 0.0, 8)
        dense = s.sample(mp, x, sigmas, cond, uncond)
        # threshold 0: every step runs in full, so the output is the untouched model's
        every = accelerate_model(mp, "taylorseer", threshold=0.0, warmup_steps=1)
        assert torch.equal(s.sample(every, x, sigmas, cond, uncond), dense)
        assert "cache:predicted_steps" not in model_stats(every)
        # a threshold nothing reaches: the interval cap decides (full steps 0, 3, 6 of 7), the probe block always runs
        capped = accelerate_model(mp, "taylorseer", threshold=1e9, warmup_steps=1, interval=3)
        out = s.sample(capped, x, sigmas, cond, uncond)
        st = model_stats(capped)
        steps = st["cache_steps"]
        assert steps and all(v == {"full": [0, 3, 6], "predicted": [1, 2, 4, 5]} for v in steps.values()), steps
        forwards = 7 * len(steps)
        assert st["cache:computed"] == 3 * len(steps) * (blocks - 1), st  # block 0 is the probe, never cached
        assert st["cache:predicted"] == (forwards - 3 * len(steps)) * (blocks - 1), st
        assert torch.isfinite(out).all() and not torch.equal(out, dense)


def test_calls_between_schedule_entries_belong_to_their_step():
    # ComfyUI's dpmpp_2s_ancestral / dpmpp_sde also call the model at sigmas between two sample_sigmas entries.
    sched = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    sigmas = (1.0, 0.9, 0.8, 0.65, 0.5, 0.3, 0.2, 0.1)
    assert [schedule_step(sched, x) for x in sigmas] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert schedule_step(sched, 0.8 * (1 - 1e-4)) == 1  # a schedule entry in another dtype
    assert schedule_step(sched, 1.5) is None and schedule_step(None, 0.5) is None

    clone = accelerate_model(
        s.patcher("wan"), "radial+taylorseer", dense_step_fraction=0.2, interval=2, threshold=None, **SPARSE
    )
    host = host_of(clone)
    seen = []
    resolve = host.resolver.resolve

    def record(*a, **kw):
        info = resolve(*a, **kw)
        seen.append((info.step_index, info.num_steps))
        return info

    host.resolver.resolve = record
    out = s.sample(clone, torch.randn(1, 4, 4, 8, 16), SIGMAS, *_ctx(), midpoint=True)
    assert seen == [(i, 5) for i in range(5) for _ in range(2)]
    st = model_stats(clone)
    assert torch.isfinite(out).all() and st["sparse"] > 0 and st["cache:predicted"] > 0, st


def test_taylorseer_residuals_survive_blocks_that_add_in_place(monkeypatch):
    # ComfyUI's Flux / HunyuanVideo blocks add to their txt (double) and img (single) inputs in place: the residual
    # of every stream must still be what the block added, not zero.
    from accel.caches.taylorseer import TaylorLadder

    residuals = []
    update = TaylorLadder.update

    def spy(self, value, position, differences=True):
        residuals.append(float(value.abs().max()))
        return update(self, value, position, differences)

    monkeypatch.setattr(TaylorLadder, "update", spy)
    for kind, latent in [("flux", (1, 4, 8, 8)), ("hunyuan", (1, 4, 2, 4, 8))]:
        clone = accelerate_model(s.patcher(kind), "taylorseer", interval=2, warmup_steps=1, order=1, threshold=None)
        s.sample(clone, torch.randn(*latent), SIGMAS, *_ctx())
    # 2 models x 3 full steps x (double img + txt, single img)
    assert len(residuals) == 18 and min(residuals) > 0, residuals
