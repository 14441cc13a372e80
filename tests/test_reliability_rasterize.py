"""Reliability of `rasterize` (issue 19, item 1): the validation matrix.

Wrong rank / shape, dtype, mixed devices ('meta' tensors stand in for a second device on a CPU-only
machine; the `cuda` tests use a real one), non-contiguous and expanded views (same result as
contiguous inputs), empty tensors (empty outputs), NaN / Inf inputs (a defined output, never a
crash). Every error case asserts the error type and that the message names the argument.
"""
import subprocess
import sys

import pytest
import torch

import ffavatar_kernels as fk
from ffavatar_kernels import _ext
from ffavatar_kernels.reference.rasterize import rasterize as rasterize_ref
from reliability_helpers import INF, NAN, NONFINITE, _params, _raises
from test_rasterize_helpers import make_scene

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")


# ================================================================================================
# rasterize
# ================================================================================================
def _scene(**kw):
    kw.setdefault("dtype", torch.float32)
    return make_scene(**{"N": 20, "C": 2, "W": 24, "H": 16, **kw})


def _rset(key, fn):
    return lambda s: s.__setitem__(key, fn(s[key]))


RAS_BAD = [
    ("means_1d", _rset("means", lambda t: t.reshape(-1)), ValueError, "means"),
    ("means_4d", _rset("means", lambda t: t[None, None]), ValueError, "means"),
    ("means_list", _rset("means", lambda t: t.tolist()), TypeError, "means"),
    ("means_half", _rset("means", lambda t: t.half()), TypeError, "means"),
    ("means_int", _rset("means", lambda t: t.int()), TypeError, "means"),
    ("quats_3", _rset("quats", lambda t: t[:, :3]), ValueError, "quats"),
    ("quats_int", _rset("quats", lambda t: t.int()), TypeError, "quats"),
    ("scales_wrong_N", _rset("scales", lambda t: t[:-1]), ValueError, "scales"),
    ("scales_float64", _rset("scales", lambda t: t.double()), TypeError, "scales"),
    ("opacities_2d", _rset("opacities", lambda t: t[:, None]), ValueError, "opacities"),
    ("opacities_wrong_N", _rset("opacities", lambda t: t[:3]), ValueError, "opacities"),
    ("colors_wrong_N", _rset("colors", lambda t: t[:2]), ValueError, "colors"),
    ("colors_wrong_C", _rset("colors", lambda t: torch.rand(3, 20, 3)), ValueError, "colors"),
    ("colors_1d", _rset("colors", lambda t: t[:, 0]), ValueError, "colors"),
    ("colors_4d_unbatched", _rset("colors", lambda t: t[None, None]), ValueError, "colors"),
    ("colors_list", _rset("colors", lambda t: t.tolist()), TypeError, "colors"),
    ("viewmats_3x4", _rset("viewmats", lambda t: t[:, :3]), ValueError, "viewmats"),
    ("viewmats_2d", _rset("viewmats", lambda t: t[0]), ValueError, "viewmats"),
    ("Ks_wrong_C", _rset("Ks", lambda t: t[:1]), ValueError, "Ks"),
    ("Ks_2x2", _rset("Ks", lambda t: t[:, :2, :2]), ValueError, "Ks"),
    ("Ks_float64", _rset("Ks", lambda t: t.double()), TypeError, "Ks"),
    ("width_0", _rset("width", lambda t: 0), ValueError, "width"),
    ("height_negative", _rset("height", lambda t: -1), ValueError, "height"),
    ("width_float", _rset("width", lambda t: 24.0), TypeError, "width"),
    ("width_str", _rset("width", lambda t: "24"), TypeError, "width"),
    ("means_meta", _rset("means", lambda t: t.to("meta")), ValueError, "means on meta"),
    ("quats_meta", _rset("quats", lambda t: t.to("meta")), ValueError, "quats on meta"),
    ("colors_meta", _rset("colors", lambda t: t.to("meta")), ValueError, "colors on meta"),
    ("viewmats_meta", _rset("viewmats", lambda t: t.to("meta")), ValueError, "viewmats on meta"),
    ("Ks_meta", _rset("Ks", lambda t: t.to("meta")), ValueError, "Ks on meta"),
    ("width_2_31", _rset("width", lambda t: 2**31), ValueError, "width"),
    ("width_2_40", _rset("width", lambda t: 2**40), ValueError, "width"),
    ("height_past_max", _rset("height", lambda t: 32769), ValueError, "height"),
]

