"""rasterize: CPU op vs the float64 reference twin (every output, every gradient), float64 gradcheck,
opcheck, edge cases, argument errors. CUDA tests: tests/test_rasterize_cuda.py."""
import pytest
import torch

from ffavatar_kernels import _ext
from ffavatar_kernels.rasterize import rasterize
from ffavatar_kernels.reference.rasterize import rasterize as rasterize_ref
from test_rasterize_helpers import DIFF_KEYS, cast, make_scene, rel, run_with_grads

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")

MODES = [("RGB", "classic"), ("RGB", "antialiased"), ("ED", "classic"), ("RGB+ED", "antialiased")]


def _bg(scene, mode, dtype=None):
    D = scene["colors"].shape[-1]
    Dp = {"RGB": D, "ED": 1, "RGB+ED": D + 1}[mode]
    lead = scene["viewmats"].shape[:-2]
    return torch.rand(lead + (Dp,), dtype=dtype or scene["means"].dtype)


@pytest.mark.parametrize("render_mode,rasterize_mode", MODES)
@pytest.mark.parametrize("batched", [False, True])
def test_forward_and_grads_match_reference(render_mode, rasterize_mode, batched):
    ref_scene = make_scene(N=40, C=2, W=37, H=29, D=3, B=2 if batched else None, per_camera=batched, well_conditioned=True)
    bg = _bg(ref_scene, render_mode)
    kw = dict(render_mode=render_mode, rasterize_mode=rasterize_mode)
    ri, ra, rm, rg = run_with_grads(rasterize_ref, ref_scene, bg, **kw)
    for dtype, ftol, gtol in ((torch.float64, 1e-12, 1e-10), (torch.float32, 1e-5, 1e-4)):
        s = cast(ref_scene, dtype)
        oi, oa, om, og = run_with_grads(rasterize, s, bg.to(dtype), **kw)
        assert oi.shape == ri.shape and oa.shape == ra.shape
        assert rel(oi, ri) < ftol and rel(oa, ra) < ftol, (dtype, rel(oi, ri), rel(oa, ra))
        assert torch.equal(om["radii"], rm["radii"])
        assert torch.equal(om["visibility"], rm["visibility"])
        for k in ("means2d", "depths", "conics", "opacities"):
            assert rel(om[k], rm[k]) < ftol, k
        for k in rg:
            if rg[k] is None:  # colors are unused in ED mode
                assert og[k] is None or (og[k] == 0).all(), k
                continue
            assert rel(og[k], rg[k]) < gtol, (dtype, k, rel(og[k], rg[k]))


@pytest.mark.parametrize("D", [1, 3, 32])
@pytest.mark.parametrize("W,H", [(16, 16), (1, 1), (40, 17), (17, 33)])
def test_sizes_and_channels(D, W, H):
    s = make_scene(N=25, C=1, W=W, H=H, D=D, spread=0.3, well_conditioned=True)
    bg = _bg(s, "RGB")
    ri, ra, _, rg = run_with_grads(rasterize_ref, s, bg)
    oi, oa, om, og = run_with_grads(rasterize, cast(s, torch.float32), bg.float())
    assert oi.shape == (1, H, W, D) and oa.shape == (1, H, W, 1)
    assert rel(oi, ri) < 1e-5 and rel(oa, ra) < 1e-5
    for k in rg:
        assert rel(og[k], rg[k]) < 1e-4, k


def test_gsplat_style_backgrounds_in_depth_modes():
    s = make_scene(N=20, C=2, W=20, H=16, D=3, dtype=torch.float32, well_conditioned=True)
    bg = torch.rand(2, 3)
    for mode in ("RGB+ED", "ED"):
        a = rasterize(**s, render_mode=mode, backgrounds=bg)[0]
        full = torch.cat([bg, torch.zeros(2, 1)], -1) if mode == "RGB+ED" else torch.zeros(2, 1)
        b = rasterize(**s, render_mode=mode, backgrounds=full)[0]
        c = rasterize_ref(**cast(s, torch.float64), render_mode=mode, backgrounds=bg.double())[0]
        assert torch.equal(a, b) and rel(a, c) < 1e-5


