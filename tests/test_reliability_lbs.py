"""Reliability of `flame_lbs / skin_gaussians` (issue 19, item 1): the validation matrix.

Wrong rank / shape, dtype, mixed devices ('meta' tensors stand in for a second device on a CPU-only
machine; the `cuda` tests use a real one), non-contiguous and expanded views (same result as
contiguous inputs), empty tensors (empty outputs), NaN / Inf inputs (a defined output, never a
crash). Every error case asserts the error type and that the message names the argument.
"""

import pytest
import torch

import ffavatar_kernels as fk
from ffavatar_kernels import _ext
from ffavatar_kernels.reference import flame_lbs as ref
from reliability_helpers import NAN, NONFINITE, _params, _raises
from test_flame_lbs import make_anchors, make_inputs, make_model, model_args

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")


# ================================================================================================
# flame_lbs / skin_gaussians
# ================================================================================================
V, J, S, B, N = 30, 5, 4, 2, 10


def _lbs_setup(dtype=torch.float64, B=B, N=N):
    m = make_model(V, J, S, dtype=dtype)
    betas, pose = make_inputs(B, J, S, dtype=dtype)
    idx, aw = make_anchors(N, V, dtype=dtype)
    off = torch.randn(N, 3, dtype=dtype) * 1e-2
    q = torch.randn(N, 4, dtype=dtype)
    return dict(m=m, betas=betas, pose=pose, idx=idx, aw=aw, off=off, q=q)


def _lbs(d, **kw):
    return fk.flame_lbs(d["betas"], d["pose"], *model_args(d["m"]), **kw)


def _skin(d, **kw):
    return fk.skin_gaussians(d["betas"], d["pose"], *model_args(d["m"]), d["idx"], d["aw"], d["off"], d["q"], **kw)


def _set_model(key, fn):
    return lambda d: d["m"].__setitem__(key, fn(d["m"][key]))


def _set(key, fn):
    return lambda d: d.__setitem__(key, fn(d[key]))


# (id, edit of the inputs, error type, argument named)
LBS_BAD = [
    ("betas_1d", _set("betas", lambda t: t[0]), ValueError, "betas"),
    ("betas_3d", _set("betas", lambda t: t[None]), ValueError, "betas"),
    ("betas_wrong_S", _set("betas", lambda t: t[:, :3]), ValueError, "betas"),
    ("betas_list", _set("betas", lambda t: t.tolist()), TypeError, "betas"),
    ("betas_half", _set("betas", lambda t: t.half()), TypeError, "betas"),
    ("betas_float32_model_float64", _set("betas", lambda t: t.float()), TypeError, "betas"),
    ("pose_wrong_J", _set("pose", lambda t: t[:, :14]), ValueError, "pose"),
    ("pose_wrong_B", _set("pose", lambda t: t[:1]), ValueError, "pose"),
    ("pose_mats_3x4", _set("pose", lambda t: torch.zeros(B, J, 3, 4, dtype=t.dtype)), ValueError, "pose"),
    ("pose_5d", _set("pose", lambda t: torch.zeros(B, J, 3, 3, 1, dtype=t.dtype)), ValueError, "pose"),
    ("pose_int", _set("pose", lambda t: t.int()), TypeError, "pose"),
    ("pose_list", _set("pose", lambda t: t.tolist()), TypeError, "pose"),
    ("v_template_4_cols", _set_model("v_template", lambda t: torch.zeros(V, 4, dtype=t.dtype)), ValueError,
     "v_template"),
    ("v_template_wrong_V", _set_model("v_template", lambda t: t[:-1]), ValueError, "v_template"),
    ("shapedirs_wrong_V", _set_model("shapedirs", lambda t: t[:-1]), ValueError, "shapedirs"),
    ("shapedirs_2d", _set_model("shapedirs", lambda t: t[..., 0]), ValueError, "shapedirs"),
    ("posedirs_wrong_rows", _set_model("posedirs", lambda t: t[:-1]), ValueError, "posedirs"),
    ("J_regressor_1d", _set_model("J_regressor", lambda t: t[0]), ValueError, "J_regressor"),
    ("J_regressor_65_joints", _set_model("J_regressor", lambda t: torch.rand(65, V, dtype=t.dtype)), ValueError,
     "J_regressor"),
    ("J_regressor_0_joints", _set_model("J_regressor", lambda t: t[:0]), ValueError, "J_regressor"),
    ("J_regressor_float16", _set_model("J_regressor", lambda t: t.half()), TypeError, "J_regressor"),
    ("lbs_weights_wrong_J", _set_model("lbs_weights", lambda t: t[:, :4]), ValueError, "lbs_weights"),
    ("lbs_weights_float32", _set_model("lbs_weights", lambda t: t.float()), TypeError, "lbs_weights"),
    ("parents_not_a_tree", _set_model("parents", lambda t: torch.tensor([-1, 0, 2, 1, 1])), ValueError, "parents"),
    ("parents_list_root", _set_model("parents", lambda t: [0, 0, 1, 1, 1]), ValueError, "parents"),
    ("parents_wrong_length", _set_model("parents", lambda t: [-1, 0, 1, 1]), ValueError, "parents"),
    ("parents_float", _set_model("parents", lambda t: t.float()), TypeError, "parents"),
    # a second device: 'meta' stands in for it
    ("betas_meta", _set("betas", lambda t: t.to("meta")), ValueError, "betas"),
    ("pose_meta", _set("pose", lambda t: t.to("meta")), ValueError, "pose"),
    ("v_template_meta", _set_model("v_template", lambda t: t.to("meta")), ValueError, "v_template"),
    ("shapedirs_meta", _set_model("shapedirs", lambda t: t.to("meta")), ValueError, "shapedirs"),
    ("posedirs_meta", _set_model("posedirs", lambda t: t.to("meta")), ValueError, "posedirs"),
    ("lbs_weights_meta", _set_model("lbs_weights", lambda t: t.to("meta")), ValueError, "lbs_weights"),
    ("parents_meta", _set_model("parents", lambda t: t.to("meta")), ValueError, "parents"),
]

