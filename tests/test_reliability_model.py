"""Reliability of the model APIs (issue 19, item 1): the validation matrix for
FFAvatarModel.reconstruct / estimate_flame (``tiny`` preset), Avatar.load / save / render /
export_ply, load_flame and load_motion.

Wrong rank / channel count / size / dtype of images, mixed devices ('meta' stands in for a second
device; `cuda` tests use a real one), views (same result as contiguous inputs), empty avatars,
NaN / Inf inputs (a defined output or an error, never a crash), singular cameras and heads behind
the camera (the background). Every error case asserts the error type and that the message names
the argument (or the file). Corrupt files are tests/test_avatar_files.py's and item 3's business.
"""
import dataclasses
import os

import pytest
import torch

from ffavatar import (Avatar, AvatarFileError, FlameFileError, canonical_gaussians, load_flame, load_motion,
                      save_flame_npz, save_motion, synthetic_head)
from ffavatar.avatar import PlyFileError
from ffavatar.geometry import intrinsics, look_at
from ffavatar.nn.model import FFAvatarModel

NAN, INF = float("nan"), float("inf")
SIZE = 32
_FIELDS = ("anchor_idx", "anchor_weights", "means", "offsets", "quats", "scales", "opacities", "colors")


def _raises(exc, name, fn):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"error does not name {name!r}: {type(info.value).__name__}: {info.value}"


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = FFAvatarModel.from_preset("tiny").eval()
    m.pretrained = True  # silence the random-weights warning: these tests are about inputs
    return m


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _avatar(head, n=None):
    m, g = head
    a = Avatar.from_canonical(m, g)
    a.colors = torch.rand(a.num_gaussians, 3)
    a.opacities = 0.3 + 0.6 * torch.rand(a.num_gaussians)
    if n is not None:
        a = Avatar(**{**{k: getattr(a, k)[:n] for k in _FIELDS}, "betas_shape": a.betas_shape,
                      "flame_fingerprint": a.flame_fingerprint, "n_expr": a.n_expr})
    return a


def _camera():
    eye = torch.tensor([[0.0, 0.02, 0.75]])
    return look_at(eye, torch.tensor([[0.0, -0.02, 0.0]]))[0], intrinsics(SIZE, SIZE, 22.0)


def _images(v=2, h=64, w=64):
    return torch.rand(v, 3, h, w)


# ================================================================================================
# FFAvatarModel.reconstruct / estimate_flame
# ================================================================================================
IMAGE_BAD = [
    ("4_channels", lambda: _images().repeat(1, 2, 1, 1)[:, :4], ValueError, "images"),
    ("1_channel", lambda: _images()[:, :1], ValueError, "images"),
    ("channels_last_HWC", lambda: _images().permute(0, 2, 3, 1).contiguous(), ValueError, "images"),
    ("3d_one_view", lambda: _images()[0], ValueError, "images"),
    ("5d", lambda: _images()[None], ValueError, "images"),
    ("zero_views", lambda: _images(v=0), ValueError, "images"),
    ("zero_height", lambda: _images(h=0), ValueError, "images"),
    ("zero_width", lambda: _images(w=0), ValueError, "images"),
    ("int32", lambda: (_images() * 255).int(), TypeError, "images"),
    ("bool", lambda: _images() > 0.5, TypeError, "images"),
    ("numpy", lambda: _images().numpy(), TypeError, "images"),
    ("dict", lambda: {"a": _images()}, TypeError, "images"),
    ("empty_list", lambda: [], ValueError, "images"),
    ("list_second_bad_channels", lambda: [_images(), _images()[:, :2]], ValueError, "images[1]"),
    ("list_second_3d", lambda: [_images(), _images()[0]], ValueError, "images[1]"),
    ("list_second_not_a_tensor", lambda: [_images(), 5], TypeError, "images[1]"),
    ("list_first_int", lambda: [(_images() * 255).long(), _images()], TypeError, "images[0]"),
]