def test_per_camera_colors_and_batches_agree_with_single_calls():
    s = make_scene(N=30, C=3, W=24, H=20, D=4, B=2, per_camera=True, dtype=torch.float32, well_conditioned=True)
    img, alpha, meta = rasterize(**s)
    for b in range(2):
        for c in range(3):
            one = {k: s[k][b] for k in ("means", "quats", "scales", "opacities")}
            i1, a1, _ = rasterize(**one, colors=s["colors"][b, c], viewmats=s["viewmats"][b, c:c + 1],
                                  Ks=s["Ks"][b, c:c + 1], width=24, height=20)
            assert torch.allclose(img[b, c], i1[0], atol=1e-6) and torch.allclose(alpha[b, c], a1[0], atol=1e-6)


def test_gradcheck_float64():
    s = make_scene(N=5, C=2, W=9, H=7, D=2, spread=0.25, scale=(0.1, 0.3))
    bg = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    keys = DIFF_KEYS

    def f(means, quats, scales, opacities, colors, bgs):
        img, alpha, _ = rasterize(means, quats, scales, opacities, colors, s["viewmats"], s["Ks"], 9, 7,
                                  render_mode="RGB+ED", rasterize_mode="antialiased", backgrounds=bgs)
        return img, alpha

    ins = tuple(s[k].clone().requires_grad_(True) for k in keys) + (bg,)
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_means2d_retain_grad():
    s = make_scene(N=20, C=2, W=20, H=16, dtype=torch.float32)
    s["means"].requires_grad_(True)
    img, alpha, meta = rasterize(**s)
    meta["means2d"].retain_grad()
    img.sum().backward()
    g = meta["means2d"].grad
    assert g is not None and g.shape == (2, 20, 2) and g.abs().sum() > 0
    assert (g[~meta["visibility"]] == 0).all()


def _ops_args(s, mode="antialiased"):
    ops = torch.ops.ffavatar
    b = {k: s[k][None] for k in ("means", "quats", "scales", "opacities", "viewmats", "Ks")}
    W, H = s["width"], s["height"]
    proj = ops.rasterize_project(b["means"], b["quats"], b["scales"], b["opacities"], b["viewmats"], b["Ks"], W, H,
                                 0.01, 1e10, 0.3, mode == "antialiased", 16)
    return b, proj, W, H


