"""StepResolver: every way a host can know the step, and the one full-step decision per forward."""

import pytest
import torch
from accel.attention_kernels import TokenLayout

from accel.steps import StepResolver

LAYOUT = TokenLayout(2, 2, 2)


def test_cache_context_index_wins_and_sigma_comes_from_the_schedule():
    r = StepResolver("transformer")
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    s = r.resolve(LAYOUT, branch="cond", step_index=2, num_steps=4, timestep=123.0, sigmas=sigmas)
    assert (s.step_index, s.num_steps, s.branch, s.sigma, s.transformer) == (2, 4, "cond", 0.5, "transformer")


def test_scheduler_timesteps_give_index_and_count():
    timesteps = torch.tensor([999.0, 750.0, 500.0, 250.0])
    s = StepResolver("t").resolve(LAYOUT, timestep=500.0, timesteps=timesteps)
    assert (s.step_index, s.num_steps) == (2, 4)
    s = StepResolver("t").resolve(LAYOUT, timestep=600.0, timesteps=timesteps)  # no match: counted instead
    assert (s.step_index, s.num_steps) == (0, 4)


def test_sigma_schedule_as_comfyui_passes_it_and_a_stage_slice():
    sample_sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.1, 0.0])  # 5 steps + the final sigma
    s = StepResolver("t").resolve(LAYOUT, sigma=0.4, sigmas=sample_sigmas)
    assert (s.step_index, s.num_steps, s.sigma) == (3, 5, 0.4)
    stage = sample_sigmas[2:]  # a Wan 2.2 low-noise stage: its own slice of the schedule
    s = StepResolver("t").resolve(LAYOUT, sigma=0.4, sigmas=stage)
    assert (s.step_index, s.num_steps) == (1, 3)


def test_forwards_are_counted_per_branch_without_a_schedule_and_reset():
    r = StepResolver("t")
    got = [r.resolve(LAYOUT, branch=b).step_index for b in ("cond", "uncond", "cond", "uncond", "cond")]
    assert got == [0, 0, 1, 1, 2]
    r.reset()
    assert r.resolve(LAYOUT, branch="cond").step_index == 0


def test_full_step_decision_is_made_once_per_forward():
    calls = []

    def full(i, n):
        calls.append((i, n))
        return i % 2 == 0

    r = StepResolver("t", full)
    flags = [r.resolve(LAYOUT, step_index=i, num_steps=4).full for i in range(4)]
    assert flags == [True, False, True, False] and calls == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert StepResolver("t").resolve(LAYOUT).full  # nothing to skip: every step is full


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
def test_bfloat16_timesteps_resolve_to_their_steps(shift):
    """Flux pipelines hand the transformer ``t`` in the latents' dtype divided by 1000 in that dtype: two bfloat16
    roundings. Every step of a 28-step shifted schedule still resolves to itself (not to forward counting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(28)
    resolver = StepResolver("transformer")
    got = []
    for t in sched.timesteps[5:]:  # img2img: starts part-way; true CFG: two forwards per step, one branch
        rounded = float((t.to(torch.bfloat16) / 1000).to(torch.bfloat16).float() * 1000)
        for _ in range(2):
            got.append(resolver.resolve(TokenLayout(1, 2, 2), timestep=rounded, timesteps=sched.timesteps).step_index)
    assert got == [i for i in range(5, 28) for _ in range(2)]