@pytest.mark.parametrize("case,make,exc,name", [pytest.param(*c, id=c[0]) for c in IMAGE_BAD])
@pytest.mark.parametrize("api", ["reconstruct", "estimate_flame"])
def test_bad_images(tiny, api, case, make, exc, name):
    _raises(exc, name, lambda: getattr(tiny, api)(make()))


@pytest.mark.parametrize("hw", [(1, 1), (4, 400), (400, 4), (57, 56), (56, 56)])
def test_any_image_size_gives_an_avatar(tiny, hw):
    """Images of any size are resized / centre-cropped to the preset's size: finite avatars."""
    a = tiny.reconstruct(_images(2, *hw))
    assert a.num_views == 2 and a.num_gaussians == tiny.num_gaussians
    for k in ("means", "colors", "opacities", "scales", "viewmats", "Ks"):
        assert torch.isfinite(getattr(a, k)).all(), k


def test_image_dtypes_and_views_give_the_same_avatar(tiny):
    x = _images(3, 60, 72)
    want = tiny.reconstruct(x)
    same = {
        "float64": x.double(),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": torch.stack([x, x], -1)[..., 0],
        "list_of_one": [x],
    }
    for name, y in same.items():
        got = tiny.reconstruct(y)
        got = got[0] if isinstance(got, list) else got
        for k in ("means", "colors", "opacities", "viewmats"):
            assert _rel(getattr(got, k), getattr(want, k)) < 1e-5, (name, k)
    # half-precision inputs: close to the float32 result (the inputs themselves are rounded)
    for y in (x.half(), x.bfloat16()):
        got = tiny.reconstruct(y)
        assert _rel(got.colors, want.colors) < 5e-2
    # one view expanded into three: the same view set as three copies
    one = x[:1]
    a = tiny.reconstruct(one.expand(3, -1, -1, -1))
    b = tiny.reconstruct(one.repeat(3, 1, 1, 1))
    assert _rel(a.colors, b.colors) < 1e-6 and _rel(a.viewmats, b.viewmats) < 1e-6


@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
def test_nonfinite_pixel_propagates(tiny, value):
    """Today: no error (reading the images for NaN would cost a host sync on the GPU); a single
    non-finite pixel makes the whole avatar non-finite (it is never hidden), and no crash."""
    x = _images()
    x[0, 0, 3, 3] = value
    a = tiny.reconstruct(x)
    assert not torch.isfinite(a.colors).all() and not torch.isfinite(a.viewmats).all()
    est = tiny.estimate_flame(x)
    assert not torch.isfinite(est.viewmats).all()
    # another avatar of the same batch is untouched
    both = tiny.reconstruct([x, _images()])
    assert torch.isfinite(both[1].colors).all() and torch.isfinite(both[1].viewmats).all()


def test_images_on_another_device_are_moved(tiny):
    with pytest.raises(NotImplementedError):  # 'meta' has no data to move: torch's own error
        tiny.reconstruct(_images().to("meta"))


@pytest.mark.cuda
def test_cuda_images_into_a_cpu_model(tiny):
    x = _images()
    a, b = tiny.reconstruct(x), tiny.reconstruct(x.cuda())
    assert a.device.type == "cpu" and b.device.type == "cpu"
    assert _rel(b.colors, a.colors) < 1e-5


# ================================================================================================
# Avatar.render
# ================================================================================================
def _render(head, avatar=None, **kw):
    m, _ = head
    vm, K = _camera()
    args = dict(model=m, viewmats=vm, Ks=K, width=SIZE, height=SIZE)
    args.update(kw)
    return (avatar or _avatar(head)).render(**args)