def test_opcheck():
    s = make_scene(N=12, C=2, W=20, H=18, D=3, dtype=torch.float64)
    b, proj, W, H = _ops_args(s)
    means2d, depths, conics, opac, radii, tiles = proj
    ops = torch.ops.ffavatar
    for t in ("means", "quats", "scales", "opacities"):
        b[t].requires_grad_(True)
    torch.library.opcheck(ops.rasterize_project, (b["means"], b["quats"], b["scales"], b["opacities"], b["viewmats"],
                                                  b["Ks"], W, H, 0.01, 1e10, 0.3, True, 16))
    offs, fids = ops.rasterize_bin(means2d, radii, depths, conics, opac, tiles, W, H, 16)
    torch.library.opcheck(ops.rasterize_bin, (means2d, radii, depths, conics, opac, tiles, W, H, 16),
                          test_utils=("test_schema", "test_faketensor"))
    cols = torch.rand(1, 1, 12, 3, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(1, 2, 3, dtype=torch.float64, requires_grad=True)
    args = (means2d.detach().requires_grad_(True), conics.detach().requires_grad_(True),
            opac.detach().requires_grad_(True), cols, bg, offs, fids, W, H, 16)
    torch.library.opcheck(ops.rasterize_render, args)
    img, alpha, last, final_t, _state = ops.rasterize_render(*args)
    bw = (args[0], args[1], args[2], cols, bg, offs, fids, final_t, last, torch.rand_like(img), torch.rand_like(alpha),
          W, H, 16)
    torch.library.opcheck(ops.rasterize_render_bwd, bw, test_utils=("test_schema", "test_faketensor"))
    pb = (b["means"], b["quats"], b["scales"], b["opacities"], b["viewmats"], b["Ks"], radii, torch.rand_like(means2d),
          torch.rand_like(depths), torch.rand_like(conics), torch.rand_like(opac), W, H, 16, 0.3, True)
    torch.library.opcheck(ops.rasterize_project_bwd, pb, test_utils=("test_schema", "test_faketensor"))


def test_ops_take_unbatched_tensors():
    # every op accepts its tensors without the leading B (what rasterize() passes for unbatched calls)
    # and gives exactly the batched results without it
    ops = torch.ops.ffavatar
    s = make_scene(N=25, C=2, W=30, H=22, D=3, dtype=torch.float64, per_camera=True)
    W, H = 30, 22
    keys = ("means", "quats", "scales", "opacities", "viewmats", "Ks")
    u = [s[k] for k in keys]
    b = [s[k][None].contiguous() for k in keys]
    pu = ops.rasterize_project(*u, W, H, 0.01, 1e10, 0.3, True, 16)
    pb = ops.rasterize_project(*b, W, H, 0.01, 1e10, 0.3, True, 16)
    for x, y in zip(pu, pb):
        assert x.shape == y.shape[1:] and torch.equal(x, y[0])
    m2, dp, cn, op, rr, tl = pu
    ou, fu = ops.rasterize_bin(m2, rr, dp, cn, op, tl, W, H, 16)
    ob, fb = ops.rasterize_bin(*(t[None] for t in (m2, rr, dp, cn, op, tl)), W, H, 16)
    assert ou.shape == (2, 2, 2) and torch.equal(ou, ob[0]) and torch.equal(fu, fb)
    bg = torch.rand(2, 3, dtype=torch.float64)
    for cols in (s["colors"], s["colors"][0]):  # per camera [C,N,D] and shared [N,D]
        cb = cols[None] if cols.dim() == 3 else cols[None, None]
        ru = ops.rasterize_render(m2, cn, op, cols, bg, ou, fu, W, H, 16)
        rb = ops.rasterize_render(m2[None], cn[None], op[None], cb, bg[None], ob, fb, W, H, 16)
        for x, y in zip(ru[:4], rb[:4]):  # ru[4]: the split state, empty on the CPU
            assert x.shape == y.shape[1:] and torch.equal(x, y[0])
        gi, ga = torch.rand_like(ru[0]), torch.rand_like(ru[1])
        gu = ops.rasterize_render_bwd(m2, cn, op, cols, bg, ou, fu, ru[3], ru[2], gi, ga, W, H, 16)
        gb = ops.rasterize_render_bwd(m2[None], cn[None], op[None], cb, bg[None], ob, fb, rb[3], rb[2], gi[None],
                                      ga[None], W, H, 16)
        for x, y, want in zip(gu, gb, (m2, cn, op, cols)):
            assert x.shape == want.shape and torch.equal(x, y.reshape(x.shape))
    g = [torch.rand_like(t) for t in (m2, dp, cn, op)]
    vu = ops.rasterize_project_bwd(*u, rr, *g, W, H, 16, 0.3, True)
    vb = ops.rasterize_project_bwd(*b, rr[None], *(t[None] for t in g), W, H, 16, 0.3, True)
    for x, y, want in zip(vu, vb, u):
        assert x.shape == want.shape and torch.equal(x, y[0])


def test_backward_ops_read_strided_output_grads():
    # the output gradients may come expanded (gradient of a sum; an expanded zero for an output with
    # no gradient), sliced or permuted: read through strides, same results as contiguous copies
    ops = torch.ops.ffavatar
    s = make_scene(N=30, C=2, W=26, H=20, D=4, dtype=torch.float64)
    W, H = 26, 20
    keys = ("means", "quats", "scales", "opacities", "viewmats", "Ks")
    m2, dp, cn, op, rr, tl = ops.rasterize_project(*(s[k] for k in keys), W, H, 0.01, 1e10, 0.3, False, 16)
    offs, fids = ops.rasterize_bin(m2, rr, dp, cn, op, tl, W, H, 16)
    bg = torch.rand(2, 4, dtype=torch.float64)
    img, alpha, last, final_t, _state = ops.rasterize_render(m2, cn, op, s["colors"], bg, offs, fids, W, H, 16)
    one = torch.rand((), dtype=torch.float64)
    wide = torch.rand(2, H, W, 7, dtype=torch.float64)
    cases = [
        (one.expand(img.shape), one.expand(alpha.shape)),                      # sum(): all strides 0
        (torch.zeros(()).double().expand(img.shape), torch.rand_like(alpha)),  # no colour gradient
        (wide[..., 1:5], wide[..., 6:7]),                                      # channel slices
        (torch.rand(4, 2, H, W, dtype=torch.float64).permute(1, 2, 3, 0),      # channels outermost
         torch.rand(2, W, H, 1, dtype=torch.float64).transpose(1, 2)),         # pixels not flat
        (torch.rand(2, 1, W, 4, dtype=torch.float64).expand(2, H, W, 4), torch.rand_like(alpha)),
    ]
    for gi, ga in cases:
        got = ops.rasterize_render_bwd(m2, cn, op, s["colors"], bg, offs, fids, final_t, last, gi, ga, W, H, 16)
        want = ops.rasterize_render_bwd(m2, cn, op, s["colors"], bg, offs, fids, final_t, last, gi.contiguous(),
                                        ga.contiguous(), W, H, 16)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
    g = [torch.rand_like(t) for t in (m2, dp, cn, op)]
    base = (*(s[k] for k in keys), rr)
    for gd in (torch.zeros(()).double().expand(dp.shape), torch.rand(2, 30, 3, dtype=torch.float64)[..., 1],
               torch.rand(30, 2, dtype=torch.float64).t()):
        got = ops.rasterize_project_bwd(*base, g[0], gd, g[2], g[3], W, H, 16, 0.3, False)
        want = ops.rasterize_project_bwd(*base, g[0], gd.contiguous(), g[2], g[3], W, H, 16, 0.3, False)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
    tr = ops.rasterize_project_bwd(*base, g[0].transpose(0, 1).contiguous().transpose(0, 1), g[1], g[2], g[3],
                                   W, H, 16, 0.3, False)
    for x, y in zip(tr, ops.rasterize_project_bwd(*base, *g, W, H, 16, 0.3, False)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+ED"])
@pytest.mark.parametrize("batched", [False, True])
def test_grads_when_some_outputs_have_no_gradient(render_mode, batched):
    # Outputs with no gradient (alphas, images, or all but meta["depths"]) are not materialized as
    # zeros any more: the gradients must equal those of the same loss with the other outputs x 0.
    s = make_scene(N=30, C=2, W=24, H=18, D=3, B=2 if batched else None, dtype=torch.float64,
                   well_conditioned=True)
    bg = _bg(s, render_mode).requires_grad_(True)

    def grads(loss_fn):
        ins = {k: (v.detach().clone().requires_grad_(True) if k in DIFF_KEYS else v) for k, v in s.items()}
        b = bg.detach().clone().requires_grad_(True)
        img, alpha, meta = rasterize(**ins, backgrounds=b, render_mode=render_mode)
        gen = torch.Generator().manual_seed(3)
        w = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (img, alpha, meta["depths"])]
        loss_fn(img, alpha, meta["depths"], w).backward()
        return [ins[k].grad for k in DIFF_KEYS] + [b.grad]

    losses = {
        "img": (lambda i, a, d, w: (i * w[0]).sum(), lambda i, a, d, w: (i * w[0]).sum() + (a * 0).sum()),
        "alpha": (lambda i, a, d, w: (a * w[1]).sum(), lambda i, a, d, w: (a * w[1]).sum() + (i * 0).sum()),
        "depths": (lambda i, a, d, w: (d * w[2]).sum(),
                   lambda i, a, d, w: (d * w[2]).sum() + (i * 0).sum() + (a * 0).sum()),
        "sums": (lambda i, a, d, w: i.sum() + a.sum(),
                 lambda i, a, d, w: (i * torch.ones_like(i)).sum() + (a * torch.ones_like(a)).sum()),
    }
    for name, (sparse, dense) in losses.items():
        got, want = grads(sparse), grads(dense)
        for k, x, y in zip(DIFF_KEYS + ("backgrounds",), got, want):
            if x is None or y is None:  # colours with only depths used: no path, no gradient
                assert name == "depths" and k in ("colors", "backgrounds") and x is None, (name, k)
                continue
            assert torch.allclose(x, y, rtol=1e-12, atol=1e-14), (name, k, (x - y).abs().max())


def test_opcheck_unbatched():
    ops = torch.ops.ffavatar
    s = make_scene(N=12, C=2, W=20, H=18, D=3, dtype=torch.float64)
    keys = ("means", "quats", "scales", "opacities", "viewmats", "Ks")
    u = [s[k].clone().requires_grad_(k not in ("viewmats", "Ks")) for k in keys]
    torch.library.opcheck(ops.rasterize_project, (*u, 20, 18, 0.01, 1e10, 0.3, True, 16))
    m2, dp, cn, op, rr, tl = (t.detach() for t in ops.rasterize_project(*u, 20, 18, 0.01, 1e10, 0.3, True, 16))
    torch.library.opcheck(ops.rasterize_bin, (m2, rr, dp, cn, op, tl, 20, 18, 16),
                          test_utils=("test_schema", "test_faketensor"))
    offs, fids = ops.rasterize_bin(m2, rr, dp, cn, op, tl, 20, 18, 16)
    cols = torch.rand(12, 3, dtype=torch.float64, requires_grad=True)
    args = (m2.requires_grad_(True), cn.requires_grad_(True), op.requires_grad_(True), cols, None, offs, fids,
            20, 18, 16)
    torch.library.opcheck(ops.rasterize_render, args)
    img, alpha, last, final_t, _state = ops.rasterize_render(*args)
    bw = (*args[:7], final_t, last, torch.ones(()).double().expand(img.shape), torch.rand_like(alpha), 20, 18, 16)
    torch.library.opcheck(ops.rasterize_render_bwd, bw, test_utils=("test_schema", "test_faketensor"))


# ---- edge cases -------------------------------------------------------------------------------

def test_zero_gaussians():
    s = make_scene(N=0, C=2, W=10, H=6, dtype=torch.float32)
    bg = torch.rand(2, 3)
    img, alpha, meta = rasterize(**s, backgrounds=bg)
    assert img.shape == (2, 6, 10, 3) and (alpha == 0).all()
    assert torch.allclose(img, bg[:, None, None, :].expand_as(img))
    assert meta["n_isects"] == 0 and meta["radii"].shape == (2, 0, 2)


def test_zero_cameras():
    s = make_scene(N=5, C=1, W=10, H=6, dtype=torch.float32)
    s["viewmats"], s["Ks"] = s["viewmats"][:0], s["Ks"][:0]
    img, alpha, meta = rasterize(**s)
    assert img.shape == (0, 6, 10, 3) and alpha.shape == (0, 6, 10, 1)


def test_all_behind_camera_and_beyond_far():
    s = make_scene(N=20, C=1, W=16, H=16, dtype=torch.float32)
    s["means"] = s["means"].clone()
    s["means"][:, 2] = -s["means"][:, 2]
    img, alpha, meta = rasterize(**s)
    assert (alpha == 0).all() and (img == 0).all() and not meta["visibility"].any()
    s2 = make_scene(N=20, C=1, W=16, H=16, dtype=torch.float32)
    img, alpha, meta = rasterize(**s2, far_plane=1.0)
    assert (alpha == 0).all() and not meta["visibility"].any()
    # gradients are zero (and finite), not NaN
    out = run_with_grads(rasterize, s)
    for k, g in out[3].items():
        assert torch.isfinite(g).all() and (g == 0).all(), k


def test_one_gaussian_covering_the_image():
    s = make_scene(N=1, C=1, W=40, H=24, D=3, dtype=torch.float64)
    s["means"] = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    s["scales"] = torch.tensor([[5.0, 3.0, 4.0]], dtype=torch.float64)
    s["opacities"] = torch.tensor([0.9], dtype=torch.float64)
    s["quats"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # random ones made the corners flaky
    ri, ra, _, rg = run_with_grads(rasterize_ref, s)
    oi, oa, om, og = run_with_grads(rasterize, cast(s, torch.float32))
    assert (oa > 0.7).all()
    assert om["n_isects"] == 6  # 3 x 2 tiles
    assert rel(oi, ri) < 1e-5
    for k in rg:
        assert rel(og[k], rg[k]) < 1e-4, k


@pytest.mark.parametrize("near", [False, True])
def test_saturating_pixels_and_near_plane(near):
    # many opaque splats on one spot: pixels stop early (T <= 1e-4), gradients stay finite
    s = make_scene(N=60, C=1, W=16, H=16, spread=0.02, scale=(0.2, 0.3), well_conditioned=True)
    s["opacities"] = torch.full_like(s["opacities"], 0.99)
    if near:  # at the near plane: huge, badly conditioned splats; float64 exact, float32 finite
        s["means"][:5, 2] = 0.0100001
    ri, ra, _, rg = run_with_grads(rasterize_ref, s)
    for dtype, ftol, gtol in ((torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4 if not near else None)):
        oi, oa, om, og = run_with_grads(rasterize, cast(s, dtype))
        assert rel(oi, ri) < ftol and rel(oa, ra) < ftol
        for k in rg:
            assert torch.isfinite(og[k]).all()
            if gtol is not None:
                assert rel(og[k], rg[k]) < gtol, (dtype, k)


def test_degenerate_covariances_are_finite():
    s = make_scene(N=20, C=1, W=16, H=16, dtype=torch.float32)
    s["scales"][:5] = 0.0          # point: 2D covariance is eps2d only
    s["scales"][5:10, :2] = 1e-8   # needles
    s["quats"][10] = torch.tensor([1e-20, 0, 0, 0])
    s["quats"][11] = 0.0  # zero quaternion: identity rotation, no gradient
    img, alpha, meta, grads = run_with_grads(rasterize, s, rasterize_mode="antialiased")
    assert torch.isfinite(img).all() and torch.isfinite(alpha).all()
    for k, g in grads.items():
        assert torch.isfinite(g).all(), k


def test_tight_tiles_never_exceed_gsplat_box():
    s = make_scene(N=200, C=2, W=64, H=48, spread=1.0, dtype=torch.float32)
    _, _, meta = rasterize(**s)
    r = meta["radii"].float()
    m = meta["means2d"]
    ts = 16
    x0 = torch.floor((m[..., 0] - r[..., 0]) / ts).clamp(0, 4)
    x1 = torch.ceil((m[..., 0] + r[..., 0]) / ts).clamp(0, 4)
    y0 = torch.floor((m[..., 1] - r[..., 1]) / ts).clamp(0, 3)
    y1 = torch.ceil((m[..., 1] + r[..., 1]) / ts).clamp(0, 3)
    box = ((x1 - x0) * (y1 - y0)).long() * meta["visibility"]
    assert (meta["tiles_per_gauss"] <= box).all()
    assert meta["n_isects"] == int(meta["tiles_per_gauss"].sum())


# ---- argument errors --------------------------------------------------------------------------

def test_errors():
    s = make_scene(N=4, C=1, W=8, H=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="quats"):
        rasterize(**{**s, "quats": s["quats"][:, :3]})
    with pytest.raises(ValueError, match="opacities"):
        rasterize(**{**s, "opacities": s["opacities"][:3]})
    with pytest.raises(TypeError, match="scales"):
        rasterize(**{**s, "scales": s["scales"].double()})
    with pytest.raises(ValueError, match="Ks"):
        rasterize(**{**s, "Ks": s["Ks"][:, :2]})
    with pytest.raises(ValueError, match="render_mode"):
        rasterize(**s, render_mode="D")
    with pytest.raises(ValueError, match="rasterize_mode"):
        rasterize(**s, rasterize_mode="mip")
    with pytest.raises(ValueError, match="backgrounds"):
        rasterize(**s, backgrounds=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="width"):
        rasterize(**{**s, "width": 0})
    with pytest.raises(ValueError, match="tile_size"):
        rasterize(**s, tile_size=64)
    with pytest.raises(TypeError, match="means"):
        rasterize(**{**s, "means": s["means"].int()})
    with pytest.raises(TypeError, match="width"):
        rasterize(**{**s, "width": 8.0})


def test_torch_compile():
    s = make_scene(N=30, C=2, W=24, H=16, dtype=torch.float32)
    f = torch.compile(lambda **kw: rasterize(**kw)[:2])
    img, alpha = f(**s)
    ri, ra, _ = rasterize(**s)
    assert torch.allclose(img, ri, atol=1e-6) and torch.allclose(alpha, ra, atol=1e-6)


def test_torch_compile_backward():
    # the registered autograd (what torch.compile traces) with unmaterialized output gradients
    s = make_scene(N=30, C=2, W=24, H=16, B=2, dtype=torch.float32)

    def run(fn):
        ins = {k: (v.detach().clone().requires_grad_(True) if k in DIFF_KEYS else v) for k, v in s.items()}
        img, alpha = fn(**ins)
        (img.sum() + 2 * alpha.sum()).backward()
        return img, [ins[k].grad for k in DIFF_KEYS]

    ci, cg = run(torch.compile(lambda **kw: rasterize(**kw)[:2]))
    ei, eg = run(lambda **kw: rasterize(**kw)[:2])
    assert torch.allclose(ci, ei, atol=1e-6)
    for k, a, b in zip(DIFF_KEYS, cg, eg):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), k


def test_depth_background_fills_empty_pixels_and_nan_options_are_rejected():
    s = make_scene(N=20, C=2, W=24, H=16, D=3, dtype=torch.float32, well_conditioned=True)
    far = dict(s, means=s["means"] + torch.tensor([0.0, 0.0, 1e4]))  # every Gaussian beyond far_plane
    for mode, bg in (("ED", torch.full((2, 1), 5.0)), ("RGB+ED", torch.cat([torch.rand(2, 3), torch.full((2, 1), 5.0)], -1))):
        img, alpha, _ = rasterize(**far, render_mode=mode, backgrounds=bg, far_plane=100.0)
        assert torch.all(alpha == 0)
        assert torch.allclose(img[..., -1], torch.full_like(img[..., -1], 5.0))  # not 5 / 1e-10
        ref_img = rasterize_ref(**cast(s, torch.float64), render_mode=mode, backgrounds=bg.double())[0]
        our_img = rasterize(**s, render_mode=mode, backgrounds=bg)[0]
        assert ((our_img.double() - ref_img).norm() / ref_img.norm()) < 1e-5
    for kw in (dict(eps2d=float("nan")), dict(near_plane=float("nan")), dict(far_plane=float("nan"))):
        with pytest.raises(ValueError):
            rasterize(**s, **kw)
