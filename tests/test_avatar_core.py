"""Avatar: from the canonical Gaussians, residuals, posing against the float64 reference skinning,
rendering against a direct rasterize call, FLAME fingerprints and the model check."""
import dataclasses
import math

import pytest
import torch

import ffavatar_kernels as fk
from ffavatar_kernels.reference import flame_lbs as ref
from ffavatar_kernels.reference.rotations import quat_to_matrix
from ffavatar.avatar import Avatar, FlameMismatchError, Residuals
from ffavatar.flame import canonical_gaussians, flame_fingerprint, synthetic_fingerprint, synthetic_head
from ffavatar.geometry import intrinsics, look_at
from ffavatar.render import select_backend

SIZE = 64


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _clone(m):
    """A deep copy of a FlameModel (``m.to()`` shares its tensors)."""
    return dataclasses.replace(m, **{f.name: getattr(m, f.name).clone() for f in dataclasses.fields(m)
                                     if isinstance(getattr(m, f.name), torch.Tensor)})


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _camera(n=1, az=0.0):
    eyes = torch.tensor([[0.75 * math.sin(az + 0.3 * i), 0.02, 0.75 * math.cos(az + 0.3 * i)] for i in range(n)])
    return look_at(eyes, torch.tensor([0.0, -0.02, 0.0]).expand(n, 3)), intrinsics(SIZE, SIZE, 22.0)


def _random_avatar(m, g, residuals=True, shape=True):
    a = Avatar.from_canonical(m, g)
    N = a.num_gaussians
    a.offsets = 0.002 * torch.randn(N, 3)
    a.opacities = 0.3 + 0.7 * torch.rand(N)
    a.colors = torch.rand(N, 3)
    if shape:
        a.betas_shape = torch.cat([0.8 * torch.randn(20), torch.zeros(m.n_shape - 20)])
    if residuals:
        a.residuals = Residuals(offsets=0.001 * torch.randn(N, 3), rotations=0.3 * torch.randn(N, 3),
                                scales=0.2 * torch.randn(N, 3), opacities=torch.randn(N),
                                colors=0.2 * torch.randn(N, 3))
    return a


def _motion(m, B):
    expr = torch.randn(B, m.n_expr) * 0.7
    pose = torch.zeros(B, 5, 3)
    pose[:, 1] = 0.2 * torch.randn(B, 3)      # neck
    pose[:, 2, 0] = 0.2 * torch.rand(B)       # jaw
    pose[:, 3:] = 0.1 * torch.randn(B, 2, 3)  # eyes
    pose[:, 0] = 0.1 * torch.randn(B, 3)      # global
    return expr, pose.reshape(B, 15)


