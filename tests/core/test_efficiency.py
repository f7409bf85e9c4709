"""The measured efficiency table: a slow backend is measured slow and its calls stay dense, a cached table is reused
without measuring, a corrupt cache is measured again, a pinned table is read as given, and the CLI reports it.

Timing enters only through a fake backend that is slower than dense attention by construction (it sleeps 50 ms per
call, where the tiny probes' dense calls take well under a millisecond, and then makes the real call), so the
outcome does not depend on how busy the machine is.
"""

import json
import time
from types import SimpleNamespace

import pytest
import torch
from accel.attention_kernels import block_sparse_attention

from accel.config import RadialConfig
from accel.methods import efficiency
from accel.methods.base import efficiency as backend_efficiency
from accel.methods.base import pays
from accel.state import Stats

HEAD_DIM = 8  # a key no other test uses


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """Measuring mode with an empty cache folder; the process-wide state is restored afterwards."""
    monkeypatch.setenv("ACCEL_EFFICIENCY_DIR", str(tmp_path))
    monkeypatch.setattr(efficiency, "_probe_shape", lambda device, dtype: ((512, 1024), 1))
    efficiency.set_mode("auto")
    yield tmp_path
    efficiency.set_mode(None)


def _slow(q, k, v, mask):
    time.sleep(0.05)
    return block_sparse_attention(q, k, v, mask, backend="sdpa")


def _count_measures(monkeypatch):
    calls = []
    real = efficiency.measure

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(efficiency, "measure", counting)
    return calls


def test_slow_backend_is_measured_slow_and_stays_dense(fresh, monkeypatch):
    monkeypatch.setitem(efficiency.EXTRA_BACKENDS, "slowfake", _slow)
    # A generous budget: on a loaded machine the fake, measured last, must still be reached.
    table = efficiency.table_for("cpu", torch.float32, HEAD_DIM, budget_s=60)
    assert table.source == "measured"
    assert table.values["slowfake"] < 0.2  # 50 ms against sub-millisecond dense calls
    assert set(table.measured["slowfake"][0]) == {"tokens", "density", "dense_s", "sparse_s"}
    assert set(table.by_tokens["slowfake"]) == {512, 1024}
    # A call on that backend at any density keeps dense attention, counted as not_faster.
    monkeypatch.setattr(efficiency, "TYPED", {**efficiency.TYPED})  # no typed fallback for the fake
    q = torch.zeros(1, 16, 1, HEAD_DIM)
    stats = Stats()
    monkeypatch.setattr("accel.methods.base.resolve_backend", lambda backend, device: backend)
    cfg = SimpleNamespace(backend="slowfake", min_speedup=1.1)  # a config's never-slower fields
    assert backend_efficiency("slowfake", q) == table.by_tokens["slowfake"][512]  # 16 tokens: the short probe's
    assert not pays(cfg, 0.2, q, stats)
    assert stats.counts["dense:not_faster"] == 1
    assert table.key in stats.as_dict()["efficiency"]


def test_cached_table_is_reused_without_measuring(fresh, monkeypatch):
    first = efficiency.table_for("cpu", torch.float32, HEAD_DIM)
    assert (fresh / f"{first.key}.json").is_file()
    efficiency.set_mode("auto")  # a new process: nothing in memory
    calls = _count_measures(monkeypatch)
    again = efficiency.table_for("cpu", torch.float32, HEAD_DIM)
    assert calls == [] and again.source == "cache" and again.values == first.values
    assert again.by_tokens == first.by_tokens  # int keys survive the JSON round trip


def test_corrupt_cache_is_measured_again(fresh, monkeypatch):
    key = efficiency.table_key(torch.device("cpu"), torch.float32, HEAD_DIM)
    for bad in ("{not json", json.dumps({"key": key, "values": {"sdpa": "fast"}}), json.dumps([1, 2])):
        (fresh / f"{key}.json").write_text(bad)
        efficiency.set_mode("auto")
        calls = _count_measures(monkeypatch)
        table = efficiency.table_for("cpu", torch.float32, HEAD_DIM)
        assert calls == [1] and table.source == "measured" and table.values["sdpa"] > 0
        monkeypatch.undo()
        monkeypatch.setenv("ACCEL_EFFICIENCY_DIR", str(fresh))
        monkeypatch.setattr(efficiency, "_probe_shape", lambda device, dtype: ((512, 1024), 1))
    # ... and the re-measured table replaced the corrupt file
    assert json.loads((fresh / f"{key}.json").read_text())["values"]["sdpa"] > 0


def test_remeasure_measures_again(fresh, monkeypatch):
    efficiency.table_for("cpu", torch.float32, HEAD_DIM)
    calls = _count_measures(monkeypatch)
    efficiency.set_mode("remeasure")
    efficiency.table_for("cpu", torch.float32, HEAD_DIM)
    efficiency.table_for("cpu", torch.float32, HEAD_DIM)  # once per key and process
    assert calls == [1]


def test_efficiency_follows_the_sequence_length():
    table = efficiency.EfficiencyTable("k", {"sdpa": 0.8}, "measured", by_tokens={"sdpa": {"2048": 0.4, "8192": 0.8}})
    assert table.get("sdpa", "cpu", 1024) == 0.4  # held below the shortest probe
    assert table.get("sdpa", "cpu", 4096) == pytest.approx(0.6)  # log-interpolated
    assert table.get("sdpa", "cpu", 32768) == 0.8  # held above the longest
    assert table.get("sdpa", "cpu") == 0.8 and table.get("reference", "cpu", 4096) == efficiency.REFERENCE_EFFICIENCY


def test_pinned_table_and_typed_mode(tmp_path, monkeypatch):
    pin = tmp_path / "pin.json"
    pin.write_text(json.dumps({"sdpa": 0.05, "flex": 0.9}))
    calls = _count_measures(monkeypatch)
    try:
        efficiency.set_mode(str(pin))
        table = efficiency.table_for("cpu", torch.float32, HEAD_DIM)
        assert table.source == "pinned" and table.values == {"sdpa": 0.05, "flex": 0.9}
        q = torch.zeros(1, 16, 1, HEAD_DIM)
        # auto picks the most efficient backend of the table
        from accel.methods.base import kernel_backend

        assert kernel_backend("auto", q) == "flex"
        assert not pays(RadialConfig(backend="sdpa"), 0.5, q, Stats())
        efficiency.set_mode("typed")
        assert efficiency.table_for("cpu", torch.float32, HEAD_DIM).values["sdpa"] == efficiency.TYPED[("cpu", "sdpa")]
        with pytest.raises(ValueError, match="efficiency mode"):
            efficiency.set_mode("fastest")
    finally:
        efficiency.set_mode(None)
    assert calls == []


def test_cli_efficiency_command_measures_once_and_says_so(fresh, capsys):
    from accel.cli import main

    out_json = fresh / "table.json"
    args = ["efficiency", "--device", "cpu", "--head-dim", str(HEAD_DIM), "--efficiency", "auto"]
    assert main([*args, "--json", str(out_json)]) == 0
    printed = capsys.readouterr()
    assert "measuring sparse attention speed" in printed.err
    assert "| sdpa |" in printed.out and "(measured" in printed.out
    pinned = json.loads(out_json.read_text())
    assert pinned["values"]["sdpa"] > 0
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "measuring" not in printed.err and "(cache" in printed.out
