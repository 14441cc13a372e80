"""The expression-only fast path of the model layer (FlameModel.expression_lbs_args, render_frames'
lbs_args, Animator): same result as the full skinning call, the shaped template cached per shape,
gradients reach the shape, bad widths rejected."""
import pytest
import torch

from ffavatar.flame.motion import motion_script
from ffavatar.render import Animator, Backend, render_frames, select_backend
from ffavatar.geometry.cameras import intrinsics, orbit
from ffavatar.flame.gaussians import canonical_gaussians
from ffavatar.flame.synthetic import synthetic_head
from ffavatar_kernels import _ext
from ffavatar_kernels.reference import flame_lbs as ref_lbs

B, SIZE = 2, 16
BACKENDS = ["reference", pytest.param("compiled", marks=pytest.mark.skipif(
    not _ext.load(), reason="compiled extension not built (FFAVATAR_EXT_PATH)"))]


@pytest.fixture(scope="module")
def heads():
    """{dtype: (model, gaussians)} of the synthetic head (Gaussians built once, cast per dtype)."""
    m = synthetic_head(torch.float64)
    g = canonical_gaussians(m, levels=1)
    return {dt: (m.to(dtype=dt), g.to(dtype=dt)) for dt in (torch.float64, torch.float32)}


def _frames(model, shape_per_row=False):
    """Motion-script betas [B,S] with a random shape (one per row if shape_per_row), pose, cameras."""
    betas, pose = motion_script(B, model.n_shape, model.n_expr, dtype=model.dtype)
    rows = B if shape_per_row else 1
    betas[:, :model.n_shape] = 0.5 * torch.randn(rows, model.n_shape, dtype=model.dtype)
    return betas, pose, orbit(B, dtype=model.dtype), intrinsics(SIZE, SIZE, dtype=model.dtype)


def _spy(backend: Backend, seen: list, render: bool = True) -> Backend:
    """The backend, with skin_gaussians recording (betas, means, quats) of every call; with
    render=False a blank rasterizer (tests of the skinning only)."""
    def skin(betas, *args):
        out = backend.skin_gaussians(betas, *args)
        seen.append((betas, *out))
        return out

    def blank(means, *args, **kwargs):
        return means.new_zeros(means.shape[0], 1, SIZE, SIZE, 3), None, None
    if render:
        return Backend(skin, backend.rasterize, backend.description, backend.tiled_reference)
    return Backend(skin, blank, "skinning only")


def _full_skin(model, g, betas, pose):
    return ref_lbs.skin_gaussians(betas, pose, *model.lbs_args(), g.anchor_idx, g.anchor_weights, None, g.quats)


def _expr_inputs(m, betas):
    return betas[:, m.n_shape:].contiguous(), m.expression_lbs_args(betas[0, :m.n_shape])


