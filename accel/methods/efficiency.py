"""The efficiency table: how fast each sparse backend runs per kept block against the device's own dense attention,
measured on the device in use.

A call that keeps a fraction ``d`` of the blocks costs about ``d / efficiency`` of the dense call, so a method's
"does sparsity pay here" decision (:func:`accel.methods.base.pays`) reads ``efficiency[backend]`` from the table of
the call's (device, torch version, dtype, head dim).

On first use of such a key a micro-benchmark (:func:`measure`, about 3 seconds at most) times dense SDPA against
each backend the device can run, on banded masks (a local window plus a sink, the shape of radial and Re-ttention
masks) at two densities and two sequence lengths, and caches the table on disk beside the calibration plans:
``$ACCEL_EFFICIENCY_DIR`` or ``~/.cache/diffusion-fast/efficiency/<key>.json``. A corrupt or foreign file there is
measured again, never an error.

``ACCEL_EFFICIENCY`` (or :func:`set_mode`, which the CLI's ``--efficiency`` flag calls):

- unset or ``auto``: the cached table, else measure once and cache it;
- ``remeasure``: measure again (once per key and process) and overwrite the cache;
- ``typed``: the built-in typed table below, never measured (reproducible decisions; the test suite uses it);
- a path to a JSON file: that table, pinned (the format :meth:`EfficiencyTable.to_json` writes, or a plain
  ``{"backend": efficiency}`` mapping).

Backends the budget did not reach (a compile that would take longer, such as FlexAttention's on CPU) keep the typed
value and are listed as such in the table's ``unmeasured``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accel.attention_kernels import BlockMask, block_sparse_attention

logger = logging.getLogger("accel")

# Typed values: what the table falls back to for a backend not measured on this device. CPU numbers come from
# benchmarks/bench_attention.py on the 2-core development machine; CUDA numbers are provisional until a GPU
# session measures them. "reference" is the dense fp32 oracle and never pays.
TYPED = {
    ("cpu", "sdpa"): 0.6,
    ("cpu", "flex"): 0.45,
    ("cpu", "gather"): 0.35,
    ("cuda", "triton"): 0.8,
    ("cuda", "flex"): 0.6,
    ("cuda", "sdpa"): 0.6,
}
DEFAULT_EFFICIENCY = 0.5  # devices and backends with neither a measurement nor a typed value
REFERENCE_EFFICIENCY = 0.1
MODES = ("auto", "remeasure", "typed")
BUDGET_S = 3.0
# Backends measured on first use, per device type, in order (the budget may stop the list early).
MEASURED_BACKENDS = {"cpu": ("sdpa", "gather"), "cuda": ("triton", "sdpa", "flex")}
DENSITY_TARGETS = (0.5, 0.25)
REPEATS = 2  # timed calls per measurement, after one warm-up call; the faster counts (a busy machine only slows)


@dataclass
class EfficiencyTable:
    """Efficiency per backend for one (device, torch version, dtype, head dim) key."""

    key: str
    values: dict[str, float]
    source: str  # "measured", "cache", "pinned", "typed"
    measured: dict[str, list[dict]] = field(default_factory=dict)  # backend -> rows: tokens, density, dense_s, sparse_s
    unmeasured: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # backend -> {tokens: efficiency} at the probe lengths (``values`` holds the longest one's)
    by_tokens: dict[str, dict[int, float]] = field(default_factory=dict)

    def __post_init__(self):
        self.by_tokens = {b: {int(n): float(e) for n, e in v.items()} for b, v in self.by_tokens.items()}  # JSON keys

    def get(self, backend: str, device_type: str, tokens: int | None = None) -> float:
        """Efficiency of ``backend``; with ``tokens``, interpolated in log(tokens) between the probe lengths and held
        at the nearest one outside them (kernels run further from their steady state on short sequences)."""
        if backend == "reference":
            return REFERENCE_EFFICIENCY
        points = sorted(self.by_tokens.get(backend, {}).items())
        if tokens is not None and points:
            if tokens <= points[0][0]:
                return points[0][1]
            for (n0, e0), (n1, e1) in zip(points, points[1:], strict=False):
                if tokens <= n1:
                    w = math.log(tokens / n0) / math.log(n1 / n0)
                    return e0 + w * (e1 - e0)
            return points[-1][1]
        if backend in self.values:
            return self.values[backend]
        return TYPED.get((device_type, backend), DEFAULT_EFFICIENCY)

    def to_json(self) -> dict:
        return asdict(self)


_MODE: str | None = None
_TABLES: dict[str, EfficiencyTable] = {}
# Tests register extra backends to measure (name -> fn(q, k, v, mask) -> out); see tests/core/test_efficiency.py.
EXTRA_BACKENDS: dict[str, Callable] = {}


def set_mode(mode: str | None) -> None:
    """Override ``ACCEL_EFFICIENCY`` for this process: a mode of :data:`MODES`, a JSON path, or None (the env)."""
    global _MODE
    if mode is not None and mode not in MODES and not Path(mode).expanduser().is_file():
        raise ValueError(f"efficiency mode must be one of {MODES} or an existing JSON file, got {mode!r}")
    _MODE = mode
    _TABLES.clear()


def mode() -> str:
    return _MODE or os.environ.get("ACCEL_EFFICIENCY") or "auto"


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"
    return device.type


def table_key(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    return _table_key(device, dtype, head_dim, torch.get_num_threads())


@functools.lru_cache(maxsize=64)
def _table_key(device: torch.device, dtype: torch.dtype, head_dim: int, threads: int) -> str:
    # Cached: every attention call looks its table up, and the CUDA device name is a driver query.
    name = f"{device_label(device)}_torch{torch.__version__}_{str(dtype).removeprefix('torch.')}_d{head_dim}"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def cache_dir() -> Path:
    env = os.environ.get("ACCEL_EFFICIENCY_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffusion-fast" / "efficiency"


def forget(device, dtype: torch.dtype, head_dim: int) -> None:
    """Drop this process's table for the key (the next :func:`table_for` loads or measures again)."""
    _TABLES.pop(table_key(torch.device(device), dtype, head_dim), None)