SKIN_BAD = [
    ("anchor_idx_K0", _set("idx", lambda t: t[:, :0]), ValueError, "anchor_idx"),
    ("anchor_idx_K5", _set("idx", lambda t: torch.zeros(N, 5, dtype=torch.long)), ValueError, "anchor_idx"),
    ("anchor_idx_1d", _set("idx", lambda t: t[:, 0]), ValueError, "anchor_idx"),
    ("anchor_idx_uint8", _set("idx", lambda t: t.to(torch.uint8)), TypeError, "anchor_idx"),
    ("anchor_idx_float", _set("idx", lambda t: t.double()), TypeError, "anchor_idx"),
    ("anchor_idx_negative", _set("idx", lambda t: t.index_fill(0, torch.tensor([3]), -1)), ValueError, "anchor_idx"),
    ("anchor_idx_past_V", _set("idx", lambda t: t.index_fill(0, torch.tensor([3]), V)), ValueError, "anchor_idx"),
    ("anchor_idx_int32_max", _set("idx", lambda t: t.int().index_fill(0, torch.tensor([0]), 2**31 - 1)), ValueError,
     "anchor_idx"),
    ("anchor_weights_wrong_N", _set("aw", lambda t: t[:5]), ValueError, "anchor_weights"),
    ("anchor_weights_wrong_K", _set("aw", lambda t: t[:, :3]), ValueError, "anchor_weights"),
    ("anchor_weights_float32", _set("aw", lambda t: t.float()), TypeError, "anchor_weights"),
    ("offsets_wrong_last", _set("off", lambda t: t[:, :2]), ValueError, "offsets"),
    ("offsets_1d", _set("off", lambda t: t.reshape(-1)), ValueError, "offsets"),
    ("offsets_wrong_B", _set("off", lambda t: t.expand(B + 1, N, 3)), ValueError, "offsets"),
    ("quats_3", _set("q", lambda t: t[:, :3]), ValueError, "quats"),
    ("quats_wrong_N", _set("q", lambda t: t[:-1]), ValueError, "quats"),
    ("quats_float32", _set("q", lambda t: t.float()), TypeError, "quats"),
    ("anchor_idx_meta", _set("idx", lambda t: t.to("meta")), ValueError, "anchor_idx"),
    ("anchor_weights_meta", _set("aw", lambda t: t.to("meta")), ValueError, "anchor_weights"),
    ("offsets_meta", _set("off", lambda t: t.to("meta")), ValueError, "offsets"),
    ("quats_meta", _set("q", lambda t: t.to("meta")), ValueError, "quats"),
]


@pytest.mark.parametrize("case,edit,exc,name", _params(LBS_BAD))
@pytest.mark.parametrize("op", ["flame_lbs", "skin_gaussians"])
def test_lbs_bad_arguments(op, case, edit, exc, name):
    d = _lbs_setup()
    edit(d)
    _raises(exc, name, lambda: (_lbs if op == "flame_lbs" else _skin)(d))


@pytest.mark.parametrize("case,edit,exc,name", _params(SKIN_BAD))
@pytest.mark.parametrize("grad", [False, True])
def test_skin_bad_arguments(case, edit, exc, name, grad):
    """Also with anchor_weights requiring grad (then the cached joint weights, which range-check
    anchor_idx, are skipped) and after the fast path has remembered the good model."""
    d = _lbs_setup()
    if grad:
        d["aw"].requires_grad_(True)
    _skin(d)  # warm the fast path with the good inputs
    edit(d)
    _raises(exc, name, lambda: _skin(d))


