"""The diffusers internals accel/hosts/diffusers_internals.py relies on. A failure here means diffusers changed them."""

import dataclasses
import importlib
import inspect
import subprocess
import sys

import torch
from accel.pipelines import supported_specs


def test_sdpa_route_sites_call_f_scaled_dot_product_attention():
    """Processors that call SDPA directly (route "sdpa") reach it as the module-global ``F``."""
    from diffusers.models import attention_processor

    assert attention_processor.F is torch.nn.functional
    src = inspect.getsource(attention_processor.AttnProcessor2_0.__call__)
    assert "F.scaled_dot_product_attention(" in src
    for spec in supported_specs():
        if spec.route == "sdpa":
            assert importlib.import_module(spec.attention_call_site).F is torch.nn.functional


def test_call_sites_have_dispatch_attention_fn_with_expected_keywords():
    for spec in supported_specs():
        if spec.route != "dispatch":
            continue
        module = importlib.import_module(spec.attention_call_site)
        fn = module.dispatch_attention_fn
        params = inspect.signature(getattr(fn, "__accel_original__", fn)).parameters
        for name in (
            "query",
            "key",
            "value",
            "attn_mask",
            "dropout_p",
            "is_causal",
            "scale",
            "parallel_config",
        ):
            assert name in params, f"{spec.attention_call_site}.dispatch_attention_fn lost {name!r}"


def test_wan_processor_calls_dispatch_with_keywords_and_parallel_config():
    from diffusers.models.transformers import transformer_wan

    src = inspect.getsource(transformer_wan.WanAttnProcessor.__call__)
    assert "dispatch_attention_fn(" in src
    assert "parallel_config=" in src and "attn_mask=" in src
    # self-attention is attn1; its forward passes through the processor
    block_src = inspect.getsource(transformer_wan.WanTransformerBlock.__init__)
    assert "self.attn1" in block_src and "self.attn2" in block_src
    assert "patch_size" in inspect.signature(transformer_wan.WanTransformer3DModel.__init__).parameters


def test_hook_and_cache_context_api():
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.hooks import CacheContext, StateManager, _set_cache_context

    fields = {f.name for f in dataclasses.fields(CacheContext)}
    assert {"name", "step_index", "num_inference_steps", "sigma"} <= fields
    sm = StateManager(object)
    sm.set_context(CacheContext("cond", step_index=3))
    assert sm._context.step_index == 3
    for attr in (
        "register_hook",
        "remove_hook",
        "check_if_exists_or_initialize",
        "invalidate_child_registries_cache",
    ):
        assert hasattr(HookRegistry, attr)
    assert hasattr(ModelHook, "reset_state") and hasattr(ModelHook, "_is_stateful")
    assert callable(_set_cache_context)


def test_new_forward_hook_sees_original_forward_and_removes_cleanly():
    from accel.hosts import diffusers_internals as bridge

    class Probe(bridge.ModelHook):
        def new_forward(self, module, *args, **kwargs):
            return self.fn_ref.original_forward(*args, **kwargs) * 2

    lin = torch.nn.Linear(2, 2)
    x = torch.randn(3, 2)
    want = lin(x)
    bridge.add_hook(lin, Probe(), "accel.probe")
    assert torch.equal(lin(x), 2 * want)
    bridge.remove_hook(lin, "accel.probe")
    assert torch.equal(lin(x), want)
    assert not hasattr(lin, "_diffusers_hook") and "forward" not in lin.__dict__


def test_stacked_new_forward_hooks_remove_in_any_order():
    """Pipelines sharing a transformer stack hooks; removing a lower one must keep the upper one in the chain (the
    bridge repairs what diffusers' remove_hook leaves for hooks with new_forward; see diffusers_internals.remove_hook).
    """
    from accel.hosts import diffusers_internals as bridge

    class Scale(bridge.ModelHook):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def new_forward(self, module, *args, **kwargs):
            return self.fn_ref.original_forward(*args, **kwargs) * self.factor

    lin = torch.nn.Linear(2, 2)
    x = torch.randn(3, 2)
    want = lin(x)
    for order in (
        ("accel.a", "accel.b", "accel.c"),
        ("accel.b", "accel.a", "accel.c"),
        ("accel.c", "accel.b", "accel.a"),
    ):
        for name, f in (("accel.a", 2.0), ("accel.b", 3.0), ("accel.c", 5.0)):
            bridge.add_hook(lin, Scale(f), name)
        left = 30.0
        for name in order:
            bridge.remove_hook(lin, name)
            left /= {"accel.a": 2.0, "accel.b": 3.0, "accel.c": 5.0}[name]
            torch.testing.assert_close(lin(x), left * want)
        assert not hasattr(lin, "_diffusers_hook") and "forward" not in lin.__dict__


