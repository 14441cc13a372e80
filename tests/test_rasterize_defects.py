"""rasterize: regression tests for fixed defects.

- rasterize_project_bwd takes the call's tile_size (it used to validate with a hard-coded 16): the
  autograd backward passes it, the op checks it, gradients at tile sizes 8 and 32 match the reference.
- The render launchers' largest channel chunk is cached per device (it was one process-wide value):
  CUDA renders at several tile sizes and channel counts on every visible GPU match the reference.
- The environment switches (csrc/common/env.h) are read at every call: toggling them in-process
  changes nothing in the results.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ffavatar_kernels import _ext
from ffavatar_kernels.rasterize import rasterize
from ffavatar_kernels.reference.rasterize import rasterize as rasterize_ref
from test_rasterize_helpers import cast, make_scene, rel, run_with_grads

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")

_KEYS = ("means", "quats", "scales", "opacities", "viewmats", "Ks")


def _has_cuda_rasterize() -> bool:
    return _ext.load() and torch.cuda.is_available() and \
        torch._C._dispatch_has_kernel_for_dispatch_key("ffavatar::rasterize_render", "CUDA")


needs_cuda_kernels = pytest.mark.skipif(not _has_cuda_rasterize(), reason="extension built without CUDA kernels")


class _RecordProjectBwd(TorchDispatchMode):
    """Records the arguments of every rasterize_project_bwd call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.ffavatar.rasterize_project_bwd.default:
            self.calls.append(args)
        return func(*args, **(kwargs or {}))


def _check_grads_vs_ref(scene, tile_size, tolerances, device="cpu", **kw):
    """The op's outputs and gradients (means, quats, scales, opacities, colors) vs the float64 reference."""
    ri, ra, _, rg = run_with_grads(rasterize_ref, scene, **kw)
    for dtype, ftol, gtol in tolerances:
        oi, oa, _, og = run_with_grads(rasterize, cast(scene, dtype, device), tile_size=tile_size, **kw)
        assert rel(oi, ri) < ftol and rel(oa, ra) < ftol, (dtype, tile_size, rel(oi, ri), rel(oa, ra))
        for k in rg:
            assert og[k] is not None and rel(og[k], rg[k]) < gtol, (dtype, tile_size, k, rel(og[k], rg[k]))


@pytest.mark.parametrize("tile_size", [8, 32])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_project_bwd_tile_size_grads_match_reference(tile_size, rasterize_mode):
    s = make_scene(N=40, C=2, W=45, H=37, D=3, well_conditioned=True)
    _check_grads_vs_ref(s, tile_size, ((torch.float64, 1e-12, 1e-10), (torch.float32, 1e-5, 1e-4)),
                        rasterize_mode=rasterize_mode)


@pytest.mark.parametrize("tile_size", [8, 32])
def test_autograd_passes_tile_size_to_project_bwd(tile_size):
    s = make_scene(N=20, C=2, W=30, H=22, D=3, dtype=torch.float32)
    s["means"].requires_grad_(True)
    img, alpha, _ = rasterize(**s, tile_size=tile_size)
    with _RecordProjectBwd() as rec:
        (img.sum() + alpha.sum()).backward()
    assert len(rec.calls) == 1
    args = rec.calls[0]
    assert args[11:14] == (30, 22, tile_size), args[11:14]  # width, height, tile_size


def test_project_bwd_op_checks_tile_size():
    ops = torch.ops.ffavatar
    s = make_scene(N=12, C=2, W=20, H=16, D=2)
    W, H = 20, 16
    u = [s[k] for k in _KEYS]
    m2, dp, cn, op, rr, _ = ops.rasterize_project(*u, W, H, 0.01, 1e10, 0.3, True, 8)
    g = [torch.rand_like(t) for t in (m2, dp, cn, op)]
    a = ops.rasterize_project_bwd(*u, rr, *g, W, H, 8, 0.3, True)
    b = ops.rasterize_project_bwd(*u, rr, *g, W, H, 32, 0.3, True)
    for x, y in zip(a, b):  # the projection's gradients do not depend on the tile size
        assert torch.equal(x, y)
    for bad in (0, 33, 64):
        with pytest.raises((ValueError, RuntimeError), match="tile_size"):
            ops.rasterize_project_bwd(*u, rr, *g, W, H, bad, 0.3, True)
    torch.library.opcheck(ops.rasterize_project_bwd, (*u, rr, *g, W, H, 32, 0.3, True),
                          test_utils=("test_schema", "test_faketensor"))


# ---- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("tile_size", [8, 32])
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_cuda_project_bwd_tile_size_grads_match_reference(tile_size, rasterize_mode):
    s = make_scene(N=40, C=2, W=45, H=37, D=3, well_conditioned=True)
    _check_grads_vs_ref(s, tile_size, ((torch.float32, 1e-5, 1e-4),), device="cuda", rasterize_mode=rasterize_mode)


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("tile_size,D", [(8, 3), (16, 40), (32, 33), (32, 3)])
def test_cuda_render_chunks_on_every_device(tile_size, D):
    # the largest channel chunk per block size is cached per device: on each GPU (and again on the
    # first, after the others filled their own entries) the render and its gradients match the reference
    s = make_scene(N=30, C=2, W=40, H=34, D=D, well_conditioned=True)
    devices = list(range(torch.cuda.device_count())) + [0]
    for dev in devices:
        with torch.cuda.device(dev):
            _check_grads_vs_ref(s, tile_size, ((torch.float32, 1e-5, 1e-4),), device=f"cuda:{dev}")


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_render_alternating_devices_agree():
    s = make_scene(N=50, C=2, W=64, H=48, D=35, dtype=torch.float32)
    outs = []
    for dev in (0, 1, 0, 1):
        img, alpha, _ = rasterize(**cast(s, None, f"cuda:{dev}"), tile_size=32)
        outs.append((img.cpu(), alpha.cpu()))
    for img, alpha in outs[1:]:
        assert rel(img, outs[0][0]) < 1e-6 and rel(alpha, outs[0][1]) < 1e-6


_SWITCHES = ("FFAVATAR_NO_SPLIT", "FFAVATAR_BIN_SYNC", "FFAVATAR_NO_BIN_GRAPH", "FFAVATAR_BIN_CUB_SORT")


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("switch", _SWITCHES)
def test_cuda_switches_toggle_in_process(switch, monkeypatch):
    # read at every call (csrc/common/env.h): set, then unset, in one process; same results each way
    s = make_scene(N=200, C=2, W=64, H=48, D=3, dtype=torch.float32, device="cuda")

    def run():
        out = run_with_grads(rasterize, s)
        torch.cuda.synchronize()
        return out

    base = [run() for _ in range(3)]  # the third call of the same sizes replays cached graphs
    monkeypatch.setenv(switch, "1")
    on = [run() for _ in range(3)]
    monkeypatch.setenv(switch, "0")
    off = run()
    for oi, oa, _, og in on + [off]:
        bi, ba, _, bg = base[0]
        assert rel(oi, bi) < 1e-6 and rel(oa, ba) < 1e-6, switch
        for k in bg:
            assert rel(og[k], bg[k]) < 1e-5, (switch, k)