def test_skin_anchor_idx_changed_in_place_is_rechecked():
    d = _lbs_setup()
    _skin(d)
    d["idx"][0, 0] = 10**6
    _raises(ValueError, "anchor_idx", lambda: _skin(d))


def _views(d):
    """The same inputs as strided / expanded views (values unchanged)."""
    m = dict(d["m"])
    nc = lambda t: t.transpose(0, -1).contiguous().transpose(0, -1)  # noqa: E731  same values, other strides
    m["shapedirs"] = m["shapedirs"].permute(2, 1, 0).contiguous().permute(2, 1, 0)
    m["posedirs"] = nc(m["posedirs"])
    m["J_regressor"] = torch.stack([m["J_regressor"], m["J_regressor"]], -1)[..., 0]  # stride 2 along V
    m["lbs_weights"] = nc(m["lbs_weights"])
    m["v_template"] = nc(m["v_template"])
    v = dict(d, m=m)
    v["betas"] = nc(d["betas"])
    v["pose"] = torch.stack([d["pose"], d["pose"]], -1)[..., 0]
    v["idx"] = nc(d["idx"])
    v["aw"] = nc(d["aw"])
    v["off"] = nc(d["off"])
    v["q"] = torch.cat([d["q"], d["q"]], 1)[:, :4]
    for k, t in list(v.items()) + list(m.items()):
        if isinstance(t, torch.Tensor) and t.numel() > 1 and t.dim() > 1:
            assert not t.is_contiguous(), k
    return v


def test_lbs_views_equal_contiguous():
    d = _lbs_setup()
    v = _views(d)
    for a, b in zip(_lbs(d, return_transforms=True), _lbs(v, return_transforms=True)):
        assert torch.equal(a, b)
    for a, b in zip(_skin(d), _skin(v)):
        assert torch.equal(a, b)


def test_lbs_expanded_inputs_equal_materialized():
    d = _lbs_setup(B=3)
    e = dict(d)
    e["betas"] = d["betas"][:1].expand(3, -1)                  # one identity for every frame
    e["pose"] = d["pose"][:1].expand(3, -1)
    e["off"] = d["off"][None].expand(3, N, 3)                  # [B,N,3] offsets, stride 0 over B
    e["q"] = d["q"][:1].expand(N, 4)
    e["aw"] = torch.full((1, 4), 0.25, dtype=torch.float64).expand(N, 4)
    dense = {k: (t.contiguous() if isinstance(t, torch.Tensor) else t) for k, t in e.items()}
    for a, b in zip(_lbs(e, return_transforms=True), _lbs(dense, return_transforms=True)):
        assert torch.equal(a, b)
    for a, b in zip(_skin(e), _skin(dense)):
        assert torch.equal(a, b)
    # frames of one expanded input are identical
    verts = _lbs(e)[0]
    assert torch.equal(verts[0], verts[2])


def _empty_model(dtype=torch.float64):
    m = make_model(V, J, S, dtype=dtype)
    m["v_template"], m["shapedirs"], m["lbs_weights"] = m["v_template"][:0], m["shapedirs"][:0], m["lbs_weights"][:0]
    m["posedirs"], m["J_regressor"] = m["posedirs"][:, :0], m["J_regressor"][:, :0]
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lbs_empty_inputs(dtype):
    d = _lbs_setup(dtype, B=0)
    v, j, A = _lbs(d, return_transforms=True)
    assert v.shape == (0, V, 3) and j.shape == (0, J, 3) and A.shape == (0, J, 4, 4)
    means, quats = _skin(d)
    assert means.shape == (0, N, 3) and quats.shape == (0, N, 4)
    d = _lbs_setup(dtype, N=0)
    means, quats = _skin(d)
    assert means.shape == (B, 0, 3) and quats.shape == (B, 0, 4)
    # no vertices (and so no Gaussians): empty vertices, joints at the origin
    d = _lbs_setup(dtype, N=0)
    d["m"] = _empty_model(dtype)
    v, j = _lbs(d)
    assert v.shape == (B, 0, 3) and j.shape == (B, J, 3) and torch.isfinite(j).all()
    means, quats = _skin(d)
    assert means.shape == (B, 0, 3) and quats.shape == (B, 0, 4)
    # no blendshapes (S = 0): the template, posed
    m = make_model(V, J, 0, dtype=dtype)
    betas, pose = make_inputs(B, J, 0, dtype=dtype)
    got = fk.flame_lbs(betas, pose, *model_args(m))
    want = ref.flame_lbs(betas.double(), pose.double(), *[t.double() if t.is_floating_point() else t
                                                          for t in model_args(m)])
    assert torch.allclose(got[0].double(), want[0], atol=1e-5)


