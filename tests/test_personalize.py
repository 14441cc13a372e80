"""Personalization on the CPU (small: the synthetic head's 5,023 level-0 Gaussians, 32x32 images):
zero residuals render as the avatar, the loss falls, fitting the mean head to another identity raises
PSNR on held-out views with held-out expressions, expression and shape refinement, bad inputs."""
import dataclasses
import math

import pytest
import torch

from ffavatar.avatar import Avatar, FlameMismatchError, Residuals
from ffavatar.avatar.personalize import DEFAULT_LR, History, Views, personalize
from ffavatar.avatar.ssim import l1_ssim_loss
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at

SIZE = 32
N_EXPR = 20          # expression components used (the rest zero)


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _cameras(azimuths):
    az = torch.tensor(azimuths)
    eye = torch.stack([0.75 * torch.sin(az), 0.03 + 0 * az, 0.75 * torch.cos(az)], -1)
    return look_at(eye, torch.tensor([0.0, -0.02, 0.0]).expand_as(eye))


def _identity(m, g, shape_scale=0.25):
    """Another person: random shape coefficients and a colour shift of the mean head."""
    t = Avatar.from_canonical(m, g)
    t.betas_shape = torch.cat([shape_scale * torch.randn(10), torch.zeros(m.n_shape - 10)])
    t.colors = (t.colors + torch.tensor([0.08, -0.04, 0.03]) + 0.02 * torch.randn(t.num_gaussians, 3)).clamp(0, 1)
    return t


def _views(m, avatar, azimuths, expr_scale=0.5):
    vm = _cameras(azimuths)
    K = intrinsics(SIZE, SIZE, 22.0)
    expr = expr_scale * torch.randn(len(azimuths), N_EXPR)
    with torch.no_grad():
        img = avatar.render(m, vm, K, SIZE, SIZE, expression=expr)
    return Views(img, vm, K, expr)


