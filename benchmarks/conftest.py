"""Benchmarks run on the GPU; without one they are skipped. Results go to pytest-benchmark's JSON."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="benchmarks need a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