def test_import_accel_is_light():
    code = (
        "import sys, accel, torch\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('triton', 'comfy') or "
        "m.startswith('diffusers.models') or m.startswith('diffusers.pipelines')]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_context_parallel_internals():
    """What the Ulysses route (diffusers_internals: templated_attention, ulysses_heads, enable_context_parallel and
    add_hook(inside_context_parallel=True)) relies on; tests/integration/test_context_parallel.py runs it."""
    from diffusers import ContextParallelConfig
    from diffusers.hooks import context_parallel
    from diffusers.models import attention_dispatch, modeling_utils

    from accel.hosts import diffusers_internals as bridge

    params = list(inspect.signature(attention_dispatch._templated_context_parallel_attention).parameters)
    assert params[:9] == [
        "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "return_lse",
    ]  # fmt: skip
    assert {"forward_op", "backward_op", "_parallel_config"} <= set(params)
    op_params = list(inspect.signature(attention_dispatch._native_attention_forward_op).parameters)
    assert op_params[:10] == [
        "ctx", "query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "return_lse",
    ]  # fmt: skip
    assert {"_save_ctx", "_parallel_config"} <= set(op_params)
    assert callable(attention_dispatch._native_attention_backward_op)
    # Ulysses hands rank r the contiguous head group r (H / ranks each; "anything": ceil(H / ranks), padded).
    ulysses = inspect.getsource(attention_dispatch.TemplatedUlyssesAttention.forward)
    assert "H_LOCAL = H // world_size" in ulysses and "reshape(B, S_Q_LOCAL, world_size, H_LOCAL, D)" in ulysses
    anything = inspect.getsource(attention_dispatch.all_to_all_single_any_qkv_async)
    assert "H_LOCAL = (H + H_PAD) // world_size" in anything
    fields = {f.name for f in dataclasses.fields(ContextParallelConfig)}
    assert {"ulysses_degree", "ring_degree", "_ulysses_local_rank"} <= fields
    # context_parallel_group (the adaptive cache's rank sum): the mesh over every rank that splits the sequence
    assert {"_world_size", "_flattened_mesh"} <= fields
    assert "self._flattened_mesh = " in inspect.getsource(ContextParallelConfig.setup)
    assert bridge.context_parallel_group(torch.nn.Linear(1, 1)) is None  # no parallelism: no group
    # hook names of apply_context_parallel, and the registry order add_hook reorders
    assert context_parallel._CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE.format("x").startswith(bridge.CP_HOOK_PREFIXES)
    assert context_parallel._CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE.format("x").startswith(bridge.CP_HOOK_PREFIXES)
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(torch.nn.Linear(1, 1))
    assert registry._hook_order == [] and registry.hooks == {}
    # the CPU shim of enable_context_parallel: the device index comes from torch.accelerator.device_count()
    src = inspect.getsource(modeling_utils.ModelMixin._resolve_parallel_config)
    assert "torch.accelerator.device_count()" in src


def test_add_hook_inside_context_parallel_goes_below_cp_hooks():
    from accel.hosts import diffusers_internals as bridge

    class Tag(bridge.ModelHook):
        def __init__(self, tag, log):
            super().__init__()
            self.tag, self.log = tag, log

        def pre_forward(self, module, *args, **kwargs):
            self.log.append(self.tag)
            return args, kwargs

    log = []
    m = torch.nn.Linear(2, 2)
    bridge.add_hook(m, Tag("cp", log), "cp_input---")
    bridge.add_hook(m, Tag("outer", log), "accel.outer")
    bridge.add_hook(m, Tag("inner", log), "accel.inner", inside_context_parallel=True)
    m(torch.zeros(1, 2))
    assert log == ["outer", "cp", "inner"]  # hooks above the CP hook keep their order
    log.clear()
    m2 = torch.nn.Linear(2, 2)
    bridge.add_hook(m2, Tag("cp", log), "cp_input---")
    bridge.add_hook(m2, Tag("inner", log), "accel.inner", inside_context_parallel=True)
    m2(torch.zeros(1, 2))
    assert log == ["cp", "inner"]
    bridge.remove_hook(m2, "accel.inner")
    log.clear()
    m2(torch.zeros(1, 2))
    assert log == ["cp"]
