"""3DGS .ply export: Inria's layout read back with plyfile, rebuilt with the standard conventions
(sigmoid opacity, exp scale, SH DC colour) and rendered to the avatar's own image (canonical and
posed frames)."""
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

import ffavatar_kernels as fk
from ffavatar.avatar import Avatar, PlyFileError, Residuals, load_ply
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at

C0 = 0.28209479177387814
SIZE = 64
ORDER = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
         "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _avatar(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    N = a.num_gaussians
    a.offsets = 0.001 * torch.randn(N, 3)
    a.opacities = 0.2 + 0.8 * torch.rand(N)
    a.colors = torch.rand(N, 3)
    a.betas_shape = torch.cat([torch.randn(10), torch.zeros(m.n_shape - 10)])
    a.residuals = Residuals(offsets=0.0005 * torch.randn(N, 3), rotations=0.2 * torch.randn(N, 3),
                            scales=0.1 * torch.randn(N, 3), opacities=0.5 * torch.randn(N),
                            colors=0.1 * torch.randn(N, 3))
    return a


def _cameras():
    out = []
    for az in (0.0, 0.6):
        eye = torch.tensor([0.75 * math.sin(az), 0.03, 0.75 * math.cos(az)])
        out.append(look_at(eye, torch.tensor([0.0, -0.02, 0.0])))
    return torch.stack(out), intrinsics(SIZE, SIZE, 22.0)


def _read_standard(path):
    """The 3DGS reader conventions, written here independently of ffavatar's load_ply."""
    v = PlyData.read(str(path))["vertex"].data
    f = lambda *k: torch.tensor(np.stack([v[p] for p in k], -1), dtype=torch.float32)  # noqa: E731
    q = f("rot_0", "rot_1", "rot_2", "rot_3")
    return (f("x", "y", "z"), q / q.norm(dim=-1, keepdim=True), torch.exp(f("scale_0", "scale_1", "scale_2")),
            torch.sigmoid(torch.tensor(np.asarray(v["opacity"]), dtype=torch.float32)),
            (0.5 + C0 * f("f_dc_0", "f_dc_1", "f_dc_2")).clamp_min(0.0))


def _render_splats(means, quats, scales, opac, colors, vm, K, bg):
    img, _, _ = fk.rasterize(means, quats, scales, opac, colors, vm, K[None].expand(len(vm), 3, 3).contiguous(),
                             SIZE, SIZE, backgrounds=torch.tensor([bg]).expand(len(vm), 3).contiguous())
    return img.clamp(0, 1)


