"""Motion .npz files: tracker key names -> the model's layout, round trip, every error names the file
and the key."""
import warnings

import numpy as np
import pytest
import torch

from ffavatar.flame import FlameModel, MotionFileError, load_motion, save_motion
from ffavatar.flame.motion_io import MotionWarning


def _model(n_shape=6, n_expr=8, V=10, J=5):
    """A small FLAME-structured model (only counts and joints matter to motion files)."""
    S = n_shape + n_expr
    return FlameModel(v_template=torch.randn(V, 3), shapedirs=torch.randn(V, 3, S),
                      posedirs=torch.randn((J - 1) * 9, V * 3), J_regressor=torch.full((J, V), 1.0 / V),
                      parents=torch.tensor([-1, 0, 1, 1, 1][:J]), lbs_weights=torch.full((V, J), 1.0 / J),
                      faces=torch.tensor([[0, 1, 2]]), n_shape=n_shape, n_expr=n_expr)


@pytest.fixture
def model():
    return _model()


def _tracker(T=7, n=8):
    return {"expr": np.random.randn(T, n).astype(np.float32), "rotation": np.random.randn(T, 3),
            "neck_pose": np.random.randn(T, 3), "jaw_pose": np.random.randn(T, 3),
            "eyes_pose": np.random.randn(T, 6), "translation": np.random.randn(T, 3)}


def _save(tmp_path, name="m.npz", **arrays):
    p = tmp_path / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def _close(t, a):
    torch.testing.assert_close(t, torch.as_tensor(np.asarray(a), dtype=t.dtype), atol=1e-6, rtol=0)


def test_tracker_keys_map_to_the_joint_order(tmp_path, model):
    d = _tracker()
    d["fps"] = np.float64(30)
    d["cam"] = np.zeros((7, 3))                                   # unknown keys are ignored
    m = load_motion(_save(tmp_path, **d), model)
    assert m.num_frames == 7 and m.fps == 30.0 and m.ignored_keys == ("cam",) and m.notes == ()
    assert m.pose.shape == (7, 15) and m.expression.shape == (7, 8) and m.pose.dtype == model.dtype
    p = m.pose.reshape(7, 5, 3)
    _close(p[:, 0], d["rotation"])
    _close(p[:, 1], d["neck_pose"])
    _close(p[:, 2], d["jaw_pose"])
    _close(p[:, 3], d["eyes_pose"][:, :3])                         # left eye first
    _close(p[:, 4], d["eyes_pose"][:, 3:])
    _close(m.expression, d["expr"])
    _close(m.translation, d["translation"])
    assert m.source_keys == {"expression": "expr", "rotation": "rotation", "neck_pose": "neck_pose",
                             "jaw_pose": "jaw_pose", "eyes_pose": "eyes_pose", "translation": "translation"}


def test_aliases(tmp_path, model):
    T = 4
    e, g, tr = np.random.randn(T, 8), np.random.randn(T, 3), np.random.randn(T, 3)
    le, re = np.random.randn(T, 3), np.random.randn(T, 3)
    for ekey, gkey, tkey in (("expression", "global_pose", "transl"), ("exp", "root_pose", "trans"),
                             ("expr", "global_orient", "translation")):
        m = load_motion(_save(tmp_path, **{ekey: e, gkey: g, tkey: tr, "leye_pose": le, "reye_pose": re}), model)
        _close(m.expression, e)
        _close(m.pose[:, :3], g)
        _close(m.translation, tr)
        _close(m.pose[:, 9:12], le)
        _close(m.pose[:, 12:15], re)
        _close(m.pose[:, 3:9], np.zeros((T, 6)))                   # absent neck and jaw are zero


def test_pose_only_and_expression_only(tmp_path, model):
    jaw = np.random.randn(5, 3)
    m = load_motion(_save(tmp_path, jaw_pose=jaw), model)
    _close(m.expression, np.zeros((5, 8)))
    _close(m.pose[:, 6:9], jaw)
    _close(m.translation, np.zeros((5, 3)))
    e = np.random.randn(3, 8)
    m = load_motion(_save(tmp_path, expr=e), model)
    _close(m.pose, np.zeros((3, 15)))


def test_expression_padded_or_truncated(tmp_path, model):
    e = np.random.randn(6, 5)
    m = load_motion(_save(tmp_path, expr=e), model)
    _close(m.expression, np.concatenate([e, np.zeros((6, 3))], 1))
    assert m.notes == ("expression (key 'expr'): padded from 5 to 8 components with zeros",)
    e = np.random.randn(6, 12)
    with pytest.warns(MotionWarning, match="dropped components 8..11 are non-zero"):
        m = load_motion(_save(tmp_path, expr=e), model)
    _close(m.expression, e[:, :8])
    assert "truncated from 12 to 8" in m.notes[0]
    e[:, 8:] = 0                                                  # zeros dropped: a note, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = load_motion(_save(tmp_path, expr=e), model)
    assert "truncated" in m.notes[0]
    # without a model the file's count is kept
    assert load_motion(_save(tmp_path, expr=e)).expression.shape == (6, 12)


def test_shape_key(tmp_path, model):
    s = np.random.randn(4)
    m = load_motion(_save(tmp_path, expr=np.zeros((2, 8)), shape=s), model)
    _close(m.shape, np.concatenate([s, np.zeros(2)]))
    s = np.random.randn(2, 6)
    _close(load_motion(_save(tmp_path, expr=np.zeros((2, 8)), shape=s), model).shape, s)