def test_from_canonical_is_the_mean_head(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    assert a.num_gaussians == g.num_gaussians and a.anchor_idx.dtype == torch.int64
    assert a.flame_fingerprint == flame_fingerprint(m) == synthetic_fingerprint()
    assert a.n_expr == m.n_expr and torch.equal(a.betas_shape, torch.zeros(m.n_shape))
    assert a.offsets.abs().max() < 1e-6                       # canonical_gaussians sit on their anchors
    torch.testing.assert_close(a.canonical_means(m), g.means, atol=1e-6, rtol=0)
    # zero pose + zero expression is the canonical frame
    means, quats = a.posed(None, None, m)
    torch.testing.assert_close(means[0], g.means, atol=2e-6, rtol=0)
    torch.testing.assert_close(quats[0], g.quats / g.quats.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)


def test_zero_residuals_change_nothing(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    base = a.effective()
    a.init_residuals()
    eff = a.effective()
    for name in ("offsets", "quats", "scales", "colors"):
        assert torch.equal(getattr(eff, name), getattr(base, name)), name
    torch.testing.assert_close(eff.opacities, base.opacities, atol=1e-7, rtol=0)
    a.opacities[:3] = torch.tensor([0.0, 1.0, 0.5])
    a.residuals.opacities[:3] = torch.tensor([2.0, -3.0, 0.0])
    op = a.effective().opacities[:3]
    assert op.tolist() == [0.0, 1.0, 0.5]                      # 0 and 1 stay (no logit overflow)


def test_residual_formulas(head):
    m, g = head
    a = _random_avatar(m, g)
    r, eff = a.residuals, a.effective()
    torch.testing.assert_close(eff.offsets, a.offsets + r.offsets)
    torch.testing.assert_close(eff.scales, a.scales * torch.exp(r.scales))
    torch.testing.assert_close(eff.opacities, torch.sigmoid(torch.logit(a.opacities.double()) + r.opacities.double()).float(),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(eff.colors, (a.colors + r.colors).clamp(0, 1))
    # rotation residual: R_eff = R(r) @ R(q), R(r) by Rodrigues (float64)
    want = ref.batch_rodrigues(r.rotations.double()) @ quat_to_matrix(a.quats.double())
    torch.testing.assert_close(quat_to_matrix(eff.quats.double()), want, atol=2e-6, rtol=0)
    assert torch.allclose(eff.quats.norm(dim=-1), torch.ones(a.num_gaussians), atol=1e-6)


def test_posed_matches_float64_reference(head):
    m, g = head
    a = _random_avatar(m, g)
    expr, pose = _motion(m, 3)
    expr = expr[:, :40]                                         # fewer components: the rest are zero
    tr = 0.05 * torch.randn(3, 3)
    means, quats = a.posed(expr, pose, m, translation=tr)
    assert means.shape == (3, a.num_gaussians, 3) and quats.shape == (3, a.num_gaussians, 4)
    # independent float64 path: residuals by their formulas, full betas, the reference skinning
    m64 = m.to(dtype=torch.float64)
    r = a.residuals
    q = a.quats.double() / a.quats.double().norm(dim=-1, keepdim=True)
    from ffavatar_kernels.reference.rotations import matrix_to_quat
    q = matrix_to_quat(ref.batch_rodrigues(r.rotations.double()) @ quat_to_matrix(q))
    betas = torch.cat([a.betas_shape.double().expand(3, -1), expr.double(),
                       torch.zeros(3, m.n_expr - 40, dtype=torch.float64)], 1)
    rm, rq = ref.skin_gaussians(betas, pose.double(), *m64.lbs_args(), a.anchor_idx, a.anchor_weights.double(),
                                (a.offsets + r.offsets).double(), q)
    rm = rm + tr.double()[:, None]
    assert _rel(means, rm) < 1e-5
    # quaternion sign is free: compare rotations
    assert _rel(quat_to_matrix(quats.double()), quat_to_matrix(rq)) < 1e-5
    # translation only shifts
    m0, _ = a.posed(expr, pose, m)
    torch.testing.assert_close(means - m0, tr[:, None].expand_as(means), atol=1e-6, rtol=0)


def test_posed_input_forms(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    expr, pose = _motion(m, 1)
    one, _ = a.posed(expr[0], pose[0], m)
    torch.testing.assert_close(a.posed(expr, pose.reshape(1, 5, 3), m)[0], one)
    R = ref.batch_rodrigues(pose.reshape(1, 5, 3))
    torch.testing.assert_close(a.posed(expr, R, m)[0], one, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="expression"):
        a.posed(torch.zeros(1, m.n_expr + 1), None, m)
    with pytest.raises(ValueError, match="pose"):
        a.posed(None, torch.zeros(1, 14), m)
    with pytest.raises(ValueError, match="frames"):
        a.posed(torch.zeros(2, 5), torch.zeros(3, 15), m)
    with pytest.raises(ValueError, match="FlameModel"):
        a.posed(None, None, None)


def test_render_matches_direct_rasterize(head):
    m, g = head
    a = _random_avatar(m, g)
    expr, pose = _motion(m, 2)
    vm, K = _camera(2)
    img = a.render(m, vm, K, SIZE, SIZE, expr, pose, background=(0.2, 0.3, 0.4))
    assert img.shape == (2, SIZE, SIZE, 3)
    means, quats = a.posed(expr, pose, m)
    e = a.effective()
    for b in range(2):
        want, _, _ = fk.rasterize(means[b], quats[b], e.scales, e.opacities, e.colors, vm[b:b + 1], K[None],
                                  SIZE, SIZE, backgrounds=torch.tensor([[0.2, 0.3, 0.4]]))
        assert (img[b] - want[0].clamp(0, 1)).abs().max() < 1e-5
    assert img.std() > 0.05                                   # the head is in view
    # the reference backend renders the same image
    img_ref = a.render(m, vm, K, SIZE, SIZE, expr, pose, background=(0.2, 0.3, 0.4),
                       backend=select_backend("cpu", prefer="reference"))
    assert (img_ref - img).abs().max() < 1e-3


def test_render_one_frame_many_views_and_lit(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    vm, K = _camera(3)
    img = a.render(m, vm, K, SIZE, SIZE)
    assert img.shape == (3, SIZE, SIZE, 3)
    for c in range(3):
        torch.testing.assert_close(img[c], a.render(m, vm[c], K, SIZE, SIZE)[0])
    assert (img[0] - img[1]).abs().max() > 0.05               # different views
    lit = a.render(m, vm[:1], K, SIZE, SIZE, lit=True)
    assert (lit - img[:1]).abs().max() > 0.05
    with pytest.raises(ValueError, match="viewmats"):
        a.render(m, vm, K, SIZE, SIZE, torch.zeros(2, 10))     # 2 frames, 3 cameras


def test_fingerprints(head):
    m, _ = head
    fp = flame_fingerprint(m)
    assert fp.startswith("sha256:") and len(fp) == 7 + 64
    assert flame_fingerprint(m.to(dtype=torch.float64)) == fp   # dtype does not matter
    assert flame_fingerprint(synthetic_head()) == fp            # deterministic
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"):
        m2 = _clone(m)
        getattr(m2, name).view(-1)[7] += 1e-3
        assert flame_fingerprint(m2) != fp, name
    m2 = _clone(m)
    m2.faces[0] = m2.faces[0].flip(0)
    assert flame_fingerprint(m2) != fp
    # in-place change after a cached call is seen
    m2 = _clone(m)
    assert flame_fingerprint(m2) == fp
    m2.v_template[0, 0] += 1e-3
    assert flame_fingerprint(m2) != fp
    assert flame_fingerprint(m) == fp                             # the original is untouched


def test_model_mismatch(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    other = m.to()
    other.v_template = other.v_template * 1.01
    with pytest.raises(FlameMismatchError, match="FLAME model"):
        a.posed(None, None, other)
    with pytest.raises(FlameMismatchError):
        a.render(other, *_camera(1), SIZE, SIZE)
    a.flame_fingerprint = None                                   # unknown: accepted
    a.posed(None, None, other)


def test_to_and_detach(head):
    m, g = head
    a = _random_avatar(m, g)
    b = a.to(dtype=torch.float64)
    assert b.offsets.dtype == torch.float64 and b.residuals.colors.dtype == torch.float64
    assert b.anchor_idx.dtype == torch.int64 and b.flame_fingerprint == a.flame_fingerprint
    a.init_residuals(requires_grad=True)
    assert a.residuals.offsets.requires_grad and not a.detach().residuals.offsets.requires_grad


def test_posing_is_differentiable_in_residuals(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    r = a.init_residuals(requires_grad=True)
    expr, pose = _motion(m, 1)
    means, quats = a.posed(expr, pose, m)
    (means.sum() + quats[..., 1].sum()).backward()
    assert r.offsets.grad is not None and r.offsets.grad.abs().sum() > 0
    assert r.rotations.grad is not None and r.rotations.grad.abs().sum() > 0


def test_validation_names_the_field(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    with pytest.raises(ValueError, match="quats"):
        Avatar(**{**{k: getattr(a, k) for k in ("anchor_idx", "anchor_weights", "means", "offsets", "scales",
                                                 "opacities", "colors", "betas_shape")}, "quats": a.quats[:, :3]})
    with pytest.raises(ValueError, match="residuals.colors"):
        r = Residuals.zeros(a.num_gaussians)
        r.colors = r.colors[:5]
        a.residuals = r
        a.validate()