def table_for(
    device,
    dtype: torch.dtype,
    head_dim: int,
    notify: Callable[[str], None] | None = None,
    remeasure: bool = False,
    budget_s: float = BUDGET_S,
) -> EfficiencyTable:
    """The table for this key, per :func:`mode` (measured at most once per key and process; ``remeasure`` forces a
    measurement unless the mode is ``typed`` or pinned)."""
    device = torch.device(device)
    key = table_key(device, dtype, head_dim)
    if key in _TABLES and not remeasure:
        return _TABLES[key]
    m = "remeasure" if remeasure and mode() == "auto" else mode()
    if m == "typed":
        table = EfficiencyTable(key, {b: v for (d, b), v in TYPED.items() if d == device.type}, "typed")
    elif m not in MODES:
        table = _pinned(Path(m).expanduser(), key)
    else:
        table = None if m == "remeasure" else _load(key)
        if table is None:
            say = notify or _NOTIFY[0]
            say(f"accel: measuring sparse attention speed on {device_label(device)} ({dtype}, head dim {head_dim}),"
                f" at most {budget_s:.0f} s, once; cached in {cache_dir()}")  # fmt: skip
            table = measure(device, dtype, head_dim, budget_s=budget_s)
            _save(table)
    _TABLES[key] = table
    return table


def _log(msg: str) -> None:
    logger.info(msg)


# The one-line notice on measuring; the CLI replaces it with a print (set_notifier).
_NOTIFY: list[Callable[[str], None]] = [_log]


def set_notifier(fn: Callable[[str], None] | None) -> None:
    _NOTIFY[0] = fn or _log


def _pinned(path: Path, key: str) -> EfficiencyTable:
    data = json.loads(path.read_text())
    values = data.get("values", data) if isinstance(data, dict) else None
    if not isinstance(values, dict) or not all(isinstance(v, int | float) for v in values.values()):
        raise ValueError(f"pinned efficiency table {path} must map backend names to numbers")
    return EfficiencyTable(key, {str(b): float(v) for b, v in values.items()}, "pinned")


def _load(key: str) -> EfficiencyTable | None:
    path = cache_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        table = EfficiencyTable(**data)
        if table.key != key or not all(isinstance(v, int | float) and v > 0 for v in table.values.values()):
            raise ValueError("foreign or invalid table")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        logger.warning("accel: efficiency cache %s unreadable (%s); measuring again", path, e)
        return None
    table.source = "cache"
    return table


