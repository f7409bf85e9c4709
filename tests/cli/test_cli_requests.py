"""What a newcomer hit, checked before any weights load: typed ``--set`` values, one message for an unknown
preset, a mistyped subcommand, a Sparse-vDiT plan that does not exist, and the kernel-compile notice only when a
sparse call will run. Also: every AccelError is one line on stderr with exit status 2 (usage) or 1 (failure)."""

from __future__ import annotations

import json

import pytest

import accel
from accel.cli import main
from accel.cli import render as cli_render
from accel.cli import runner as cli_runner
from accel.cli.models import EMBEDDED, TINY_RANDOM_WAN_CONFIG, resolve_model
from accel.cli.request import check_preset

from .conftest import TINY, listing

# 3 latent frames of 4x8 tokens = 96 tokens: six 16-token blocks (sparse-vdit's minimum is 4).
SIZE = ["--height", "64", "--width", "128", "--frames", "9", "--steps", "3"]
SMALL = ["--set", "block_size=16"]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("diffusion-fast: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any weights are built or loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(cli_runner, "load_pipeline", refuse)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACCEL_PLAN_DIR", str(tmp_path / "plans"))


# ---------------------------------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    "preset,setting,message",
    [
        ("radial", "decay=high", "--set decay=high: decay must be a number"),
        ("radial", "sink=maybe", "--set sink=maybe: sink must be true or false"),
        ("radial", "dense_layers=1.5", "--set dense_layers=1.5: dense_layers must be a whole number"),
        ("radial", "block_size=big", "--set block_size=big: block_size must be a whole number"),
        ("draft", "patch=8", "--set patch=8: patch must be two whole numbers separated by commas, e.g. 8,16"),
        ("rettention", "residual_layers=a,b", "residual_layers must be whole numbers separated by commas"),
        ("radial", "decay=-1", "--set decay=-1: radial decay must be > 0"),
        ("radial+taylorseer", "interval=often", "--set interval=often: interval must be a whole number"),
    ],
)
def test_set_values_are_checked_against_field_types(preset, setting, message, no_loading, capsys):
    assert main(["a fox", "--preset", preset, "--set", setting, *TINY]) == 2
    err = _error(capsys)
    assert message in err
    assert "not supported between instances" not in err


def test_set_values_are_converted():
    config, values = check_preset(
        "draft+taylorseer",
        {"sparsity": "0.5", "patch": "4,32", "dense_layers": "none", "lite": "yes", "distance": "'step'"},
    )
    assert values == {"sparsity": 0.5, "patch": (4, 32), "dense_layers": None, "lite": True, "distance": "step"}
    assert config.attention.patch == (4, 32) and config.cache.lite is True
    settings = {"residual_layers": "0,2", "residual_dtype": "bfloat16", "window_frames": "-1"}
    _, values = check_preset("rettention", settings)
    assert values == {"residual_layers": (0, 2), "residual_dtype": "bfloat16", "window_frames": -1}
    # --set threshold=T: a number (adaptive), none (the fixed schedule) or auto (the model's value)
    for text, want in (("0.25", 0.25), ("none", None), ("auto", "auto")):
        config, values = check_preset("taylorseer", {"threshold": text, "signal": "change"})
        assert values == {"threshold": want, "signal": "change"} and config.cache.threshold == want


def test_unknown_parameter_names_the_valid_ones(no_loading, capsys):
    assert main(["a fox", "--set", "decy=0.5", *TINY]) == 2
    err = _error(capsys)
    assert "unknown parameter 'decy' for preset 'radial' (did you mean 'decay'?)" in err and "dense_layers" in err


# -------------------------------------------------------------------------------------------------- presets


def test_unknown_preset_is_one_clear_message(no_loading, capsys):
    assert main(["a fox", "--preset", "turbo", *TINY]) == 2
    err = _error(capsys)
    assert err.count("turbo") == 1  # not "preset 'turbo': unknown preset 'turbo'"
    assert "unknown preset 'turbo'; available presets: " in err
    for name in accel.list_presets():
        assert name in err
    assert "diffusion-fast presets" in err


def test_unknown_preset_did_you_mean(no_loading, capsys):
    assert main(["a fox", "--preset", "radail+taylorseer", *TINY]) == 2
    assert "unknown preset 'radail' (did you mean 'radial'?)" in _error(capsys)


# ---------------------------------------------------------------------------------------- mistyped commands