RENDER_BAD = [
    ("viewmats_3x4", dict(viewmats=torch.eye(4)[:3]), ValueError, "viewmats"),
    ("viewmats_4d", dict(viewmats=torch.eye(4)[None, None]), ValueError, "viewmats"),
    ("Ks_2x2", dict(Ks=torch.eye(2)), ValueError, "Ks"),
    ("Ks_count", dict(Ks=torch.eye(3).expand(3, 3, 3)), ValueError, "Ks"),
    ("width_0", dict(width=0), ValueError, "width"),
    ("height_negative", dict(height=-4), ValueError, "height"),
    ("width_float", dict(width=32.0), TypeError, "width"),
    ("expression_too_long", dict(expression=torch.zeros(2, 500)), ValueError, "expression"),
    ("expression_3d", dict(expression=torch.zeros(1, 2, 10)), ValueError, "expression"),
    ("pose_wrong_size", dict(pose=torch.zeros(2, 7)), ValueError, "pose"),
    ("frames_mismatch", dict(expression=torch.zeros(2, 10), pose=torch.zeros(3, 15)), ValueError, "pose"),
    ("translation_wrong", dict(translation=torch.zeros(2, 3, 1)), ValueError, "translation"),
    ("viewmats_meta", dict(viewmats=torch.eye(4, device="meta")), NotImplementedError, "meta"),
    ("background_2_values", dict(background=(0.1, 0.2)), ValueError, "background"),
    ("model_None", dict(model=None), ValueError, "model"),
    ("model_str", dict(model="flame"), TypeError, "model"),
]


@pytest.mark.parametrize("case,kw,exc,name", [c if not isinstance(c, tuple) or hasattr(c, "marks") else
                                              pytest.param(*c, id=c[0]) for c in RENDER_BAD])
def test_render_bad_arguments(head, case, kw, exc, name):
    _raises(exc, name, lambda: _render(head, **kw))


def test_render_avatar_and_model_on_different_devices(head):
    _raises(ValueError, "avatar is on meta", lambda: _render(head, avatar=_avatar(head).to("meta")))


BG = (0.2, 0.3, 0.4)


@pytest.mark.parametrize("camera", ["behind", "zero_viewmat", "nan_viewmat", "nan_K", "inf_viewmat"])
def test_render_degenerate_cameras_give_the_background(head, camera):
    vm, K = _camera()
    if camera == "behind":
        vm = vm.clone()
        vm[:3, :3] = -vm[:3, :3]  # turned around: the head is behind the camera
        vm[:3, 3] = -vm[:3, 3]
    elif camera == "zero_viewmat":
        vm = torch.zeros(4, 4)
    elif camera == "nan_viewmat":
        vm = torch.full((4, 4), NAN)
    elif camera == "inf_viewmat":
        vm = vm.clone()
        vm[2, 3] = INF
    else:
        K = torch.full((3, 3), NAN)
    img = _render(head, viewmats=vm, Ks=K, background=BG)
    assert img.shape == (1, SIZE, SIZE, 3)
    assert torch.equal(img, torch.tensor(BG).expand_as(img))


def test_render_singular_intrinsics_are_finite(head):
    img = _render(head, Ks=torch.zeros(3, 3), background=BG)
    assert torch.isfinite(img).all() and ((img >= 0) & (img <= 1)).all()


@pytest.mark.parametrize("what", ["expression", "pose", "translation"])
def test_render_nonfinite_motion_gives_the_background(head, what):
    kw = {"expression": dict(expression=torch.full((1, 10), NAN)), "pose": dict(pose=torch.full((1, 15), NAN)),
          "translation": dict(translation=torch.tensor([NAN, 0.0, 0.0]))}[what]
    img = _render(head, background=BG, **kw)
    assert torch.equal(img, torch.tensor(BG).expand_as(img))


@pytest.mark.parametrize("field", ["offsets", "scales", "opacities", "quats", "colors"])
def test_render_nonfinite_avatar_fields(head, field):
    """NaN geometry culls the Gaussian (background where it was); a NaN colour stays NaN in the
    image where it is blended (render clamps to [0,1] but does not hide NaN)."""
    a = _avatar(head)
    t = getattr(a, field).clone()
    t[:] = NAN
    setattr(a, field, t)
    img = _render(head, avatar=a, background=BG)
    if field == "colors":
        assert torch.isnan(img).any()
    elif field == "quats":  # NaN rotations: the kernel draws them unrotated (see test_reliability_ops)
        assert torch.isfinite(img).all()
    else:
        assert torch.equal(img, torch.tensor(BG).expand_as(img))


