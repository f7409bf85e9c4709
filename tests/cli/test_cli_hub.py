"""A Hub repo id without network fails fast with the message that says how to proceed offline.

Nothing here reaches the network: ``socket.create_connection`` (what both the reachability probe and the HTTP client
open connections with) is replaced, and huggingface_hub's downloads are watched.
"""

from __future__ import annotations

import socket

import pytest
import torch

from accel.cli import hub as cli_hub
from accel.cli import main
from accel.cli import models as cli_models

from .conftest import TINY, listing

hf_hub = pytest.importorskip("huggingface_hub")
REPO = "fake-org/not-a-real-model"


@pytest.fixture
def online_settings(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset (as for a newcomer), an empty Hugging Face cache, and a record of every download call."""
    import huggingface_hub.constants as hf_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    downloads = []
    real = hf_hub.hf_hub_download

    def watched(*args, **kwargs):
        downloads.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise AssertionError(f"a network download was attempted: {args} {kwargs}")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_hub, "hf_hub_download", watched)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return downloads, work


def test_unreachable_hub_fails_fast_with_the_offline_message(online_settings, monkeypatch, capsys):
    downloads, work = online_settings
    probes = []

    def black_hole(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise TimeoutError("timed out")  # what a dropped connection gives once `timeout` has passed

    monkeypatch.setattr(socket, "create_connection", black_hole)
    assert main(["a fox", "--model", REPO, "-o", "out.mp4", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffusion-fast: error: ") and err.count("\n") == 1, err
    for phrase in (
        f"cannot load model '{REPO}'",
        "not in the local Hugging Face cache",
        "Hugging Face Hub cannot be reached",
        f"no answer from huggingface.co:443 within {cli_hub.HUB_PROBE_TIMEOUT_S:g} s",
        f"hf download {REPO}",
        "--model /path/to/folder",
        "--model tiny-random-wan",
    ):
        assert phrase in err, f"{phrase!r} not in {err!r}"
    # Fast by construction: one short probe, then the local cache only (no HEAD request, no retries).
    assert len(probes) == 1 and probes[0][0] == ("huggingface.co", 443)
    assert 0 < probes[0][1] <= 5
    assert [d.get("local_files_only") for d in downloads] == [True]
    assert listing(work) == []


def test_refused_connection_is_unreachable_too(online_settings, monkeypatch, capsys):
    def refused(address, timeout=None, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert main(["a fox", "--model", REPO, *TINY]) == 1
    err = capsys.readouterr().err
    assert "Hugging Face Hub cannot be reached (huggingface.co:443: Connection refused)" in err
    assert "hf download" in err


def test_probe_goes_to_the_https_proxy(online_settings, monkeypatch):
    probes = []

    def black_hole(address, timeout=None, *args, **kwargs):
        probes.append(address)
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", black_hole)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert cli_hub.hub_unreachable() is not None
    assert probes == [("proxy.internal", 3128)]


def test_reachable_hub_asks_with_a_short_timeout(online_settings, monkeypatch, capsys):
    downloads, _ = online_settings

    class Connection:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None, *a, **k: Connection())
    asked = []

    def hub_download(repo, filename, **kwargs):
        asked.append(kwargs)
        raise hf_hub.errors.LocalEntryNotFoundError("connection failed")

    monkeypatch.setattr(hf_hub, "hf_hub_download", hub_download)
    assert main(["a fox", "--model", REPO, *TINY]) == 1
    assert "the Hub cannot be reached" in capsys.readouterr().err
    assert len(asked) == 1 and not asked[0].get("local_files_only")
    assert asked[0]["etag_timeout"] <= 10  # huggingface_hub's default; ours is shorter


def test_hf_hub_offline_skips_the_probe(online_settings, monkeypatch, capsys):
    downloads, _ = online_settings
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(*args, **kwargs):
        raise AssertionError("probed the network although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket, "create_connection", no_probe)
    assert main(["a fox", "--model", REPO, *TINY]) == 1
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and f"hf download {REPO}" in err
    assert [d.get("local_files_only") for d in downloads] == [True]


def test_offline_source_loads_weights_from_the_cache_only(monkeypatch):
    """A repo whose index is cached while the Hub is unreachable: the weights come from the cache as well."""
    seen = {}

    def from_pretrained(location, **kwargs):
        seen.update(kwargs, location=location)
        raise hf_hub.errors.LocalEntryNotFoundError("weights not cached")

    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", staticmethod(from_pretrained))
    source = cli_models.ModelSource(REPO, "hub", REPO, "WanPipeline", ("WanTransformer3DModel",), offline=True)
    with pytest.raises(cli_models.ModelError, match="not all in the local cache") as info:
        cli_models.load_pipeline(source, torch.float32)
    assert seen["local_files_only"] is True and seen["location"] == REPO
    assert "--model tiny-random-wan" in str(info.value)
