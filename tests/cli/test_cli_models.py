"""Models other than the embedded one, in-process through ``accel.cli.main``: a local pipeline folder written by
``save_pretrained`` (the DiffusionPipeline.from_pretrained path the Hub uses), and what is refused before loading."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from accel.cli import main
from accel.cli.models import TINY_RANDOM_WAN_CONFIG, resolve_model

from .conftest import TINY, listing


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    from accel.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-wan-folder")
    tiny_pipeline("wan", **TINY_RANDOM_WAN_CONFIG).save_pretrained(folder)
    return folder


@pytest.fixture
def image_pipeline_folder(tmp_path):
    """A folder that says it holds a Flux pipeline (no weights: only what is read before loading)."""
    folder = tmp_path / "flux"
    folder.mkdir()
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_resolve_reads_model_index(wan_folder):
    src = resolve_model(str(wan_folder))
    assert (src.kind, src.pipeline_class, src.transformer_classes) == (
        "local",
        "WanPipeline",
        ("WanTransformer3DModel",),
    )
    assert src.spec.name == "wan" and src.is_video


def test_render_from_a_local_folder(wan_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("accelerate", reason="diffusers needs accelerate to load WanTransformer3DModel weights")
    monkeypatch.chdir(tmp_path)
    assert main(["a red fox", "--model", str(wan_folder), "-o", "fox.mp4", "-q", *TINY]) == 0
    out = capsys.readouterr().out
    assert f"model {wan_folder}" in out and "saved fox.mp4" in out
    assert iio.imread(tmp_path / "fox.mp4", index=None).shape == (9, 64, 64, 3)


@pytest.fixture(scope="module")
def wan_i2v_folder(tmp_path_factory):
    from accel.testing import tiny_wan_i2v_pipeline

    folder = tmp_path_factory.mktemp("tiny-wan-i2v-folder")
    tiny_wan_i2v_pipeline().save_pretrained(folder)
    return folder


def test_image_to_video_from_a_local_folder(wan_i2v_folder, tmp_path, monkeypatch, capsys):
    """--image end to end: WanImageToVideoPipeline cleans prompts with ftfy, which must come with the package."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    iio.imwrite(tmp_path / "first.png", np.full((64, 64, 3), (200, 40, 30), dtype=np.uint8))
    args = ["a red fox", "--model", str(wan_i2v_folder), "--image", "first.png", "--preset", "radial", "-o", "fox.mp4"]
    assert main([*args, "-q", *TINY]) == 0
    assert "saved fox.mp4" in capsys.readouterr().out
    assert iio.imread(tmp_path / "fox.mp4", index=None).shape == (9, 64, 64, 3)
    assert main(["a red fox", "--model", str(wan_i2v_folder), "-o", "fox2.mp4", "-q", *TINY]) == 2
    assert "pass --image PATH" in capsys.readouterr().err


def test_unsupported_pipeline_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "sd3"
    folder.mkdir()
    index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    monkeypatch.chdir(tmp_path)
    assert main(["a cat", "--model", str(folder), "--preset", "draft", "-o", "cat.png"]) == 2
    err = capsys.readouterr().err
    assert "cannot accelerate StableDiffusion3Pipeline" in err and "wan (WanPipeline" in err and "--preset dense" in err


@pytest.mark.parametrize(
    "args,phrase",
    [
        (["-o", "cat.mp4"], "image pipeline, it makes one image"),
        (["--frames", "9", "-o", "cat.png"], "image pipeline and takes no frame count"),
    ],
)
def test_image_pipeline_rules(image_pipeline_folder, tmp_path, monkeypatch, capsys, args, phrase):
    monkeypatch.chdir(tmp_path)
    assert main(["a cat", "--model", str(image_pipeline_folder), "--preset", "dense", *args]) == 2
    assert phrase in capsys.readouterr().err
    assert listing(tmp_path) == ["flux", "flux/model_index.json"]


def test_broken_folder_is_an_error_not_a_traceback(image_pipeline_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["a cat", "--model", str(image_pipeline_folder), "--preset", "dense", "-o", "cat.png", "-q"]) == 1
    assert "cannot load the pipeline folder" in capsys.readouterr().err
    assert not (tmp_path / "cat.png").exists()


def test_folder_without_model_index(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    assert main(["a cat", "--model", "weights"]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


def test_loading_in_half_precision_keeps_the_specs_float32_components(wan_folder):
    import torch

    from accel.cli.models import load_pipeline

    source = resolve_model(str(wan_folder))
    assert source.spec.float32_components == ("vae",)
    pipe = load_pipeline(source, torch.bfloat16)
    assert next(pipe.vae.parameters()).dtype == torch.float32
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16  # (Wan keeps a few modules fp32)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from accel.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-flux-folder")
    tiny_pipeline("flux").save_pretrained(folder)
    return folder


def test_an_image_model_renders_an_image_with_its_default_preset(flux_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["w3 w4", "--model", str(flux_folder), "--height", "64", "--width", "64", "--steps", "2", "-o", "cat.png"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "preset draft" in captured.err and "saved cat.png: image 64x64" in captured.out
    assert iio.imread(tmp_path / "cat.png").shape == (64, 64, 3)
    # radial has no frame axis to decay over on an image: refused before the weights load, nothing written
    assert main([*args[:-1], "radial.png", "--preset", "radial+taylorseer"]) == 2
    assert "cannot apply to flux models" in capsys.readouterr().err
    assert not (tmp_path / "radial.png").exists()
