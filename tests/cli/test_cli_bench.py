"""`diffusion-fast bench`: dense and a preset on the same prompt and seed; table, JSON and plot."""

from __future__ import annotations

import json
import math

from PIL import Image

from .conftest import listing, run_cli


def test_bench_json_and_plot(tmp_path):
    # 64x64 px, 33 frames: 9 latent frames of 16 tokens; 16-token blocks so the radial mask is sparse at this size.
    proc = run_cli(
        "bench", "a red fox", "--presets", "radial", "--height", "64", "--width", "64", "--frames", "33",
        "--steps", "3", "--warmup", "0", "--repeats", "1", "--set", "block_size=16", "--set", "max_density=1.0",
        "--json", "bench.json", "--plot", "bench.png", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == ["bench.json", "bench.png"]
    table = proc.stdout.splitlines()
    assert table[0].split()[:3] == ["preset", "time", "s"]
    for col in ("speed-up", "s/step", "peak RSS", "PSNR dB", "SSIM", "attention calls"):
        assert col in table[0]
    assert table[2].startswith("dense") and table[3].startswith("radial")

    data = json.loads((tmp_path / "bench.json").read_text())
    env = data["environment"]
    for key in ("device", "device_name", "torch", "diffusers", "accel", "python"):
        assert env[key], key
    assert env["device"] == "cpu"
    assert data["model"]["name"] == "tiny-random-wan" and data["model"]["random_weights"] is True
    s = data["settings"]
    assert (s["height"], s["width"], s["frames"], s["steps"], s["seed"]) == (64, 64, 33, 3, 0)
    assert (s["warmup"], s["repeats"]) == (0, 1)
    assert "VmHWM" in data["metrics"]["peak_memory"] or "ru_maxrss" in data["metrics"]["peak_memory"]

    dense, radial = data["results"]
    assert dense["preset"] == "dense" and radial["preset"] == "radial"
    for row in (dense, radial):
        assert len(row["times_s"]) == 1 and row["time_s"] > 0
        assert row["s_per_step"] > 0 and row["steps"] == 3
        assert row["peak_memory_bytes"] > 50 * 2**20  # a torch process holds at least that much
        assert row["output_shape"] == [33, 64, 64, 3]
    assert dense["speedup"] == 1.0 and dense["config"] is None and dense["stats"] is None
    assert dense["identical_to_dense"] is True and dense["psnr_db"] is None and dense["ssim"] == 1.0
    assert math.isclose(radial["speedup"], dense["time_s"] / radial["time_s"])
    # The resolved config: the --set values and the Wan defaults accelerate() filled in.
    att = radial["config"]["attention"]
    assert att["method"] == "radial" and att["block_size"] == 16 and att["decay"] == 0.2 and att["sink"] is True
    st = radial["stats"]
    assert st["sparse"] > 0 and st["dense"] > 0  # sparse layers/steps ran; layer 0 and the first step stay dense
    assert st["sparse"] + st["dense"] + st.get("fallback", 0) == 3 * 2 * 2  # steps x CFG branches x layers
    # The approximation moved the output a little: finite PSNR, SSIM below 1 but close.
    assert radial["identical_to_dense"] is False
    assert radial["psnr_db"] is not None and radial["psnr_db"] > 10
    assert 0.5 < radial["ssim"] < 1.0

    with Image.open(tmp_path / "bench.png") as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
