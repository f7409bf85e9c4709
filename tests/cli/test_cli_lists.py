"""`diffusion-fast presets` and `diffusion-fast models`: one line each, from the live registries."""

from __future__ import annotations

from accel.pipelines import supported_specs

import accel

from .conftest import run_cli


def test_presets_one_line_each(tmp_path):
    proc = run_cli("presets", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    presets = accel.list_presets()
    assert [ln.split()[0] for ln in lines] == list(presets)
    for line, (name, description) in zip(lines, presets.items(), strict=True):
        assert line.startswith(name) and line.endswith(description)


def test_models_lists_embedded_model_and_families(tmp_path):
    proc = run_cli("models", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("shapes-wan: ")
    assert "no download, trained" in lines[0] and "4,352 video tokens" in lines[0] and "flow matching" in lines[0]
    assert lines[1].startswith("tiny-random-wan: ")
    assert "no download" in lines[1] and "noise" in lines[1]
    specs = supported_specs()
    assert len(lines) == 2 + len(specs)
    for line, spec in zip(lines[2:], specs, strict=True):
        assert line.startswith(f"{spec.name}: ")
        for cls in spec.pipeline_classes:
            assert cls in line
        presets = [p for p in accel.supported_presets(spec) if p != "dense"]
        assert f"presets {', '.join(presets)} (" in line
        assert (", image, " in line) != spec.is_video
    wan = next(ln for ln in lines if ln.startswith("wan: "))
    assert "multiples of 16" in wan and "4k+1" in wan and "16 fps" in wan


def test_readme_models_table_is_the_registries():
    from pathlib import Path

    from accel.cli.lists import presets_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- presets-table:start -->\n")[1].split("\n<!-- presets-table:end -->")[0]
    assert table == presets_table(), (
        "regenerate the README table: python -c 'from accel.cli.lists import presets_table; print(presets_table())'"
    )