def test_render_empty_avatar_gives_the_background(head):
    img = _render(head, avatar=_avatar(head, n=0), background=BG)
    assert torch.equal(img, torch.tensor(BG).expand_as(img))


def test_render_views_equal_contiguous(head):
    a = _avatar(head)
    want = _render(head, avatar=a)
    b = dataclasses.replace(a, colors=torch.stack([a.colors, a.colors], -1)[..., 0],
                            scales=a.scales.t().contiguous().t(), quats=torch.cat([a.quats, a.quats], 1)[:, :4])
    vm, K = _camera()
    got = _render(head, avatar=b, viewmats=vm.t().contiguous().t(), Ks=K[None].expand(1, 3, 3))
    assert torch.equal(got, want)
    # one opacity for all, expanded
    c = dataclasses.replace(a, opacities=torch.tensor(0.7).expand(a.num_gaussians))
    d = dataclasses.replace(a, opacities=torch.full((a.num_gaussians,), 0.7))
    assert torch.equal(_render(head, avatar=c), _render(head, avatar=d))


# ================================================================================================
# Avatar.save / load / export_ply
# ================================================================================================
def test_save_bad_paths(tmp_path, head):
    a = _avatar(head)
    _raises(AvatarFileError, "nope", lambda: a.save(tmp_path / "nope" / "x.ffavatar"))
    _raises(AvatarFileError, str(tmp_path), lambda: a.save(tmp_path))
    _raises(TypeError, "int", lambda: a.save(5))
    _raises(AvatarFileError, "missing.ffavatar", lambda: Avatar.load(tmp_path / "missing.ffavatar"))
    _raises(TypeError, "NoneType", lambda: Avatar.load(None))
    a.save(tmp_path / "ok.ffavatar")
    _raises(TypeError, "model", lambda: Avatar.load(tmp_path / "ok.ffavatar", model="flame"))


def test_save_views_empty_and_other_dtypes_round_trip(tmp_path, head):
    a = _avatar(head)
    a.colors = a.colors.t().contiguous().t()
    a.opacities = torch.tensor(0.5).expand(a.num_gaussians)
    for name, av in (("views", a), ("empty", _avatar(head, n=0)), ("f64", a.to(dtype=torch.float64)),
                     ("bf16", a.to(dtype=torch.bfloat16))):
        p = tmp_path / f"{name}.ffavatar"
        av.save(p)
        b = Avatar.load(p)
        for k in _FIELDS:
            assert torch.equal(getattr(b, k), getattr(av, k)), (name, k)


def test_save_nonfinite_avatar_round_trips_bitwise(tmp_path, head):
    """Today: a NaN avatar is saved and loaded as it is (no finiteness check on save)."""
    a = _avatar(head)
    a.means = a.means.clone()
    a.means[0] = NAN
    a.save(tmp_path / "nan.ffavatar")
    b = Avatar.load(tmp_path / "nan.ffavatar")
    assert torch.equal(b.means.isnan(), a.means.isnan())


def test_save_meta_avatar_is_an_error(tmp_path, head):
    with pytest.raises(NotImplementedError):
        _avatar(head).to("meta").save(tmp_path / "meta.ffavatar")
    assert not os.listdir(tmp_path)  # nothing half-written


def test_export_ply_errors(tmp_path, head):
    m, _ = head
    a = _avatar(head)
    _raises(ValueError, "FlameModel", lambda: a.export_ply(tmp_path / "e.ply", expression=torch.zeros(10)))
    _raises(ValueError, "one frame", lambda: a.export_ply(tmp_path / "t.ply", expression=torch.zeros(2, 10), model=m))
    _raises(PlyFileError, "nope", lambda: a.export_ply(tmp_path / "nope" / "t.ply"))
    _raises(PlyFileError, str(tmp_path), lambda: a.export_ply(tmp_path))
    _raises(ValueError, "means", lambda: a.export_ply(tmp_path / "n.ply", expression=torch.full((10,), NAN), model=m))
    b = _avatar(head)
    b.means = b.means.clone()
    b.means[3] = INF
    _raises(ValueError, "means", lambda: b.export_ply(tmp_path / "inf.ply"))
    assert not (tmp_path / "n.ply").exists() and not (tmp_path / "inf.ply").exists()


