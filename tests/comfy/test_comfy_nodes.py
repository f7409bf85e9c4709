"""The node definitions (classic and v3), the node folder entry point and the sample workflows."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from accel.errors import ConfigError
from accel.hosts import comfy_nodes as nodes
from accel.hosts.comfy import host_of
from tests.comfy import standins as s

ROOT = Path(__file__).resolve().parents[2]


def test_classic_inputs_are_valid_widgets():
    spec = nodes.AccelerateModelNode.INPUT_TYPES()
    for name, (kind, opts) in {**spec["required"], **spec["optional"]}.items():
        if isinstance(kind, list):
            assert opts["default"] in kind, name
        elif kind in ("FLOAT", "INT"):
            assert opts["min"] <= opts["default"] <= opts["max"], name
    assert nodes.NODE_CLASS_MAPPINGS == nodes.CLASSIC_NODES  # no comfy_api here: the classic format is exported
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)


def test_widgets_apply_only_to_their_preset():
    assert nodes.node_overrides("draft", decay=0.5, sparsity=0.8, cache_interval=3) == {"sparsity": 0.8}
    kw = nodes.node_overrides("radial+taylorseer", decay=0.5, dense_warmup=0.1, cache_interval=3,
                              overrides="block_size=16, min_speedup=0, patch=(4, 4), backend=reference")  # fmt: skip
    assert kw == {"decay": 0.5, "dense_step_fraction": 0.1, "interval": 3, "block_size": 16, "min_speedup": 0,
                  "patch": (4, 4), "backend": "reference"}  # fmt: skip
    with pytest.raises(ConfigError):
        nodes.parse_overrides("block_size 16")
    # threshold: -1 the model's value (nothing set), 0 the fixed schedule, > 0 adaptive
    assert nodes.node_overrides("taylorseer", threshold=-1.0) == {}
    assert nodes.node_overrides("taylorseer", threshold=0.0) == {"threshold": None}
    assert nodes.node_overrides("radial+taylorseer", threshold=0.25) == {"threshold": 0.25}
    assert nodes.node_overrides("radial", threshold=0.25) == {}


def test_accelerate_and_stats_nodes_through_a_run():
    mp = s.patcher("wan")
    (clone,) = nodes.AccelerateModelNode().patch(
        mp, preset="radial+taylorseer", decay=0.3, sparsity=0.0, dense_warmup=0.2, cache_interval=2,
        overrides="block_size=16, min_speedup=0, dense_layers=0, backend=reference",
    )  # fmt: skip
    cfg = host_of(clone).config
    assert cfg.attention.decay == 0.3 and cfg.cache.interval == 2 and cfg.attention.block_size == 16
    assert host_of(mp) is None
    cond, uncond = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    latent = {"samples": s.sample(clone, torch.randn(1, 4, 4, 8, 16), torch.linspace(1, 0, 6), cond, uncond)}
    res = nodes.StatsNode().report(clone, latent)
    latent_out, text = res["result"]
    assert latent_out is latent and res["ui"]["text"] == [text]
    assert "sparse=" in text and "predicted" in text and "radial+taylorseer on wan" in text, text
    assert "not accelerated" in nodes.report(mp)


def test_radial_is_refused_on_flux_with_a_clear_message():
    with pytest.raises(Exception, match="image"):
        nodes.accelerate(s.patcher("flux"), "radial")


def _io_standin():
    """A minimal ``comfy_api.latest`` (v3 schema API): inputs/outputs record their arguments."""

    class _Widget:
        def __init__(self, id=None, **kw):
            self.id, self.kw = id, kw

    def kind(name):
        return types.SimpleNamespace(Input=type(f"{name}In", (_Widget,), {}), Output=type(f"{name}Out", (_Widget,), {}))

    def schema(**kw):
        # ComfyUI refuses a node (and reports it while loading) whose input and output ids are not all distinct
        ids = [w.id for w in kw.get("inputs", []) + kw.get("outputs", [])]
        assert len(ids) == len(set(ids)), f"ids must be unique between inputs and outputs: {ids}"
        return types.SimpleNamespace(**kw)

    io = types.SimpleNamespace(
        ComfyNode=type("ComfyNode", (), {}),
        Schema=schema,
        NodeOutput=lambda *args, ui=None: types.SimpleNamespace(args=args, ui=ui),
        **{n: kind(n) for n in ("Model", "Combo", "Float", "Int", "Boolean", "String", "Latent")},
    )
    mod = types.ModuleType("comfy_api.latest")
    mod.io, mod.ComfyExtension = io, type("ComfyExtension", (), {})
    return mod


def test_v3_entry_point_when_comfy_api_exists(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", _io_standin())
    try:
        v3 = importlib.reload(nodes)
        assert v3.NODE_CLASS_MAPPINGS is None  # ComfyUI then loads comfy_entrypoint
        listed = asyncio.run(v3.comfy_entrypoint().get_node_list())
        schemas = {n.define_schema().node_id: n.define_schema() for n in listed}
        assert set(schemas) == {nodes.ACCELERATE_ID, nodes.STATS_ID}
        acc = schemas[nodes.ACCELERATE_ID]
        assert [i.id for i in acc.inputs][:2] == ["model", "preset"]
        stats = schemas[nodes.STATS_ID]
        # ComfyUI names a v3 output by its display_name (else by its type): the same names as the classic node's
        assert [o.kw.get("display_name") for o in stats.outputs] == list(nodes.StatsNode.RETURN_NAMES)
        out = listed[0].execute(s.patcher("wan"), preset="dense")
        assert host_of(out.args[0]).config.name == "dense"
    finally:
        monkeypatch.undo()
        importlib.reload(nodes)
    assert nodes.NODE_CLASS_MAPPINGS == nodes.CLASSIC_NODES


def test_node_folder_loads_as_comfyui_loads_custom_nodes():
    path = ROOT / "comfyui" / "__init__.py"
    spec = importlib.util.spec_from_file_location("/custom_nodes/diffusion-fast", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.NODE_CLASS_MAPPINGS) == {nodes.ACCELERATE_ID, nodes.STATS_ID}
    assert not hasattr(module, "comfy_entrypoint")


def test_repository_root_loads_as_a_registry_install():
    """The registry (and ComfyUI-Manager) clones the repository into custom_nodes/ and ComfyUI imports its root
    __init__.py as a package, registered in sys.modules under the folder's name before it runs."""
    import sys

    name = "custom_nodes_diffusion_fast_root"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == {nodes.ACCELERATE_ID, nodes.STATS_ID}
        assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


@pytest.mark.parametrize("name", ["wan", "flux"])
def test_sample_workflows_use_the_nodes(name):
    wf = json.loads((ROOT / "samples" / f"comfyui_{name}_workflow.json").read_text())
    classes = {n["class_type"] for n in wf.values()}
    assert {nodes.ACCELERATE_ID, nodes.STATS_ID} <= classes
    acc = next(n for n in wf.values() if n["class_type"] == nodes.ACCELERATE_ID)["inputs"]
    assert acc["preset"] in nodes.PRESET_CHOICES
    spec = nodes.AccelerateModelNode.INPUT_TYPES()
    assert set(acc) == set(spec["required"]) | set(spec["optional"])
    for node in wf.values():  # every link points at an existing node
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in wf
