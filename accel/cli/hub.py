"""Hugging Face Hub access for the CLI: a fast reachability probe, offline mode and one file fetched (the messages
that say what to do offline live with the model resolution, accel.cli.models)."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
import urllib.request

HUB_PROBE_TIMEOUT_S = 3.0


def _hub_offline_set() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, in the environment or in huggingface_hub's constants."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hub_address() -> tuple[str, int]:
    """(host, port) a connection to the Hub goes to first: the HTTPS proxy when one is set, else the endpoint."""
    from huggingface_hub import constants

    proxy = urllib.request.getproxies().get("https") or urllib.request.getproxies().get("all")
    url = urllib.parse.urlsplit(proxy if proxy else constants.ENDPOINT)
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the Hub (or the HTTPS proxy) opens within ``timeout`` seconds, else why not
    (name resolution failed, refused, timed out). Cheap: one connection, no request, no retries."""
    host, port = _hub_address()
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return f"the Hugging Face Hub cannot be reached (no answer from {host}:{port} within {timeout:g} s)"
    except OSError as e:
        return f"the Hugging Face Hub cannot be reached ({host}:{port}: {e.strerror or e})"
    conn.close()
    return None


def _offline_reason() -> str | None:
    """Why only the local cache can be used (HF_HUB_OFFLINE, or the Hub does not answer), or None when online."""
    return "HF_HUB_OFFLINE is set" if _hub_offline_set() else hub_unreachable()


@contextlib.contextmanager
def _hub_offline_mode(offline: bool):
    """huggingface_hub in offline mode while the block runs, when ``offline``. Passing ``local_files_only`` is not
    enough: huggingface_hub still fetches a user-agent registry from the Hub (a few seconds' timeout) unless its
    offline flag is set, and it reads that flag from the environment only when imported."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_file(repo: str, filename: str, offline: bool) -> str:
    from huggingface_hub import hf_hub_download

    if offline:
        with _hub_offline_mode(True):
            return hf_hub_download(repo, filename, local_files_only=True)
    return hf_hub_download(repo, filename, etag_timeout=HUB_PROBE_TIMEOUT_S * 2)