RAS_BAD_KW = [
    ("render_mode", dict(render_mode="D"), ValueError, "render_mode"),
    ("rasterize_mode", dict(rasterize_mode="mip"), ValueError, "rasterize_mode"),
    ("tile_size_0", dict(tile_size=0), ValueError, "tile_size"),
    ("tile_size_33", dict(tile_size=33), ValueError, "tile_size"),
    ("eps2d_negative", dict(eps2d=-0.1), ValueError, "eps2d"),
    ("eps2d_inf", dict(eps2d=INF), ValueError, "eps2d"),
    ("near_nan", dict(near_plane=NAN), ValueError, "near_plane"),
    ("far_nan", dict(far_plane=NAN), ValueError, "far_plane"),
    ("near_after_far", dict(near_plane=2.0, far_plane=1.0), ValueError, "near_plane"),
    ("backgrounds_channels", dict(backgrounds=torch.zeros(2, 4)), ValueError, "backgrounds"),
    ("backgrounds_wrong_C", dict(backgrounds=torch.zeros(3, 3)), ValueError, "backgrounds"),
    ("backgrounds_float64", dict(backgrounds=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "backgrounds"),
    ("backgrounds_meta", dict(backgrounds=torch.zeros(2, 3, device="meta")), ValueError, "backgrounds on meta"),
]


def _assert_raises_or_fail(exc, name, fn):
    """As _raises; returning normally is a test failure (pytest.fail.Exception, for the xfails)."""
    try:
        fn()
    except exc as e:
        assert name in str(e), f"error does not name {name!r}: {e}"
        return
    pytest.fail(f"no {exc.__name__} naming {name}")


@pytest.mark.parametrize("case,edit,exc,name", _params(RAS_BAD))
def test_rasterize_bad_arguments(case, edit, exc, name):
    s = _scene(N=4)
    edit(s)
    _assert_raises_or_fail(exc, name, lambda: fk.rasterize(**s))


@pytest.mark.parametrize("case,kw,exc,name", _params(RAS_BAD_KW))
def test_rasterize_bad_options(case, kw, exc, name):
    _raises(exc, name, lambda: fk.rasterize(**_scene(N=4), **kw))


def test_rasterize_batched_shape_mismatch_names_the_argument():
    s = _scene(B=2)
    _raises(ValueError, "Ks", lambda: fk.rasterize(**{**s, "Ks": s["Ks"][0]}))
    _raises(ValueError, "quats", lambda: fk.rasterize(**{**s, "quats": s["quats"][:1]}))
    _raises(ValueError, "colors", lambda: fk.rasterize(**{**s, "colors": s["colors"][:, None].expand(2, 3, 20, 3)}))


_CRASH = r"""
import torch, ffavatar_kernels as fk
means = torch.tensor([[0.0, 0.0, 2.0], [0.1, 0.0, 3.0]])
quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
Ks = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])
try:
    fk.rasterize(means, quats, torch.full((2, 3), 0.1), torch.full((2,), 0.8), torch.rand(2, 3), torch.eye(4)[None],
                 Ks, {W}, {H})
    print("RETURNED")
except ValueError as e:
    print("VALUEERROR", e)
"""


def _no_core_dump():
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.parametrize("W,H", [(2**32 + 16, 16), (16, 2**32 + 16)])
def test_rasterize_huge_width_subprocess(W, H):
    """Sizes past int32: a clear error naming the size, never a crash (run in a subprocess: this
    input once killed the process, C++ narrowed the width to int)."""
    p = subprocess.run([sys.executable, "-c", _CRASH.replace("{W}", str(W)).replace("{H}", str(H))],
                       capture_output=True, text=True, timeout=300, preexec_fn=_no_core_dump)
    assert p.returncode == 0, f"process died (rc {p.returncode}): {p.stderr[-500:]}"
    name = "width" if W > H else "height"
    assert "VALUEERROR" in p.stdout and name in p.stdout, p.stdout


def _strided(t):
    """Same values, non-contiguous: a view into a wider buffer."""
    buf = torch.empty(t.shape + (2,), dtype=t.dtype)
    buf[..., 0] = t
    v = buf[..., 0]
    assert not v.is_contiguous() or t.numel() <= 1
    return v


@pytest.mark.parametrize("batched", [False, True])
def test_rasterize_views_equal_contiguous(batched):
    s = _scene(B=2 if batched else None)
    bg = torch.rand(s["viewmats"].shape[:-2] + (3,))
    want = fk.rasterize(**s, backgrounds=bg)
    v = {k: (_strided(t) if isinstance(t, torch.Tensor) else t) for k, t in s.items()}
    got = fk.rasterize(**v, backgrounds=_strided(bg))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[2]["radii"], want[2]["radii"])