@pytest.mark.parametrize(
    "argv,command",
    [(["modles"], "models"), (["bnech", "--presets", "radial"], "bench"), (["-q", "calibrat"], "calibrate")],
)
def test_mistyped_subcommand_is_not_rendered(argv, command, no_loading, capsys, tmp_path):
    assert main(argv) == 2
    err = _error(capsys)
    word = next(a for a in argv if not a.startswith("-"))
    assert f"{word!r} is not a command; did you mean `diffusion-fast {command}`?" in err
    assert f"`diffusion-fast render {word}`" in err  # how to render that prompt anyway
    assert listing(tmp_path) == []


def test_one_word_prompts_still_render(no_loading, capsys):
    # Only the extension is wrong: the words themselves were accepted as prompts.
    assert main(["fox", "-o", "out.avi", *TINY]) == 2
    assert "unknown output extension" in _error(capsys)
    assert main(["render", "modles", "-o", "out.avi", *TINY]) == 2  # the way out the message gives
    assert "unknown output extension" in _error(capsys)


# ------------------------------------------------------------------------------------------ AccelError exits


@pytest.mark.parametrize(
    "error,code",
    [
        ("accel.errors:PlanError", 1),
        ("accel.errors:ConfigError", 2),
        ("accel.errors:UnsupportedModelError", 2),
        ("accel.errors:StateError", 1),
        ("accel.cli.output:OutputError", 2),
    ],
)
def test_every_accel_error_is_one_line(error, code, monkeypatch, capsys):
    import importlib

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)

    def fail(args):
        raise cls("first line\nsecond line")

    monkeypatch.setattr(cli_render, "cmd_render", fail)
    assert main(["a fox"]) == code
    assert _error(capsys) == "diffusion-fast: error: first line; second line\n"


def test_model_errors_exit_by_kind(no_loading, capsys, tmp_path):
    assert main(["a fox", "--model", "no-such-model"]) == 2  # the value itself is wrong
    assert "unknown model 'no-such-model'" in _error(capsys)
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text("{not json")
    assert main(["a fox", "--model", str(folder)]) == 1  # exists, cannot be read
    assert "cannot read" in _error(capsys)


# --------------------------------------------------------------------------------------- Sparse-vDiT plans


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    from accel.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-wan")
    tiny_pipeline("wan", **TINY_RANDOM_WAN_CONFIG).save_pretrained(folder)
    return folder


def test_missing_plan_is_an_error_before_loading(no_loading, capsys, tmp_path):
    assert main(["a fox", "--preset", "sparse-vdit", *SIZE, *SMALL, "-o", "a.gif"]) == 1
    err = _error(capsys)
    assert "no Sparse-vDiT plan for this model at 3x4x8 latent tokens, 3 steps" in err
    assert "`diffusion-fast calibrate --height 64 --width 128 --frames 9 --steps 3 --set block_size=16`" in err
    assert "--set plan=PATH" in err and "pass plan=PATH" not in err
    assert "random weights" not in err  # the embedded model's note: printed only after every check passed
    assert listing(tmp_path) == []


def test_missing_plan_of_a_local_folder(wan_folder, no_loading, capsys):
    assert main(["a fox", "--model", str(wan_folder), "--preset", "sparse-vdit", *SIZE, *SMALL]) == 1
    err = _error(capsys)
    assert "no Sparse-vDiT plan for this model" in err and f"--model {wan_folder}" in err


def test_plan_of_another_step_count_is_named(no_loading, capsys, tmp_path):
    from accel.cli.sizes import token_grid
    from accel.methods.sparse_vdit import plan_filename

    source = resolve_model("tiny-random-wan")
    models = {n: source.spec.architecture_key(m) for n, m in source.transformer_skeletons().items()}
    other = plan_filename(models, token_grid(source.spec, True, 9, 64, 128), 4)
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / other).write_text("{}")
    assert main(["a fox", "--preset", "sparse-vdit", *SIZE, *SMALL]) == 1
    err = _error(capsys)
    assert "3 steps" in err and f"this model's plans there: {other}" in err


def test_missing_plan_file(no_loading, capsys):
    assert main(["a fox", "--preset", "sparse-vdit", *SIZE, *SMALL, "--set", "plan=mine.json"]) == 1
    err = _error(capsys)
    assert "--set plan=mine.json: no such plan file" in err and "-o mine.json" in err


def test_invalid_plan_file(no_loading, capsys, tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"format": "something else"}))
    assert main(["a fox", "--preset", "sparse-vdit", *SIZE, *SMALL, "--set", "plan=mine.json"]) == 1
    assert "not a Sparse-vDiT plan" in _error(capsys)


