""".ffavatar files: round trip, atomic writes, and a clear error for every kind of bad file."""
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

import ffavatar
from ffavatar.avatar import Avatar, AvatarFileError, Residuals
from ffavatar.avatar import files as avfiles
from ffavatar.flame import atomic, canonical_gaussians, synthetic_head


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _avatar(head, residuals=True, views=True):
    m, g = head
    a = Avatar.from_canonical(m, g)
    N = a.num_gaussians
    a.offsets = 0.002 * torch.randn(N, 3)
    a.colors = torch.rand(N, 3)
    a.betas_shape = torch.randn(m.n_shape)
    if residuals:
        a.residuals = Residuals(offsets=torch.randn(N, 3), rotations=torch.randn(N, 3), scales=torch.randn(N, 3),
                                opacities=torch.randn(N), colors=torch.randn(N, 3))
    if views:
        V = 3
        a.expr, a.jaw_pose, a.eyes_pose = torch.randn(V, 100), torch.randn(V, 3), torch.randn(V, 6)
        a.neck_pose, a.rotation, a.translation = torch.randn(V, 3), torch.randn(V, 3), torch.randn(V, 3)
        a.viewmats, a.Ks, a.image_size = torch.randn(V, 4, 4), torch.randn(V, 3, 3), 224
    return a


