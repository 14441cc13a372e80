"""FLAME model files: chumpy-free pickle loading, npz round trip, clear errors."""
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from ffavatar.flame import FlameFileError, FlameModel, load_flame, save_flame_npz
from ffavatar.flame.synthetic import synthetic_head


def _fake_flame_dict(V=40, J=5, S=12, F=30, rng=None):
    rng = rng or np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    Jr = rng.random((J, V)) * (rng.random((J, V)) < 0.2)
    Jr[:, 0] += 1e-3
    Jr /= Jr.sum(1, keepdims=True)
    W = rng.random((V, J))
    W /= W.sum(1, keepdims=True)
    return dict(
        v_template=rng.normal(size=(V, 3)), shapedirs=rng.normal(size=(V, 3, S)),
        posedirs=rng.normal(size=(V, 3, (J - 1) * 9)), J_regressor=scipy.sparse.csc_matrix(Jr),
        weights=W, kintree_table=np.array([[2**32 - 1, 0, 1, 1, 1][:J], list(range(J))], dtype=np.int64),
        f=rng.integers(0, V, size=(F, 3)).astype(np.uint32), J=rng.normal(size=(J, 3)),
        bs_style="lbs", bs_type="lrotmin")


def _pickle_with_chumpy(d, path):
    """Pickle d with shapedirs as a chumpy.ch.Ch stand-in; the fake chumpy modules exist only here."""
    mod_c, mod_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy: the array lives in the instance state under 'x'
        pass
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod_ch.Ch = Ch
    mod_c.ch = mod_ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = mod_c, mod_ch
    try:
        ch = Ch()
        ch.__dict__.update(x=d["shapedirs"], _dirty_vars=set(), _depends_on_deps={})
        dd = dict(d, shapedirs=ch)
        with open(path, "wb") as fh:
            pickle.dump(dd, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_pkl_with_chumpy_loads_without_chumpy(tmp_path):
    d = _fake_flame_dict()
    p = tmp_path / "generic_model.pkl"
    _pickle_with_chumpy(d, p)
    assert "chumpy" not in sys.modules
    m = load_flame(p, n_shape=8, dtype=torch.float64)
    V, J = 40, 5
    assert isinstance(m, FlameModel) and m.n_shape == 8 and m.n_expr == 4
    torch.testing.assert_close(m.shapedirs, torch.from_numpy(d["shapedirs"]))
    torch.testing.assert_close(m.v_template, torch.from_numpy(d["v_template"]))
    # smplx layout: posedirs [P, V*3] = reshape([V*3, P]).T
    torch.testing.assert_close(m.posedirs, torch.from_numpy(d["posedirs"].reshape(V * 3, -1).T.copy()))
    torch.testing.assert_close(m.J_regressor, torch.from_numpy(d["J_regressor"].toarray()))
    assert m.parents.tolist() == [-1, 0, 1, 1, 1] and m.parents.dtype == torch.int64
    assert m.faces.dtype == torch.int64 and m.faces.shape == (30, 3)
    assert m.lbs_weights.shape == (V, J) and m.vertex_colors is None
    m32 = m.to(dtype=torch.float32)
    assert m32.shapedirs.dtype == torch.float32 and m32.parents.dtype == torch.int64


def test_npz_round_trip(tmp_path):
    m = synthetic_head()
    p = tmp_path / "head.npz"
    save_flame_npz(m, p)
    m2 = load_flame(p)
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights", "faces",
                 "vertex_colors"):
        torch.testing.assert_close(getattr(m2, name), getattr(m, name), rtol=0, atol=0)
    assert (m2.n_shape, m2.n_expr) == (300, 100)


def test_npz_of_pickle_keys(tmp_path):
    d = _fake_flame_dict()
    d["J_regressor"] = d["J_regressor"].toarray()
    d = {k: v for k, v in d.items() if k not in ("bs_style", "bs_type")}
    p = tmp_path / "m.npz"
    np.savez(p, **d)
    m = load_flame(p)
    assert m.num_vertices == 40 and m.num_joints == 5 and m.n_shape == 12 and m.n_expr == 0


def test_missing_file(tmp_path):
    with pytest.raises(FlameFileError, match="nope.pkl.*not found"):
        load_flame(tmp_path / "nope.pkl")


def test_missing_key(tmp_path):
    d = _fake_flame_dict()
    del d["weights"]
    p = tmp_path / "m.pkl"
    _pickle_with_chumpy(d, p)
    with pytest.raises(FlameFileError, match=r"m\.pkl.*missing key.*weights"):
        load_flame(p)