def _save(table: EfficiencyTable) -> None:
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{table.key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(table.to_json(), indent=1))
        tmp.replace(d / f"{table.key}.json")
    except OSError as e:  # a read-only home must not stop a render
        logger.warning("accel: could not cache the efficiency table (%s)", e)


# --------------------------------------------------------------------------------------------------------------
# The micro-benchmark


def banded_mask(num_blocks: int, density: float, block_size: int, device) -> BlockMask:
    """A local window around the diagonal plus a first-block sink, widened until it keeps ``density`` of the blocks:
    the contiguous-run structure of radial and Re-ttention masks."""
    i = torch.arange(num_blocks, device=device)
    dist = (i[:, None] - i[None, :]).abs()
    for w in range(num_blocks):
        dense = (dist <= w) | (i[None, :] == 0)
        if dense.float().mean() >= density:
            break
    return BlockMask.from_dense(dense[None, None], block_size)


def _probe_shape(device: torch.device, dtype: torch.dtype) -> tuple[tuple[int, ...], int]:
    """(token lengths, heads) of the probe: a short and a long sequence, the long one near the kernels' steady
    state, both inside the budget."""
    if device.type == "cpu":
        return (2048, 8192), 2
    return (8192, 32768), 8


def _time(fn, device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn()`` after one warm-up call (which compiles, where a backend
    compiles)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(
    device, dtype: torch.dtype, head_dim: int, backends: dict[str, Callable] | None = None, budget_s: float = BUDGET_S
) -> EfficiencyTable:
    """Time dense SDPA and each backend on banded masks at two densities and two sequence lengths; efficiency at a
    length = mean over the densities of ``(t_dense / t_sparse) * density``. Backends run in order while one more
    fits ``budget_s`` (the rest keep their typed value). ``backends``: name -> ``fn(q, k, v, mask)``; default: the
    device's backends via :func:`block_sparse_attention` plus :data:`EXTRA_BACKENDS`."""
    device = torch.device(device)
    start = time.perf_counter()
    if backends is None:
        names = MEASURED_BACKENDS.get(device.type, ("sdpa",))
        backends = {b: _kernel_runner(b) for b in names}
        backends.update(EXTRA_BACKENDS)
    lengths, heads = _probe_shape(device, dtype)
    bs = 128
    g = torch.Generator(device=device).manual_seed(0)
    probes = []  # (tokens, q, k, v, masks, t_dense)
    for tokens in lengths:
        q, k, v = (torch.randn(1, tokens, heads, head_dim, generator=g, device=device).to(dtype) for _ in range(3))
        masks = [banded_mask(tokens // bs, d, bs, device) for d in DENSITY_TARGETS]

        def dense(q=q, k=k, v=v):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )

        probes.append((tokens, q, k, v, masks, _time(dense, device, REPEATS)))
    values: dict[str, float] = {}
    by_tokens: dict[str, dict[int, float]] = {}
    measured: dict[str, list[dict]] = {}
    unmeasured: list[str] = []
    last = 0.0  # seconds the previous backend took: a backend starts only if one like it still fits the budget
    for name, fn in backends.items():
        began = time.perf_counter()
        if began - start + last > budget_s:
            unmeasured.append(name)
            continue
        rows = []
        try:
            for tokens, q, k, v, masks, t_dense in probes:
                for m in masks:
                    t = _time(lambda m=m, fn=fn, q=q, k=k, v=v: fn(q, k, v, m), device, REPEATS)
                    rows.append({"tokens": tokens, "density": round(m.density, 4), "dense_s": t_dense, "sparse_s": t})
        except Exception as e:  # a backend that cannot run here is simply not available
            logger.info("accel: backend %s not measured (%s)", name, e)
            unmeasured.append(name)
            continue
        last = time.perf_counter() - began
        measured[name] = rows
        by_tokens[name] = {
            n: round(statistics.mean(r["dense_s"] / r["sparse_s"] * r["density"] for r in rows if r["tokens"] == n), 3)
            for n in lengths
        }
        values[name] = by_tokens[name][lengths[-1]]
    key = table_key(device, dtype, head_dim)
    seconds = round(time.perf_counter() - start, 2)
    return EfficiencyTable(key, values, "measured", measured, unmeasured, seconds, by_tokens)


def _kernel_runner(backend: str) -> Callable:
    def run(q, k, v, mask):
        return block_sparse_attention(q, k, v, mask, backend=backend)

    return run