@pytest.mark.parametrize("prefer", BACKENDS)
@pytest.mark.parametrize("dt,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fast_path_matches_full_call(heads, prefer, dt, tol):
    m, g = heads[dt]
    betas, pose, vm, K = _frames(m)
    expr, args = _expr_inputs(m, betas)
    seen = []
    render = dt == torch.float64      # float32 images: alpha cut-offs would amplify round-off
    backend = _spy(select_backend("cpu", prefer), seen, render)
    img = render_frames(m, g, expr, pose, vm, K, SIZE, SIZE, backend=backend, lbs_args=args)
    got_betas, means, quats = seen[-1]
    assert got_betas.shape == (B, m.n_expr)
    want_means, want_quats = _full_skin(m, g, betas, pose)
    torch.testing.assert_close(means, want_means, rtol=tol, atol=tol)
    torch.testing.assert_close(quats, want_quats, rtol=tol, atol=tol)
    if render:
        want_img = render_frames(m, g, betas, pose, vm, K, SIZE, SIZE, backend=backend)
        assert seen[-1][0].shape == (B, m.num_betas)                               # the full call
        torch.testing.assert_close(img, want_img, rtol=tol, atol=tol)


def test_betas_width_must_match_lbs_args(heads):
    m, g = heads[torch.float64]
    betas, pose, vm, K = _frames(m)
    expr, args = _expr_inputs(m, betas)
    with pytest.raises(ValueError, match=rf"betas expected shape \[B,{m.n_expr}\]"):
        render_frames(m, g, betas, pose, vm, K, SIZE, SIZE, lbs_args=args)
    with pytest.raises(ValueError, match=rf"betas expected shape \[B,{m.num_betas}\]"):
        render_frames(m, g, expr, pose, vm, K, SIZE, SIZE)


def test_lbs_args_checked_and_inference_models_work(heads):
    m, g = heads[torch.float64]
    betas, pose, vm, K = _frames(m)
    with pytest.raises(TypeError, match="lbs_args"):
        render_frames(m, g, betas, pose, vm, K, SIZE, SIZE, lbs_args=m.lbs_args)  # not called
    with torch.inference_mode():                 # inference tensors (no version counter): not cached
        mi = synthetic_head(torch.float32)
        gi = canonical_gaussians(mi, levels=1)
        a, b = mi.expression_lbs_args(torch.zeros(mi.n_shape)), mi.expression_lbs_args(torch.zeros(mi.n_shape))
    assert mi._shaped_cache is None and a[0] is not b[0]
    seen = []
    anim = Animator(mi, gi, SIZE, backend=_spy(select_backend("cpu", "reference"), seen, render=False))
    assert len(list(anim.render_sequence(2, batch=2))) == 1 and seen[0][0].shape[1] == mi.n_expr
    assert list(anim.render_sequence(0)) == []


def test_animator_takes_the_fast_path(heads):
    m, g = heads[torch.float32]
    seen = []
    anim = Animator(m, g, SIZE, backend=_spy(select_backend("cpu", "reference"), seen, render=False))
    frames = list(anim.render_sequence(3, batch=2))
    assert [f.shape[0] for f in frames] == [2, 1] and all(b.shape[1] == m.n_expr for b, *_ in seen)
    betas, pose = motion_script(3, m.n_shape, m.n_expr, num_joints=m.num_joints, fps=anim.fps)
    want_means, _ = _full_skin(m, g, betas, pose)
    torch.testing.assert_close(torch.cat([s[1] for s in seen]), want_means, rtol=1e-5, atol=1e-5)


def test_shaped_template_cached_per_shape():
    m = synthetic_head(torch.float64)
    bs = torch.randn(m.n_shape, dtype=torch.float64)
    a = m.expression_lbs_args(bs)
    b = m.expression_lbs_args(bs.clone()[None])                  # same values, new object, [1,n_shape]
    assert a[0] is b[0] and a[1] is b[1]
    assert a[1].shape == (m.num_vertices, 3, m.n_expr) and a[1].is_contiguous()
    torch.testing.assert_close(a[1], m.shapedirs[..., m.n_shape:], rtol=0, atol=0)
    torch.testing.assert_close(a[0], m.v_template + m.shapedirs[..., :m.n_shape] @ bs)
    assert a[2:] == m.lbs_args()[2:]
    c = m.expression_lbs_args(bs + 1)                            # another shape: recomputed template
    assert c[0] is not a[0] and c[1] is a[1]
    torch.testing.assert_close(c[0], m.v_template + m.shapedirs[..., :m.n_shape] @ (bs + 1))
    with torch.no_grad():
        m.shapedirs.mul_(2)                                      # changed in place: both recomputed
    d = m.expression_lbs_args(bs + 1)
    assert d[0] is not c[0] and d[1] is not c[1]
    torch.testing.assert_close(d[1], m.shapedirs[..., m.n_shape:], rtol=0, atol=0)
    with torch.inference_mode():                                 # cached as normal tensors
        e = m.expression_lbs_args(bs.clone())
    assert not (e[0].is_inference() or e[1].is_inference())
    with pytest.raises(ValueError, match="n_shape"):
        m.expression_lbs_args(bs[:-1])


def test_grad_reaches_shape_and_nothing_is_cached():
    m = synthetic_head(torch.float64)
    g = canonical_gaussians(m, levels=1)
    betas, pose = motion_script(B, m.n_shape, m.n_expr, dtype=torch.float64)
    bs = (0.5 * torch.randn(m.n_shape, dtype=torch.float64)).requires_grad_()
    args = m.expression_lbs_args(bs)
    assert args[0].requires_grad and m._shaped_cache is None and m._expr_cache is None
    means, _ = ref_lbs.skin_gaussians(betas[:, m.n_shape:], pose, *args, g.anchor_idx, g.anchor_weights)
    (grad,) = torch.autograd.grad(means.square().sum(), bs)
    full = torch.cat([bs.expand(B, -1), betas[:, m.n_shape:]], 1)
    want_means, _ = ref_lbs.skin_gaussians(full, pose, *m.lbs_args(), g.anchor_idx, g.anchor_weights)
    (want,) = torch.autograd.grad(want_means.square().sum(), bs)
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-10)