@pytest.mark.parametrize("source", ["embedded", "folder"])
def test_plan_key_without_weights_equals_the_loaded_models(source, wan_folder):
    """The check reads the same architecture key the preset computes on the loaded transformer."""
    src = resolve_model("tiny-random-wan" if source == "embedded" else str(wan_folder))
    skeletons = src.transformer_skeletons()
    assert set(skeletons) == {"transformer"} and skeletons["transformer"].device.type == "meta"
    pipe = EMBEDDED["tiny-random-wan"].build()
    assert src.spec.architecture_key(skeletons["transformer"]) == src.spec.architecture_key(pipe.transformer)


def test_no_plan_needed_when_every_step_is_dense(capsys, tmp_path):
    args = ["a fox", "--preset", "sparse-vdit", *SIZE, *SMALL, "--set", "dense_step_fraction=1.0", "-o", "a.gif"]
    assert main([*args, "-q"]) == 0
    line = capsys.readouterr().out
    assert "saved a.gif" in line and "| 0 sparse," in line
    assert listing(tmp_path) == ["a.gif"]


# ------------------------------------------------------------------------------------- kernel-compile notice

GRID = ["--frames", "33", "--height", "64", "--width", "64", "--steps", "3", "--set", "block_size=16"]  # 9 blocks


@pytest.mark.parametrize(
    "args,armed",
    [
        (["--preset", "dense", *TINY], False),
        (TINY, False),  # 48 tokens: shorter than radial's minimum block count, every call dense
        ([*GRID, "--set", "dense_step_fraction=1.0"], False),  # every step in the dense warm-up
        ([*GRID, "--set", "dense_layers=2"], False),  # both layers dense
        (["--preset", "taylorseer", *GRID[:-2]], False),  # a cache alone compiles nothing
        (GRID, True),
        (["--preset", "draft+taylorseer", *GRID[:-2]], False),  # 144 tokens: two 128-token blocks, too few
        (["--preset", "draft+taylorseer", "--height", "256", "--width", "256", "--steps", "3"], True),  # 18 blocks
    ],
)
def test_compile_notice_is_armed_only_when_sparse_calls_can_run(args, armed, monkeypatch, capsys):
    """The notice waits for a compile to start, and only when the shared rules (steps, layers, sequence length)
    leave any call that could be sparse; nothing is said up front."""
    from torch._dynamo.callback import callback_handler

    registered = []
    monkeypatch.setattr(callback_handler, "register_start_callback", registered.append)
    monkeypatch.setattr(callback_handler, "remove_start_callback", lambda fn: None)
    monkeypatch.setattr(cli_render, "_render_all", lambda *a, **k: 0)  # stop before the denoising loop
    assert main(["a fox", "--device", "cpu", "-o", "a.mp4", *args]) == 0
    assert len(registered) == int(armed)
    assert cli_render.COMPILE_NOTICE not in capsys.readouterr().err


def test_compile_notice_when_a_kernel_compiles(tmp_path):
    """In fresh processes: said when sparse calls ran on a compiled kernel (FlexAttention; CPU's default sdpa backend
    compiles nothing), silent when the method kept every call dense by its own rule (a radial mask denser than
    max_density). The notice depends on the calls, not on whether
    inductor's cache is warm, so the processes share the default cache (a cold one cost 20 s here)."""
    from .conftest import run_cli

    sparse = run_cli("a fox", *GRID, "--set", "backend=flex", "--device", "cpu", "-o", "a.mp4", cwd=tmp_path)
    assert sparse.returncode == 0, sparse.stderr
    assert cli_render.COMPILE_NOTICE in sparse.stderr and "| 0 sparse," not in sparse.stdout
    dense = run_cli("a fox", *GRID, "--set", "max_density=0.2", "--device", "cpu", "-o", "b.mp4", cwd=tmp_path)
    assert dense.returncode == 0, dense.stderr
    assert cli_render.COMPILE_NOTICE not in dense.stderr and "| 0 sparse," in dense.stdout


def test_summary_says_what_the_adaptive_cache_predicted():
    from accel.cli.runner import attention_text

    adaptive = {"cache:full_steps": 24, "cache:computed": 216, "cache:predicted_steps": 16, "cache:predicted": 144}
    assert attention_text(adaptive) == "cache: adaptive, 16 of 40 forwards predicted, 216 computed, 144 predicted"
    assert attention_text({"cache:computed": 6, "cache:predicted": 3}) == "cache: 6 computed, 3 predicted"
