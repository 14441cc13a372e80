"""ffavatar_kernels.build_info(): how the loaded compiled library was built (csrc/module.cpp)."""
import sys

import pytest
import torch

import ffavatar_kernels
from ffavatar_kernels import _ext

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")


def test_build_info_keys_and_types():
    info = ffavatar_kernels.build_info()
    assert info["loaded"] is True
    assert isinstance(info["torch_version"], str)
    assert isinstance(info["with_cuda"], bool)
    assert info["cuda_version"] is None or isinstance(info["cuda_version"], str)
    assert isinstance(info["cuda_architectures"], str)
    assert isinstance(info["ops"], list) and all(isinstance(n, str) for n in info["ops"])
    assert info["ops"] == sorted(info["ops"])
    for n in info["ops"]:  # every listed op is a registered torch op
        assert hasattr(torch.ops.ffavatar, n.split(".")[0]), n
    assert "build_info" in ffavatar_kernels.__all__ and "has_cuda_kernels" in ffavatar_kernels.__all__


def test_build_info_torch_version_matches_runtime():
    built = ffavatar_kernels.build_info()["torch_version"].split(".")[:2]
    assert built == torch.__version__.split("+")[0].split(".")[:2]


def test_with_cuda_agrees_with_the_registered_kernels():
    info = ffavatar_kernels.build_info()
    assert ffavatar_kernels.has_cuda_kernels() is info["with_cuda"]
    if info["with_cuda"]:
        assert info["cuda_version"] and info["cuda_architectures"]
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] == ""
    for n in info["ops"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ffavatar::{n}", "CUDA") == info["with_cuda"], n


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA torch may build the CUDA kernels")
def test_cpu_build_has_no_cuda_kernels():
    info = ffavatar_kernels.build_info()
    assert info["with_cuda"] is False and info["cuda_version"] is None and info["cuda_architectures"] == ""
    assert ffavatar_kernels.has_cuda_kernels() is False


def test_library_is_loaded_once_as_the_C_module():
    mod = sys.modules["ffavatar_kernels._C"]
    import ffavatar_kernels._C as again  # no second load (it would register the ops twice)
    assert again is mod and callable(mod.build_info)
    assert mod.build_info()["ops"] == ffavatar_kernels.build_info()["ops"]
