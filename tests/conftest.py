"""Shared test setup: `cuda` marker skips without a GPU; every test gets a fresh random seed."""
import os
import random
import sys

import pytest
import torch

# The repository root on sys.path: the GPU tests use the benchmark scenes (benchmarks/scenes.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Deterministic-mode tests (test_deterministic.py) need cuBLAS's deterministic workspace setting,
# which PyTorch reads once, at the process's first cuBLAS call: set it before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# Without a GPU, run the Triton kernels in the interpreter (must be set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Seed torch from fresh entropy for every test (FFAVATAR_SEED=n reproduces a failure)."""
    seed = int(os.environ.get("FFAVATAR_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        for k, v in item.user_properties:
            if k == "seed":
                item.add_report_section("call", "seed", f"FFAVATAR_SEED={v} reproduces this run")