def test_round_trip(tmp_path, model):
    T = 9
    expr, pose, tr = torch.randn(T, 8), torch.randn(T, 15), torch.randn(T, 3)
    shape = torch.randn(6)
    p = tmp_path / "out.npz"
    save_motion(p, expr, pose, tr, shape=shape, fps=25)
    keys = set(np.load(p).files)
    assert keys == {"expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation", "shape", "fps"}
    m = load_motion(p, model)
    _close(m.expression, expr)
    _close(m.pose, pose)
    _close(m.translation, tr)
    _close(m.shape, shape)
    assert m.fps == 25.0
    # a Motion saves as itself; pose [T,5,3] accepted
    p2 = tmp_path / "again.npz"
    save_motion(p2, m)
    _close(load_motion(p2, model).pose, pose)
    save_motion(p2, None, pose.reshape(T, 5, 3))
    _close(load_motion(p2, model).pose, pose)


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="expression"):
        save_motion(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="pose"):
        save_motion(tmp_path / "a.npz", None, torch.zeros(3, 14))
    with pytest.raises(ValueError, match="translation has 4 frames"):
        save_motion(tmp_path / "a.npz", torch.zeros(3, 8), None, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        save_motion(tmp_path / "a.npz", torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="fps"):
        save_motion(tmp_path / "a.npz", torch.zeros(3, 8), fps=0)
    with pytest.raises(MotionFileError, match="does not exist"):
        save_motion(tmp_path / "nope" / "a.npz", torch.zeros(3, 8))
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize("arrays, match", [
    ({"cam": np.zeros((3, 3))}, "no expression or pose key"),
    ({"translation": np.zeros((3, 3))}, "no expression or pose key"),
    ({"jaw_pose": np.zeros((3, 4))}, r"key 'jaw_pose' expected shape \[T,3\], got \[3, 4\]"),
    ({"jaw_pose": np.zeros(3)}, r"key 'jaw_pose' expected shape \[T,3\], got \[3\]"),
    ({"eyes_pose": np.zeros((3, 3))}, r"key 'eyes_pose' expected shape \[T,6\]"),
    ({"expr": np.zeros((3, 8, 1))}, r"key 'expr' expected shape \[T,n\]"),
    ({"expr": np.zeros((3, 8)), "jaw_pose": np.zeros((4, 3))}, "key 'jaw_pose' has 4 frames but key 'expr' has 3"),
    ({"expr": np.zeros((3, 8)), "translation": np.zeros((2, 3))}, "key 'translation' has 2 frames"),
    ({"expr": np.zeros((3, 8)), "expression": np.zeros((3, 8))}, r"keys \['expr', 'expression'\] both"),
    ({"eyes_pose": np.zeros((3, 6)), "leye_pose": np.zeros((3, 3))}, "both"),
    ({"leye_pose": np.zeros((3, 3))}, "'leye_pose' without 'reye_pose'"),
    ({"jaw_pose": np.array([[0, 0, np.nan]] * 2 + [[0, 0, 0]])}, "key 'jaw_pose' has non-finite values .* at frame 0"),
    ({"expr": np.array([[0.0, 1.0]] * 3 + [[np.inf, 0.0]])}, "key 'expr' has non-finite values .* at frame 3"),
    ({"jaw_pose": np.array([["a", "b", "c"]])}, "key 'jaw_pose' expected a numeric array"),
    ({"expr": np.zeros((3, 8)), "shape": np.zeros((2, 6))}, r"key 'shape' expected shape"),
    ({"expr": np.zeros((3, 8)), "fps": np.float64(-2)}, "key 'fps' expected one finite number > 0"),
    ({"expr": np.zeros((3, 8)), "fps": np.array([24.0, 25.0])}, "key 'fps'"),
])
def test_malformed_files(tmp_path, model, arrays, match):
    p = _save(tmp_path, "bad.npz", **arrays)
    with pytest.raises(MotionFileError, match=match) as e:
        load_motion(p, model)
    assert str(p) in str(e.value)


def test_unreadable_files(tmp_path, model):
    with pytest.raises(MotionFileError, match="no such motion file"):
        load_motion(tmp_path / "missing.npz", model)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(MotionFileError, match="empty file"):
        load_motion(empty, model)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive at all" * 4)
    with pytest.raises(MotionFileError, match="junk.npz: not a readable .npz archive"):
        load_motion(junk, model)
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros((3, 3)))
    with pytest.raises(MotionFileError, match="single .npy array"):
        load_motion(npy, model)
    good = _save(tmp_path, "good.npz", **_tracker(T=50))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[:len(data) // 2])
    with pytest.raises(MotionFileError, match="trunc.npz"):
        load_motion(trunc, model)
    obj = tmp_path / "obj.npz"
    with open(obj, "wb") as f:
        np.savez(f, expr=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MotionFileError, match="key 'expr' holds Python objects"):
        load_motion(obj, model)
    with pytest.raises(ValueError, match="joints"):
        load_motion(good, _model(J=3))


def test_corrupt_member(tmp_path, model):
    """A damaged compressed member is reported with its key."""
    p = tmp_path / "c.npz"
    with open(p, "wb") as f:
        np.savez_compressed(f, expr=np.random.randn(200, 8))
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(MotionFileError, match="c.npz"):
        load_motion(p, model)