def test_layout_and_values(tmp_path, head):
    a = _avatar(head)
    p = tmp_path / "a.ply"
    a.export_ply(p)
    raw = p.read_bytes()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\n")
    ply = PlyData.read(str(p))
    assert [e.name for e in ply.elements] == ["vertex"]
    v = ply["vertex"].data
    assert list(v.dtype.names) == ORDER and all(v.dtype[n] == np.dtype("<f4") for n in ORDER)
    assert len(v) == a.num_gaussians
    e = a.effective()
    g = lambda *k: torch.tensor(np.stack([v[n] for n in k], -1))  # noqa: E731
    torch.testing.assert_close(g("opacity")[:, 0], torch.logit(e.opacities.double()).float(), atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(g("scale_0", "scale_1", "scale_2"), torch.log(e.scales), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(g("f_dc_0", "f_dc_1", "f_dc_2"), (e.colors - 0.5) / C0, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(g("rot_0", "rot_1", "rot_2", "rot_3"), e.quats, atol=1e-6, rtol=0)
    assert np.all(g("nx", "ny", "nz").numpy() == 0)
    # no model: the stored canonical means + residual offsets
    torch.testing.assert_close(g("x", "y", "z"), a.means + a.residuals.offsets, atol=1e-7, rtol=0)


def test_load_ply_round_trip(tmp_path, head):
    a = _avatar(head)
    p = tmp_path / "a.ply"
    a.export_ply(p)
    s, e = load_ply(p), a.effective()
    assert s.num_gaussians == a.num_gaussians and s.sh_rest is None
    torch.testing.assert_close(s.opacities, e.opacities, atol=1e-6, rtol=0)
    torch.testing.assert_close(s.scales, e.scales, atol=0, rtol=1e-6)
    torch.testing.assert_close(s.colors, e.colors, atol=1e-6, rtol=0)
    torch.testing.assert_close(s.quats, e.quats, atol=1e-6, rtol=0)


@pytest.mark.parametrize("posed", [False, True])
def test_ply_renders_like_the_avatar(tmp_path, head, posed):
    m, _ = head
    a = _avatar(head)
    vm, K = _cameras()
    bg = (0.1, 0.2, 0.3)
    if posed:
        expr = 0.8 * torch.randn(1, m.n_expr)
        pose = torch.zeros(1, 15)
        pose[0, 3:6] = torch.tensor([0.15, -0.3, 0.05])       # neck
        pose[0, 6] = 0.25                                      # jaw open
        pose[0, 0:3] = torch.tensor([0.05, 0.1, 0.0])          # global
        tr = torch.tensor([0.01, -0.02, 0.03])
        kw = dict(expression=expr, pose=pose, translation=tr)
    else:
        kw = {}
    p = tmp_path / "a.ply"
    a.export_ply(p, model=m, **kw)
    want = a.render(m, vm, K, SIZE, SIZE, kw.get("expression"), kw.get("pose"), translation=kw.get("translation"),
                    background=bg)
    assert want.std() > 0.05                                   # the head is in view
    got = _render_splats(*_read_standard(p), vm, K, bg)
    assert (got - want).abs().max().item() < 1e-3
    # negative control: the wrong colour convention (f_dc as RGB) is far off
    means, quats, scales, opac, colors = _read_standard(p)
    wrong = _render_splats(means, quats, scales, opac, (colors - 0.5) / C0, vm, K, bg)
    assert (wrong - want).abs().max().item() > 0.1
    if posed:                                                  # and the canonical frame is not the posed one
        a.export_ply(tmp_path / "c.ply", model=m)
        canon = _render_splats(*_read_standard(tmp_path / "c.ply"), vm, K, bg)
        assert (canon - want).abs().max().item() > 0.1


def test_export_errors(tmp_path, head):
    a = _avatar(head)
    with pytest.raises(ValueError, match="needs the FlameModel"):
        a.export_ply(tmp_path / "a.ply", pose=torch.zeros(15))
    with pytest.raises(ValueError, match="one frame per file"):
        a.export_ply(tmp_path / "a.ply", expression=torch.zeros(2, 100), model=head[0])
    with pytest.raises(PlyFileError, match="does not exist"):
        a.export_ply(tmp_path / "nope" / "a.ply")


def test_load_ply_errors_and_sh_rest(tmp_path):
    from plyfile import PlyElement
    with pytest.raises(PlyFileError, match="no such file"):
        load_ply(tmp_path / "missing.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"not a ply file")
    with pytest.raises(PlyFileError, match="junk.ply: not a readable .ply"):
        load_ply(junk)
    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "pts.ply"))
    with pytest.raises(PlyFileError, match="missing 3DGS vertex properties"):
        load_ply(tmp_path / "pts.ply")
    # a degree-1 file as 3DGS trainers write it: f_rest per channel (R: 0-2, G: 3-5, B: 6-8)
    names = ORDER[:9] + [f"f_rest_{i}" for i in range(9)] + ORDER[9:]
    rec = np.zeros(2, dtype=[(n, "<f4") for n in names])
    for i in range(9):
        rec[f"f_rest_{i}"] = i + 1
    rec["rot_0"] = 2.0
    PlyData([PlyElement.describe(rec, "vertex")]).write(str(tmp_path / "sh1.ply"))
    s = load_ply(tmp_path / "sh1.ply")
    assert s.sh_rest.shape == (2, 3, 3)
    assert s.sh_rest[0, :, 0].tolist() == [1, 2, 3] and s.sh_rest[0, :, 2].tolist() == [7, 8, 9]
    assert s.quats[0].tolist() == [1, 0, 0, 0] and s.opacities[0].item() == 0.5