def test_rasterize_expanded_inputs_equal_materialized():
    s = _scene(C=3)
    e = dict(s)
    e["colors"] = torch.rand(1, 3).expand(20, 3)                     # one colour for all
    e["opacities"] = torch.tensor(0.7).expand(20)
    e["viewmats"] = s["viewmats"][:1].expand(3, 4, 4)                # one camera, three times
    e["Ks"] = s["Ks"][:1].expand(3, 3, 3)
    e["quats"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(20, 4)
    bg = torch.rand(1, 3).expand(3, 3)
    dense = {k: (t.contiguous() if isinstance(t, torch.Tensor) else t) for k, t in e.items()}
    a = fk.rasterize(**e, backgrounds=bg)
    b = fk.rasterize(**dense, backgrounds=bg.contiguous())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][0], a[0][2])  # the same camera gives the same image
    # batched: one scene expanded over B
    sb = _scene()
    e = {k: (t[None].expand((2,) + t.shape) if isinstance(t, torch.Tensor) else t) for k, t in sb.items()}
    a = fk.rasterize(**e)
    b = fk.rasterize(**{k: (t.contiguous() if isinstance(t, torch.Tensor) else t) for k, t in e.items()})
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][0], a[0][1])


@pytest.mark.parametrize("case", ["N0", "C0", "B0", "N0_batched"])
def test_rasterize_empty(case):
    if case == "N0":
        s = _scene(N=0)
    elif case == "N0_batched":
        s = _scene(N=0, B=2)
    elif case == "C0":
        s = _scene()
        s["viewmats"], s["Ks"] = s["viewmats"][:0], s["Ks"][:0]
    else:
        s = _scene(B=0)
    lead = s["viewmats"].shape[:-2]
    bg = torch.rand(lead + (3,))
    s["means"].requires_grad_(True)
    img, alpha, meta = fk.rasterize(**s, backgrounds=bg)
    assert img.shape == lead + (16, 24, 3) and alpha.shape == lead + (16, 24, 1)
    assert (alpha == 0).all() and torch.equal(img, bg[..., None, None, :].expand_as(img))
    assert meta["n_isects"] == 0
    (img.sum() + alpha.sum()).backward()
    assert s["means"].grad.shape == s["means"].shape


