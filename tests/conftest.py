"""Test session set-up.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on before triton is
first imported; GPU-only tests carry the ``gpu`` marker and are skipped here.
"""

import os

# Bitwise comparisons (disable is bit-identical, consecutive generations equal a fresh pipeline's, ...) must hold on a
# busy machine. MKL and OpenMP may otherwise hand a kernel fewer threads while the machine is loaded (dynamic
# adjustment), which changes reduction orders and the last bits of a sum; with a fixed thread count every kernel is
# deterministic run to run. Set before torch loads MKL; CLI subprocesses inherit it.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Never-slower decisions read the typed efficiency table, not one measured on this (possibly busy) machine, so a
# test's sparse/dense outcome does not depend on timing. tests/methods/test_efficiency.py measures with fakes.
os.environ.setdefault("ACCEL_EFFICIENCY", "typed")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