def _tensors(a):
    out = {k: getattr(a, k) for k in ("anchor_idx", "anchor_weights", "means", "offsets", "quats", "scales",
                                       "opacities", "colors", "betas_shape", "expr", "jaw_pose", "eyes_pose",
                                       "neck_pose", "rotation", "translation", "viewmats", "Ks")}
    if a.residuals is not None:
        out.update({"r." + k: v for k, v in a.residuals.tensors().items()})
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("residuals, views", [(True, True), (False, False)])
def test_round_trip(tmp_path, head, residuals, views):
    a = _avatar(head, residuals, views)
    p = tmp_path / "a.ffavatar"
    a.save(p)
    b = Avatar.load(p, model=head[0])
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert (b.flame_fingerprint, b.n_expr, b.image_size) == (a.flame_fingerprint, 100, a.image_size)
    assert (b.residuals is None) == (not residuals)
    # the metadata a viewer or another tool reads
    from safetensors import safe_open
    with safe_open(p, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "ffavatar" and meta["format_version"] == "1"
    assert meta["flame_fingerprint"] == a.flame_fingerprint and meta["n_shape"] == "300" and meta["n_expr"] == "100"
    assert meta["units"] == "meters" and meta["camera_convention"] == "opencv"
    assert meta["library_version"] == ffavatar.__version__


def test_overwrite_and_no_temp_files(tmp_path, head):
    p = tmp_path / "a.ffavatar"
    a, b = _avatar(head), _avatar(head)
    a.save(p)
    b.save(p)
    assert torch.equal(Avatar.load(p).colors, b.colors)
    assert os.listdir(tmp_path) == ["a.ffavatar"]


def test_interrupted_write_keeps_the_old_file(tmp_path, head, monkeypatch):
    p = tmp_path / "a.ffavatar"
    old = _avatar(head)
    old.save(p)
    before = p.read_bytes()

    def half_then_fail(f, data):
        f.write(memoryview(data)[:len(data) // 2])
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(atomic, "_write_all", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        _avatar(head).save(p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["a.ffavatar"]
    monkeypatch.undo()

    def fail_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(atomic.os, "replace", fail_replace)
    with pytest.raises(OSError, match="rename failed"):
        _avatar(head).save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["a.ffavatar"]
    assert torch.equal(Avatar.load(p).colors, old.colors)
    # a new file interrupted mid-write leaves nothing
    monkeypatch.setattr(atomic, "_write_all", half_then_fail)
    with pytest.raises(OSError):
        _avatar(head).save(tmp_path / "new.ffavatar")
    assert os.listdir(tmp_path) == ["a.ffavatar"]


def test_save_to_a_missing_folder(tmp_path, head):
    with pytest.raises(AvatarFileError, match="does not exist"):
        _avatar(head).save(tmp_path / "nope" / "a.ffavatar")


def _good(tmp_path, head):
    p = tmp_path / "good.ffavatar"
    _avatar(head).save(p)
    return p, p.read_bytes()


def _write(tmp_path, data, name="bad.ffavatar"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _load_error(p, match, model=None):
    with pytest.raises(AvatarFileError, match=match) as e:
        Avatar.load(p, model)
    assert str(p) in str(e.value)
    return str(e.value)


def test_missing_and_empty(tmp_path):
    _load_error(tmp_path / "missing.ffavatar", "no such file")
    _load_error(_write(tmp_path, b""), "empty file")
    _load_error(_write(tmp_path, b"\x01\x02"), "truncated or not a safetensors file")


@pytest.mark.parametrize("frac", [0.001, 0.01, 0.5, 0.999])
def test_truncated(tmp_path, head, frac):
    _, data = _good(tmp_path, head)
    cut = max(9, int(len(data) * frac))
    _load_error(_write(tmp_path, data[:cut]), "truncated")


def test_bit_flips_in_the_header(tmp_path, head):
    _, data = _good(tmp_path, head)
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n]
    # the length field: low bit, a middle bit, the top byte
    for byte, bit in ((0, 0), (1, 3), (7, 7)):
        d = bytearray(data)
        d[byte] ^= 1 << bit
        _load_error(_write(tmp_path, bytes(d)), "truncated|corrupt")
    # structural characters and values inside the JSON
    for needle, bit in ((b"{", 0), (b'"dtype"', 1), (b"F32", 0), (b"data_offsets", 2), (b"[", 3)):
        d = bytearray(data)
        d[8 + header.index(needle)] ^= 1 << bit
        _load_error(_write(tmp_path, bytes(d)), "corrupt|truncated")
    # a digit of a tensor's offsets and of the checksum-covered metadata
    i = header.index(b'"data_offsets":[') + len(b'"data_offsets":[')
    d = bytearray(data)
    d[8 + i] ^= 1
    _load_error(_write(tmp_path, bytes(d)), "corrupt")
    i = header.index(b'"n_expr":"') + len(b'"n_expr":"')
    d = bytearray(data)
    d[8 + i] ^= 1                                                # "100" -> "000"
    _load_error(_write(tmp_path, bytes(d)), "checksum")


def test_bit_flip_in_the_data(tmp_path, head):
    _, data = _good(tmp_path, head)
    d = bytearray(data)
    d[-1000] ^= 0x10
    _load_error(_write(tmp_path, bytes(d)), "checksum does not match")


def test_foreign_safetensors(tmp_path):
    p = tmp_path / "weights.safetensors"
    save_file({"w": torch.randn(3, 3)}, p)
    _load_error(p, "without ffavatar metadata")
    save_file({"w": torch.randn(3, 3)}, p, metadata={"format": "pt"})
    _load_error(p, "not an .ffavatar file")


def test_newer_version(tmp_path, head):
    a = _avatar(head)
    meta = avfiles._metadata(a)
    meta["format_version"] = "2"
    p = tmp_path / "new.ffavatar"
    avfiles._write_file(p, avfiles._tensors(a), meta)
    msg = _load_error(p, "format_version 2 is newer than this library's 1")
    assert "upgrade" in msg


def test_missing_tensors_and_wrong_shapes(tmp_path, head):
    a = _avatar(head)
    meta, good = avfiles._metadata(a), avfiles._tensors(a)
    p = tmp_path / "x.ffavatar"

    def write(**change):
        t = dict(good)
        for k, v in change.items():
            if v is None:
                del t[k]
            else:
                t[k] = v
        avfiles._write_file(p, t, meta)
        return p

    _load_error(write(quats=None, colors=None), r"missing tensors \['quats', 'colors'\]")
    _load_error(write(**{"residual.scales": None}), "incomplete residuals")
    _load_error(write(quats=good["quats"][:, :3]), r"tensor 'quats' expected shape \[5023, 4\].*got \[5023, 3\]")
    _load_error(write(opacities=good["opacities"][:-1]), r"tensor 'opacities' expected shape \[5023\]")
    _load_error(write(betas_shape=good["betas_shape"][:10]), r"tensor 'betas_shape' expected shape \[300\]")
    _load_error(write(anchor_idx=good["anchor_idx"][:, 0]), r"tensor 'anchor_idx' expected shape \[N,K\]")
    _load_error(write(**{"views.jaw_pose": torch.zeros(3, 4)}), r"tensor 'views.jaw_pose' expected shape \[3, 3\]")
    _load_error(write(**{"views.Ks": torch.zeros(3, 3, 4)}), r"tensor 'views.Ks' expected shape \[3, 3, 3\]")
    _load_error(write(**{"views.Ks": torch.zeros(2, 3, 3)}), "per-view tensors disagree on the number of views")
    _load_error(write(colors=good["colors"].to(torch.int32)), "tensor 'colors' expected a floating dtype")
    _load_error(write(extra=torch.zeros(2)), r"unknown tensors \['extra'\]")
    meta = dict(meta, content_sha256="x")
    from safetensors.torch import save
    p.write_bytes(save(good, metadata={k: v for k, v in meta.items() if k != "content_sha256"}))
    _load_error(p, "no content checksum")


def test_other_flame_model(tmp_path, head):
    m, _ = head
    p, _ = _good(tmp_path, head)
    other = m.to()
    other.shapedirs = other.shapedirs.clone()
    other.shapedirs[0, 0, 0] += 1e-4
    msg = _load_error(p, "made for the FLAME model sha256:", model=other)
    assert "load it with the model the avatar was made with" in msg
    Avatar.load(p, model=m)                                       # the right one loads
    Avatar.load(p, model=m.to(dtype=torch.float64))               # in any dtype


def test_loaded_avatar_renders_the_same(tmp_path, head):
    from ffavatar.geometry import intrinsics, look_at
    m, _ = head
    a = _avatar(head, views=False)
    a.residuals = a.residuals.map(lambda t: 0.05 * t)
    p = tmp_path / "a.ffavatar"
    a.save(p)
    b = Avatar.load(p, m)
    vm = look_at(torch.tensor([0.1, 0.0, 0.75]), torch.tensor([0.0, -0.02, 0.0]))
    K = intrinsics(48, 48, 22.0)
    expr = torch.randn(1, 100)
    x, y = a.render(m, vm, K, 48, 48, expr), b.render(m, vm, K, 48, 48, expr)
    assert torch.equal(x, y) and x.std() > 0.02


def test_reconstructed_avatar_saves_loads_and_renders(tmp_path, head):
    """FFAvatarModel.reconstruct's avatar (tiny preset: 16 shape / 10 expression coefficients, per-view
    estimates sliced from one tensor) carries the synthetic head's fingerprint and goes through a file."""
    import warnings
    from ffavatar.geometry import intrinsics, look_at
    from ffavatar.nn.model import FFAvatarModel
    m, _ = head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = FFAvatarModel.from_preset("tiny").eval().reconstruct(torch.rand(2, 3, 64, 64))
    assert a.flame_fingerprint == Avatar.from_canonical(m, head[1]).flame_fingerprint
    p = tmp_path / "rec.ffavatar"
    a.save(p)
    b = Avatar.load(p, m)
    assert b.num_views == 2 and b.image_size == a.image_size and b.n_expr == 10
    for k, v in _tensors(a).items():
        assert torch.equal(v, _tensors(b)[k]), k
    vm = look_at(torch.tensor([0.0, 0.0, 0.75]), torch.tensor([0.0, -0.02, 0.0]))
    K = intrinsics(32, 32, 22.0)
    x = a.render(m, vm, K, 32, 32, a.expr[:1], None)
    assert x.shape == (1, 32, 32, 3) and torch.equal(x, b.render(m, vm, K, 32, 32, b.expr[:1], None))