def test_lbs_empty_batch_gradients():
    d = _lbs_setup(B=0)
    d["betas"].requires_grad_(True)
    d["off"].requires_grad_(True)
    means, quats = _skin(d)
    (means.sum() + quats.sum()).backward()
    assert d["betas"].grad.shape == (0, S) and torch.equal(d["off"].grad, torch.zeros_like(d["off"]))


LBS_TARGETS = ["betas", "pose", "v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"]


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("what", LBS_TARGETS + ["anchor_weights", "offsets", "quats"])
def test_lbs_nonfinite_inputs_match_the_reference(what, value):
    """A non-finite value is no error (no host sync to look for it): it propagates exactly as in the
    reference twin (same non-finite elements, the finite ones equal), and never crashes."""
    d = _lbs_setup()
    t = {"betas": d["betas"], "pose": d["pose"], "anchor_weights": d["aw"], "offsets": d["off"],
         "quats": d["q"]}.get(what, d["m"].get(what))
    t.view(-1)[0] = value
    got = list(_lbs(d, return_transforms=True)) + list(_skin(d))
    args = (d["betas"], d["pose"], *model_args(d["m"]))
    want = list(ref.flame_lbs(*args, return_transforms=True)) + \
        list(ref.skin_gaussians(*args, d["idx"], d["aw"], d["off"], d["q"]))
    for name, g, w in zip(("vertices", "joints", "transforms", "means", "quats"), got, want):
        assert g.shape == w.shape, name
        assert torch.equal(torch.isfinite(g), torch.isfinite(w)), name
        f = torch.isfinite(w)
        assert torch.allclose(g[f], w[f], rtol=1e-9, atol=1e-12), name
    if what in ("betas", "pose"):  # per frame: the other frame is untouched
        assert torch.isfinite(got[0][1]).all() and not torch.isfinite(got[0][0]).all()


@pytest.mark.parametrize("what", ["betas", "pose", "offsets", "quats"])
def test_lbs_nonfinite_gradients_do_not_crash(what):
    d = _lbs_setup()
    t = {"betas": d["betas"], "pose": d["pose"], "offsets": d["off"], "quats": d["q"]}[what]
    t.view(-1)[0] = NAN
    for k in ("betas", "pose", "off", "q"):
        d[k].requires_grad_(True)
    means, quats = _skin(d)
    (means.sum() + quats.sum()).backward()
    assert all(d[k].grad.shape == d[k].shape for k in ("betas", "pose", "off", "q"))
    if what in ("betas", "pose"):  # frame 1 does not depend on frame 0's NaN
        assert torch.isfinite(d["betas"].grad[1]).all() and torch.isfinite(d["pose"].grad[1]).all()


def test_skin_zero_quaternion_matches_the_reference():
    d = _lbs_setup()
    d["q"][:3] = 0.0
    got = _skin(d)
    want = ref.skin_gaussians(d["betas"], d["pose"], *model_args(d["m"]), d["idx"], d["aw"], d["off"], d["q"])
    assert torch.isfinite(got[1]).all()
    assert torch.allclose(got[1], want[1], atol=1e-12) and torch.allclose(got[0], want[0], atol=1e-12)


@pytest.mark.cuda
def test_lbs_cuda_cpu_mixed_devices():
    d = _lbs_setup(torch.float32)
    mc = {k: v.cuda() for k, v in d["m"].items()}
    for key in ("betas", "pose"):
        e = dict(d, m=mc, **{k: d[k].cuda() for k in ("betas", "pose", "idx", "aw", "off", "q")})
        e[key] = d[key]  # this one stays on the CPU
        _raises(ValueError, key, lambda: _lbs(e))
    e = dict(d, **{k: d[k].cuda() for k in ("betas", "pose")})  # CUDA inputs, CPU model
    _raises(ValueError, "betas", lambda: _lbs(e))
    e = dict(d, m=mc, **{k: d[k].cuda() for k in ("betas", "pose", "aw", "off", "q")})
    _raises(ValueError, "anchor_idx", lambda: _skin(e))


@pytest.mark.cuda
def test_lbs_cuda_views_and_nonfinite():
    d = _lbs_setup(torch.float32)
    c = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in d.items() if k != "m"}
    c["m"] = {k: v.cuda() for k, v in d["m"].items()}
    v = _views(c)
    for a, b in zip(_skin(c), _skin(v)):
        assert torch.equal(a, b)
    c["betas"][0, 0] = NAN
    means, _ = _skin(c)
    torch.cuda.synchronize()
    assert not torch.isfinite(means[0]).all() and torch.isfinite(means[1]).all()