def _nan_target(s, key, value):
    """One non-finite element: Gaussian 0 (per-Gaussian tensors; moved into view first) or camera 0."""
    s["means"] = s["means"].clone()
    s["means"][0] = s["means"].new_tensor([0.0, 0.0, 4.0])
    s["opacities"] = s["opacities"].clone()
    s["opacities"][0] = 0.9
    s[key] = s[key].clone()
    s[key].view(-1)[0] = value


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", ["means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"])
def test_rasterize_nonfinite_inputs(key, value):
    """Defined output, never a crash: a non-finite geometry value culls its Gaussian (or, in a
    camera, every Gaussian of that camera), exactly as the float64 reference twin does; a
    non-finite colour makes only the pixels it is blended into non-finite. Gradients stay finite
    unless a colour is non-finite."""
    s = _scene(dtype=torch.float64, well_conditioned=True)
    _nan_target(s, key, value)
    bg = torch.rand(2, 3, dtype=torch.float64)
    img, alpha, meta = fk.rasterize(**s, backgrounds=bg)
    rimg, ralpha, _ = rasterize_ref(**s, backgrounds=bg)
    assert torch.isfinite(alpha).all()
    if key == "colors":
        assert not torch.isfinite(img).all()
        # non-finite only where the reference is too (the reference blends densely: a superset)
        assert not (~torch.isfinite(img) & torch.isfinite(rimg)).any()
        f = torch.isfinite(img) & torch.isfinite(rimg)
        assert torch.allclose(img[f], rimg[f], atol=1e-10)
        return
    assert torch.isfinite(img).all()
    assert torch.allclose(img, rimg, atol=1e-10) and torch.allclose(alpha, ralpha, atol=1e-10)
    if key in ("means", "scales", "opacities") or (key == "quats" and value != value):
        assert not meta["visibility"][:, 0].any()  # Gaussian 0 is culled in every camera
    if key in ("viewmats", "Ks"):
        assert not meta["visibility"][0].any()  # camera 0 sees nothing


@pytest.mark.parametrize("key", ["means", "scales", "opacities", "viewmats", "Ks"])
def test_rasterize_nonfinite_inputs_finite_gradients(key):
    s = _scene()
    _nan_target(s, key, NAN)
    diff = ("means", "quats", "scales", "opacities", "colors")
    ins = {k: (v.detach().clone().requires_grad_(True) if k in diff else v) for k, v in s.items()}
    img, alpha, _ = fk.rasterize(**ins)
    (img.sum() + alpha.sum()).backward()
    for k in diff:
        assert torch.isfinite(ins[k].grad).all(), k


@pytest.mark.parametrize("camera", ["behind", "zero_viewmat", "rank1_rotation", "nan_viewmat", "nan_K",
                                    "beyond_far"])
def test_rasterize_degenerate_cameras_give_the_background(camera):
    s = _scene()
    if camera == "behind":
        s["means"] = s["means"] * torch.tensor([1.0, 1.0, -1.0])
    elif camera == "zero_viewmat":
        s["viewmats"] = torch.zeros_like(s["viewmats"])
    elif camera == "rank1_rotation":
        s["viewmats"] = s["viewmats"].clone()
        s["viewmats"][:, :3, :3] = 1.0 / 3.0
    elif camera == "nan_viewmat":
        s["viewmats"] = torch.full_like(s["viewmats"], NAN)
    elif camera == "nan_K":
        s["Ks"] = torch.full_like(s["Ks"], NAN)
    kw = dict(far_plane=1.0) if camera == "beyond_far" else {}
    bg = torch.rand(2, 3)
    diff = ("means", "quats", "scales", "opacities", "colors")
    ins = {k: (v.detach().clone().requires_grad_(True) if k in diff else v) for k, v in s.items()}
    img, alpha, meta = fk.rasterize(**ins, backgrounds=bg, **kw)
    assert (alpha == 0).all() and torch.equal(img, bg[:, None, None, :].expand_as(img))
    assert not meta["visibility"].any() and meta["n_isects"] == 0
    (img.sum() + alpha.sum()).backward()
    for k in diff:
        assert torch.equal(ins[k].grad, torch.zeros_like(ins[k].grad)), k