def test_zero_residuals_render_as_the_avatar(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    a.colors = torch.rand(a.num_gaussians, 3)
    a.opacities = 0.3 + 0.7 * torch.rand(a.num_gaussians)
    v = _views(m, _identity(m, g), [-0.5, 0.1, 0.6])
    with torch.no_grad():
        plain = a.render(m, v.viewmats, v.Ks, SIZE, SIZE, expression=v.expression)
        zero = dataclasses.replace(a, residuals=Residuals.zeros(a.num_gaussians)).render(
            m, v.viewmats, v.Ks, SIZE, SIZE, expression=v.expression)
    assert (plain - zero).abs().max().item() < 1e-6
    # with zero learning rates the fit keeps the residuals at zero and its loss is the avatar's loss
    out, hist = personalize(a, m, v.images, v.viewmats, v.Ks, v.expression, steps=2, lr=0.0, progress=False)
    want = l1_ssim_loss(plain, v.images).item()
    assert [s for s, _ in hist.loss] == [1, 2]
    assert all(abs(loss - want) < 1e-5 * max(want, 1e-3) + 1e-7 for _, loss in hist.loss), (hist.loss, want)
    assert all(t.abs().max().item() == 0 for t in out.residuals.tensors().values())
    assert a.residuals is None                       # the input avatar is not modified


def test_loss_falls(head, capsys):
    m, g = head
    a = Avatar.from_canonical(m, g)
    target = dataclasses.replace(a, colors=(a.colors + 0.1 * torch.randn(a.num_gaussians, 3)).clamp(0, 1))
    v = _views(m, target, [-0.4, 0.0, 0.4])
    out, hist = personalize(a, m, v.images, v.viewmats, v.Ks, v.expression, steps=20, progress=True, log_every=5)
    assert "personalize" in capsys.readouterr().err                  # the tqdm bar
    losses = [loss for _, loss in hist.loss]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    assert isinstance(hist, History) and hist.psnr == [] and hist.expression is None and hist.train_s > 0
    assert out.residuals.colors.abs().max().item() > 0


def test_identity_fit_raises_heldout_psnr(head):
    """The mean-head avatar fitted to 4 views of another identity (shape + colour) renders held-out
    views with held-out expressions much closer to that identity."""
    m, g = head
    target = _identity(m, g)
    train = _views(m, target, [-0.6, -0.2, 0.2, 0.6])
    held = _views(m, target, [-0.4, 0.0, 0.45])
    a = Avatar.from_canonical(m, g)
    out, hist = personalize(a, m, train.images, train.viewmats, train.Ks, train.expression, steps=30,
                            progress=False, eval_views=held, eval_every=15)
    steps = [s for s, _ in hist.psnr]
    assert steps == [0, 15, 30]
    before, after = hist.psnr[0][1], hist.psnr[-1][1]
    assert after > before + 4.0, hist.psnr
    # the returned avatar renders (through Avatar.render) what the history measured
    with torch.no_grad():
        img = out.render(m, held.viewmats, held.Ks, SIZE, SIZE, expression=held.expression)
    mse = (img.double() - held.images.double()).pow(2).flatten(1).mean(1)
    assert abs((-10 * torch.log10(mse)).mean().item() - after) < 0.05


def test_expression_refinement(head):
    """Only the expressions learn (residual rates 0): the given (noisy) coefficients move toward the
    truth, the others stay zero. 32x32 pixels of ~9 mm observe only part of the expression: the loss
    falls fast, the coefficient error by ~20%."""
    m, g = head
    a = Avatar.from_canonical(m, g)
    v = _views(m, a, [-0.3, 0.0, 0.3], expr_scale=1.0)
    noisy = v.expression + torch.randn_like(v.expression)
    rates = {k: 0.0 for k in DEFAULT_LR}
    rates["expression"] = 0.1
    _, hist = personalize(a, m, v.images, v.viewmats, v.Ks, noisy, steps=20, lr=rates, refine_expression=True,
                          progress=False)
    assert hist.expression.shape == (3, m.n_expr)
    assert hist.expression[:, N_EXPR:].abs().max().item() == 0
    err0 = (noisy - v.expression).norm().item()
    err1 = (hist.expression[:, :N_EXPR] - v.expression).norm().item()
    assert hist.loss[-1][1] < 0.5 * hist.loss[0][1], hist.loss
    assert err1 < 0.92 * err0, (err0, err1)


def test_shape_refinement(head):
    """Only the shape learns: a head of another shape is fitted through the shape coefficients."""
    m, g = head
    a = Avatar.from_canonical(m, g)
    b = torch.randn(8)
    b = 0.6 * 8 ** 0.5 * b / b.norm()          # a random direction at a fixed distance: equal difficulty
    target = dataclasses.replace(a, betas_shape=torch.cat([b, torch.zeros(m.n_shape - 8)]))
    v = _views(m, target, [-0.6, -0.2, 0.2, 0.6])
    held = _views(m, target, [-0.4, 0.45])
    rates = {k: 0.0 for k in DEFAULT_LR}
    rates["shape"] = 0.1
    out, hist = personalize(a, m, v.images, v.viewmats, v.Ks, v.expression, steps=40, lr=rates, refine_shape=8,
                            progress=False, eval_views=held, eval_every=20)
    assert out.betas_shape.shape == (m.n_shape,) and out.betas_shape[8:].abs().max().item() == 0
    assert a.betas_shape.abs().max().item() == 0                      # the input avatar is not modified
    assert hist.psnr[-1][1] > hist.psnr[0][1] + 5.0, hist.psnr
    dirs = m.shapedirs[..., :8]                                       # [5023,3,8]

    def err(b):                                                       # RMS vertex error of the shape
        return torch.einsum("nkc,c->nk", dirs, b[:8] - target.betas_shape[:8]).pow(2).mean().sqrt().item()

    err0, err1 = err(a.betas_shape), err(out.betas_shape)
    # 40 steps (20 left poorly seen directions half fitted: err1 / err0 up to 0.81 in one CI run); over
    # 12 seeds at 40 steps the ratio is 0.02-0.22
    assert err1 < 0.75 * err0, (err0, err1)


def test_image_layouts(head):
    """[V,3,H,W] and uint8 images are the same views as [V,H,W,3] floats."""
    m, g = head
    a = Avatar.from_canonical(m, g)
    v = _views(m, _identity(m, g), [-0.2, 0.3])
    u8 = (v.images * 255).round().to(torch.uint8)
    kw = dict(steps=1, lr=0.0, progress=False)
    l_hwc = personalize(a, m, u8.float() / 255, v.viewmats, v.Ks, v.expression, **kw)[1].loss[0][1]
    chw = (u8.float() / 255).permute(0, 3, 1, 2)
    l_chw = personalize(a, m, chw, v.viewmats, v.Ks, v.expression, **kw)[1].loss[0][1]
    l_u8 = personalize(a, m, u8, v.viewmats, v.Ks[None].expand(2, 3, 3), v.expression, **kw)[1].loss[0][1]
    assert abs(l_hwc - l_chw) < 1e-7 and abs(l_hwc - l_u8) < 1e-7


def _bad_cases(m, V=2):
    img = torch.rand(V, SIZE, SIZE, 3)
    vm, K = _cameras([-0.2, 0.2]), intrinsics(SIZE, SIZE, 22.0)
    nan = img.clone()
    nan[0, 1, 2, 0] = float("nan")
    J = m.num_joints
    return [
        (dict(images=img[..., :2]), ValueError, "images expected shape"),
        (dict(images=img[0]), ValueError, "images expected shape"),
        (dict(images=nan), ValueError, "images has NaN"),
        (dict(images=img * 3), ValueError, r"images expected values in \[0,1\]"),
        (dict(images=img.double().to(torch.int32)), TypeError, "images expected a floating"),
        (dict(images=img.to("meta")), ValueError, "images is on meta"),
        (dict(images=img.numpy()), TypeError, "images expected a torch.Tensor"),
        (dict(viewmats=vm[:1]), ValueError, r"viewmats expected shape \[2,4,4\]"),
        (dict(viewmats=vm.to("meta")), ValueError, "viewmats is on meta"),
        (dict(Ks=K[:2]), ValueError, "Ks expected shape"),
        (dict(expression=torch.zeros(3, 10)), ValueError, "expression expected shape"),
        (dict(expression=torch.zeros(V, m.n_expr + 1)), ValueError, "expression expected shape"),
        (dict(expression=torch.full((V, 10), float("nan"))), ValueError, "expression has NaN"),
        (dict(pose=torch.zeros(V, J * 3 + 1)), ValueError, "pose expected shape"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1"),
        (dict(steps=2.5), ValueError, "steps must be an integer"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr={"offset": 1e-3}), ValueError, "lr has unknown keys"),
        (dict(eval_views=Views(img[..., :2], vm, K)), ValueError, "eval_views.images expected shape"),
        (dict(eval_views=dict(images=img, viewmats=vm[:1], Ks=K)), ValueError, "eval_views.viewmats"),
        (dict(eval_every=0), ValueError, "eval_every"),
        (dict(refine_shape=-1), ValueError, "refine_shape"),
        (dict(refine_shape=m.n_shape + 1), ValueError, "refine_shape"),
        (dict(ssim_weight=2.0), ValueError, "ssim_weight"),
        (dict(avatar="not an avatar"), TypeError, "avatar expected an Avatar"),
        (dict(model=object()), TypeError, "model expected a FlameModel"),
    ]


def test_bad_inputs(head):
    m, g = head
    a = Avatar.from_canonical(m, g)
    img = torch.rand(2, SIZE, SIZE, 3)
    base = dict(avatar=a, model=m, images=img, viewmats=_cameras([-0.2, 0.2]), Ks=intrinsics(SIZE, SIZE, 22.0),
                steps=1, progress=False)
    for change, exc, msg in _bad_cases(m):
        with pytest.raises(exc, match=msg):
            personalize(**{**base, **change})
    other = dataclasses.replace(a, flame_fingerprint="sha256:" + "0" * 64)
    with pytest.raises(FlameMismatchError):
        personalize(**{**base, "avatar": other})


def test_avatar_method_is_the_function(head):
    """avatar.personalize(model, ...) is personalize(avatar, model, ...): the same fit, step by step."""
    m, g = head
    a = Avatar.from_canonical(m, g)
    target = dataclasses.replace(a, colors=(a.colors + 0.1 * torch.randn(a.num_gaussians, 3)).clamp(0, 1))
    v = _views(m, target, [-0.3, 0.3])
    out1, h1 = personalize(a, m, v.images, v.viewmats, v.Ks, v.expression, steps=4, progress=False)
    out2, h2 = a.personalize(m, v.images, v.viewmats, v.Ks, v.expression, steps=4, progress=False)
    assert h1.loss == h2.loss
    assert torch.equal(out1.residuals.colors, out2.residuals.colors)
