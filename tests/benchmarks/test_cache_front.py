"""benchmarks/bench_cache_front.py's bookkeeping (the renders themselves are the benchmark, not a test)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import bench_cache_front as front  # noqa: E402


def _row(name, blocks, psnr, kind="ours"):
    return {"name": name, "kind": kind, "block_speedup": blocks, "psnr_min": psnr, "psnr_mean": psnr,
            "block_forwards": int(160 / blocks), "speedup": blocks, "speedup_rounds": [blocks], "ssim_min": 0.99,
            "settings": {}}  # fmt: skip


def test_the_front_keeps_only_undominated_points():
    rows = [_row("dense", 1.0, float("inf"), "dense"), _row("a", 2.0, 30.0), _row("b", 1.5, 35.0),
            _row("c", 1.5, 29.0), _row("d", 2.0, 30.0, "cache-dit"), _row("e", 3.0, 20.0)]  # fmt: skip
    assert front.pareto(rows) == {"a", "b", "d", "e"}  # c is beaten by a and b; a and d tie, neither beats the other


def test_configurations_name_ours_and_every_peer():
    configs = front.configurations(20)
    kinds = {kind for kind, _ in configs.values()}
    assert {"dense", "ours", "diffusers-taylorseer", "diffusers-fbc", "diffusers-mag", "cache-dit"} == kinds
    assert configs["ours-default"] == ("ours", {})  # the preset as users get it
    assert configs["ours-interval5"][1]["threshold"] is None  # the fixed schedule, explicitly
    rows = [_row("dense", 1.0, float("inf"), "dense"), _row("ours-default", 1.4, 36.0)]
    for r in rows:
        r["on_front"] = r["name"] in front.pareto(rows)
    text = front.markdown({"environment": {"device": "cpu", "torch": "x", "diffusers": "y"}, "mode": "long",
                           "prompts": ["p"], "rounds": 1, "rows": rows})  # fmt: skip
    assert "| *ours-default | 114 | x1.40 |" in text