@pytest.mark.parametrize("camera", ["zero_K", "zero_focal_x"])
def test_rasterize_singular_intrinsics_are_finite(camera):
    """A singular K is no error: the image is finite (every Gaussian collapses onto one line or
    point). Agreement with the reference twin is pinned in the next test."""
    s = _scene()
    s["Ks"] = s["Ks"].clone()
    if camera == "zero_K":
        s["Ks"].zero_()
    else:
        s["Ks"][:, 0, 0] = 0.0
    diff = ("means", "quats", "scales", "opacities", "colors")
    ins = {k: (v.detach().clone().requires_grad_(True) if k in diff else v) for k, v in s.items()}
    img, alpha, _ = fk.rasterize(**ins, backgrounds=torch.rand(2, 3))
    assert torch.isfinite(img).all() and torch.isfinite(alpha).all()
    (img.sum() + alpha.sum()).backward()
    for k in diff:
        assert torch.isfinite(ins[k].grad).all(), k


def test_rasterize_zero_K_matches_the_reference():
    s = _scene(dtype=torch.float64)
    s["Ks"] = torch.zeros_like(s["Ks"])
    a = fk.rasterize(**s)
    b = rasterize_ref(**s)
    assert torch.allclose(a[1], b[1], atol=1e-10)


@pytest.mark.cuda
def test_rasterize_cuda_cpu_mixed_devices_and_views():
    s = _scene()
    c = {k: (t.cuda() if isinstance(t, torch.Tensor) else t) for k, t in s.items()}
    for key in ("means", "quats", "colors", "viewmats", "Ks"):
        _raises(ValueError, f"{key} on cpu", lambda: fk.rasterize(**{**c, key: s[key]}))
    _raises(TypeError, "means", lambda: fk.rasterize(**{k: (t.double() if isinstance(t, torch.Tensor) else t)
                                                       for k, t in c.items()}))
    want = fk.rasterize(**c)
    got = fk.rasterize(**{k: (_strided(t.cpu()).cuda() if isinstance(t, torch.Tensor) else t) for k, t in c.items()})
    assert torch.equal(want[0], got[0])
    cb = dict(c, means=c["means"].clone())
    cb["means"][0] = NAN
    img = fk.rasterize(**cb)[0]
    assert torch.isfinite(img).all()


def test_raw_project_op_rejects_huge_image():
    """The compiled op checks the size too (a direct caller of torch.ops.ffavatar.rasterize_project)."""
    means = torch.tensor([[0.0, 0.0, 2.0]])
    args = (means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1), torch.full((1,), 0.8),
            torch.eye(4)[None], torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]]))
    with pytest.raises((ValueError, RuntimeError), match="width and height must be <= 32768"):
        torch.ops.ffavatar.rasterize_project(*args, 2**32 + 16, 16, 0.01, 1e10, 0.3, False, 16)


@pytest.mark.parametrize("kind", ["cuda_oom", "cpu_alloc"])
def test_out_of_memory_names_the_size(monkeypatch, kind):
    """An allocation failure inside the ops comes out as the same error type with the render's size."""
    r = sys.modules["ffavatar_kernels.rasterize"]   # (the package attribute is the function)
    s = _scene()

    def fail(*args, **kw):
        if kind == "cuda_oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: ...")
    monkeypatch.setattr(r, "_bin", fail)
    err = torch.OutOfMemoryError if kind == "cuda_oom" else RuntimeError
    with pytest.raises(err, match=r"out of memory rendering 20 Gaussians x 2 cameras at 24x16 on cpu"):
        fk.rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"],
                     24, 16)
    monkeypatch.setattr(r, "_bin", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other failure")))
    with pytest.raises(RuntimeError, match="^other failure$"):   # other errors pass through untouched
        fk.rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"],
                     24, 16)