def test_export_ply_empty_and_views(tmp_path, head):
    from ffavatar import load_ply
    _avatar(head, n=0).export_ply(tmp_path / "empty.ply")
    assert load_ply(tmp_path / "empty.ply").means.shape == (0, 3)
    a = _avatar(head)
    a.export_ply(tmp_path / "a.ply")
    a.colors = torch.stack([a.colors, a.colors], -1)[..., 0]
    a.export_ply(tmp_path / "b.ply")
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()


# ================================================================================================
# load_flame / load_motion
# ================================================================================================
@pytest.fixture(scope="module")
def flame_npz(tmp_path_factory, head):
    p = tmp_path_factory.mktemp("flame") / "flame.npz"
    save_flame_npz(head[0], p)
    return p


def test_load_flame_bad_arguments(tmp_path, flame_npz):
    _raises(TypeError, "int", lambda: load_flame(5))
    _raises(FlameFileError, str(tmp_path), lambda: load_flame(tmp_path))
    _raises(FlameFileError, "missing.npz", lambda: load_flame(tmp_path / "missing.npz"))
    _raises(TypeError, "n_shape", lambda: load_flame(flame_npz, n_shape=True))
    _raises(TypeError, "n_expr", lambda: load_flame(flame_npz, n_expr=1.5))
    _raises(ValueError, "n_shape", lambda: load_flame(flame_npz, n_shape=-1))
    _raises(ValueError, "n_shape", lambda: load_flame(flame_npz, n_shape=10**6))
    _raises(TypeError, "floating dtype", lambda: load_flame(flame_npz, dtype=torch.int64))


def test_load_flame_dtype_string_names_dtype(flame_npz):
    _raises(TypeError, "dtype", lambda: load_flame(flame_npz, dtype="float32"))


@pytest.fixture
def motion_npz(tmp_path):
    p = tmp_path / "m.npz"
    save_motion(p, expression=0.3 * torch.randn(4, 10), pose=0.1 * torch.randn(4, 15))
    return p


def test_load_motion_bad_arguments(tmp_path, motion_npz, head):
    _raises(TypeError, "int", lambda: load_motion(5))
    _raises(ValueError, "no such motion file", lambda: load_motion(tmp_path / "missing.npz"))
    m = head[0]
    four = dataclasses.replace(m, **{"J_regressor": m.J_regressor[:4], "parents": m.parents[:4],
                                     "lbs_weights": m.lbs_weights[:, :4], "posedirs": m.posedirs[:27]})
    _raises(ValueError, "joints", lambda: load_motion(motion_npz, four))
    _raises(ValueError, "non-finite", lambda: save_motion(tmp_path / "n.npz", expression=torch.full((3, 10), NAN)))


def test_load_motion_empty_and_devices(tmp_path, motion_npz):
    save_motion(tmp_path / "m0.npz", expression=torch.zeros(0, 10))
    mo = load_motion(tmp_path / "m0.npz")
    assert mo.expression.shape == (0, 10) and mo.pose.shape == (0, 15)
    mo = load_motion(motion_npz, device="meta")
    assert mo.expression.device.type == "meta" and mo.expression.shape == (4, 10)


def test_load_motion_model_not_a_flame_model(motion_npz):
    _raises(TypeError, "model", lambda: load_motion(motion_npz, model="flame"))


def test_load_motion_integer_dtype_is_an_error(motion_npz):
    try:
        mo = load_motion(motion_npz, dtype=torch.int32)
    except TypeError as e:
        assert "dtype" in str(e)
        return
    pytest.fail(f"no error: expression came back as {mo.expression.dtype}")