@pytest.mark.parametrize("key,bad", [("weights", (40, 6)), ("shapedirs", (40, 2, 12)), ("posedirs", (40, 3, 35)),
                                     ("v_template", (40, 2))])
def test_wrong_shape(tmp_path, key, bad):
    d = _fake_flame_dict()
    d[key] = np.zeros(bad)
    p = tmp_path / "m.npz"
    d["J_regressor"] = d["J_regressor"].toarray()
    np.savez(p, **{k: v for k, v in d.items() if k not in ("bs_style", "bs_type")})
    with pytest.raises(FlameFileError, match=rf"m\.npz: key '{key}' expected shape .*got \[{bad[0]}, {bad[1]}"):
        load_flame(p)


def test_garbage_file(tmp_path):
    p = tmp_path / "junk.pkl"
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(FlameFileError, match="junk.pkl.*cannot read"):
        load_flame(p)


def test_container_validation():
    m = synthetic_head()
    with pytest.raises(TypeError, match="parents.*int64"):
        FlameModel(*m.lbs_args()[:4], m.parents.to(torch.int32), m.lbs_weights, m.faces)
    with pytest.raises(ValueError, match="lbs_weights.*expected shape"):
        FlameModel(*m.lbs_args()[:5], m.lbs_weights[:, :4], m.faces)
    with pytest.raises(ValueError, match="n_shape \\+ n_expr"):
        FlameModel(*m.lbs_args(), m.faces, n_shape=10, n_expr=10)


def test_save_npz_grad_bf16_and_exact_path(tmp_path):
    m = synthetic_head()
    m.v_template.requires_grad_(True)
    p = tmp_path / "head.bin"                                   # no .npz: written exactly here
    save_flame_npz(m, p)
    assert p.exists() and not (tmp_path / "head.bin.npz").exists()
    with np.load(p) as z:
        assert z["v_template"].dtype == np.float32
        np.testing.assert_array_equal(z["v_template"], m.v_template.detach().numpy())
    mb = m.to(dtype=torch.bfloat16)
    save_flame_npz(mb, tmp_path / "bf16.npz")
    m2 = load_flame(tmp_path / "bf16.npz")
    torch.testing.assert_close(m2.shapedirs, mb.shapedirs.float(), rtol=0, atol=0)
    save_flame_npz(m.to(dtype=torch.float64), tmp_path / "f64.npz")
    with np.load(tmp_path / "f64.npz") as z:
        assert z["shapedirs"].dtype == np.float64


def test_container_value_checks():
    m = synthetic_head()
    V = m.num_vertices
    args = m.lbs_args()
    bad_faces = m.faces.clone()
    bad_faces[0, 1] = V
    with pytest.raises(ValueError, match=rf"faces.*\[0, {V}\).*max {V}"):
        FlameModel(*args, bad_faces)
    bad_faces[0, 1] = -1
    with pytest.raises(ValueError, match="faces.*min -1"):
        FlameModel(*args, bad_faces)
    for par in ([0, 0, 1, 1, 1], [-1, 0, 3, 1, 1], [-1, -1, 1, 1, 1], [-1, 0, 2, 1, 1]):
        with pytest.raises(ValueError, match=r"parents.*tree.*got \[" + ", ".join(map(str, par))):
            FlameModel(*args[:4], torch.tensor(par), args[5], m.faces)
    with pytest.raises(ValueError, match="vertex_colors on meta"):
        FlameModel(*args, m.faces, vertex_colors=m.vertex_colors.to("meta"))
    FlameModel(*args, m.faces[:0], vertex_colors=m.vertex_colors)    # no faces: fine


@pytest.mark.parametrize("kw,exc", [(dict(n_shape="2"), TypeError), (dict(n_expr=2.0), TypeError),
                                    (dict(n_shape=True), TypeError), (dict(n_shape=-1), ValueError),
                                    (dict(n_expr=-3), ValueError)])
def test_load_flame_n_args(tmp_path, kw, exc):
    d = _fake_flame_dict()
    d["J_regressor"] = d["J_regressor"].toarray()
    p = tmp_path / "m.npz"
    np.savez(p, **{k: v for k, v in d.items() if k not in ("bs_style", "bs_type")})
    with pytest.raises(exc, match=f"load_flame: {next(iter(kw))}"):
        load_flame(p, **kw)
    assert load_flame(p, n_shape=np.int64(8)).n_expr == 4
