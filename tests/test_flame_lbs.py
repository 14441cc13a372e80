"""flame_lbs / skin_gaussians: CPU and CUDA kernels vs the float64 reference twin, gradients,
gradcheck, opcheck, bad inputs, empty inputs, the expression-only fast path."""
import importlib
import os
from unittest import mock

import pytest
import torch

from ffavatar_kernels import _ext
from ffavatar_kernels.reference import flame_lbs as ref

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")
F = importlib.import_module("ffavatar_kernels.flame_lbs")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
FLAME = dict(V=5023, J=5, S=400)
PARENTS = [-1, 0, 1, 1, 1]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def poison_cuda_cache(mb=256):
    """Fill freed blocks of the CUDA caching allocator with NaN, so an output element the kernels
    forget to write shows up as NaN instead of a stale, possibly correct value."""
    if torch.cuda.is_available():
        torch.empty(mb << 18, device="cuda").fill_(float("nan"))
        torch.cuda.synchronize()


def make_model(V, J, S, dtype=torch.float64, device="cpu", parents=None):
    """Random FLAME-shaped model: unit-scale template, small blendshapes, convex weights."""
    g = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    W = torch.rand(V, J, dtype=dtype, device=device) ** 4
    W = W / W.sum(1, keepdim=True)
    Jr = torch.rand(J, V, dtype=dtype, device=device)
    Jr = Jr / Jr.sum(1, keepdim=True)
    par = torch.tensor(parents or (PARENTS if J == 5 else [-1] + [int(torch.randint(0, j, ())) for j in range(1, J)]))
    return dict(v_template=g(V, 3) * 0.1, shapedirs=g(V, 3, S) * 1e-3, posedirs=g((J - 1) * 9, V * 3) * 1e-2,
                J_regressor=Jr, parents=par, lbs_weights=W)


def make_inputs(B, J, S, dtype=torch.float64, device="cpu", matrices=False, scale=0.4):
    betas = torch.randn(B, S, dtype=dtype, device=device)
    pose = torch.randn(B, J * 3, dtype=dtype, device=device) * scale
    if matrices:
        pose = ref.batch_rodrigues(pose.reshape(B, J, 3))
    return betas, pose


def make_anchors(N, V, K=4, dtype=torch.float64, device="cpu", idx_dtype=torch.int64):
    idx = torch.randint(0, V, (N, K), device=device).to(idx_dtype)
    w = torch.rand(N, K, dtype=dtype, device=device) + 0.05
    return idx, w / w.sum(1, keepdim=True)


def branch_ok(betas, pose, m, idx, aw, margin=1e-4):
    """[B,N] bool: Gaussians whose Shepperd branch is unambiguous (float64 margin between the largest
    and second-largest of trace, m00, m11, m22). The blended matrix is not orthonormal, so at a near
    tie fp32 and fp64 may pick different branches and legitimately differ by O(non-orthogonality);
    those few (~1e-4 of all) are excluded from quaternion comparisons."""
    with torch.no_grad():
        _, _, A = ref._lbs_core(betas, pose, *model_args(m))
        Wu = (aw[:, :, None] * m["lbs_weights"][idx.long()]).sum(1)
        M = torch.einsum("nj,bjrc->bnrc", Wu, A[:, :, :3, :3])
        d = torch.stack([M.diagonal(dim1=-2, dim2=-1).sum(-1), M[..., 0, 0], M[..., 1, 1], M[..., 2, 2]], -1)
        top = d.topk(2, dim=-1).values
        ok = (top[..., 0] - top[..., 1]) > margin
    assert ok.float().mean() > 0.99
    return ok


def model_args(m):
    return [m[k] for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights")]


def cast(t, dtype, device):
    if t is None or not t.is_floating_point():
        return None if t is None else t.to(device)
    return t.to(device=device, dtype=dtype)


# ---- forward vs reference ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("matrices", [False, True])
def test_flame_lbs_forward(device, B, matrices):
    m = make_model(**FLAME)
    betas, pose = make_inputs(B, FLAME["J"], FLAME["S"], matrices=matrices)
    want = ref.flame_lbs(betas, pose, *model_args(m), return_transforms=True)
    c = lambda t: cast(t, torch.float32, device)  # noqa: E731
    args = [c(t) for t in model_args(m)]
    poison_cuda_cache()
    got = F.flame_lbs(c(betas), c(pose), *args, return_transforms=True)
    for name, g, w in zip(("vertices", "joints", "transforms"), got, want):
        assert g.shape == w.shape and g.dtype == torch.float32 and g.device.type == device
        assert rel(g, w) < 1e-5, (name, rel(g, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("variant", ["full", "means_only", "no_quats", "batched_offsets_int32"])
def test_skin_gaussians_forward(device, B, variant):
    V, J, S = FLAME["V"], FLAME["J"], FLAME["S"]
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    N = 3000 if device == "cpu" else 81424
    idx, aw = make_anchors(N, V, K=3 if variant == "no_quats" else 4,
                           idx_dtype=torch.int32 if variant.endswith("int32") else torch.int64)
    off = torch.randn(B, N, 3, dtype=torch.float64) * 1e-2 if variant.startswith("batched") else \
        torch.randn(N, 3, dtype=torch.float64) * 1e-2
    q = None if variant == "no_quats" else torch.randn(N, 4, dtype=torch.float64)
    mo = variant == "means_only"
    want = ref.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q, means_only=mo)
    c = lambda t: cast(t, torch.float32, device)  # noqa: E731
    args = [c(t) for t in model_args(m)] + [c(idx), c(aw), c(off), c(q)]
    poison_cuda_cache()
    got = F.skin_gaussians(c(betas), c(pose), *args, means_only=mo)
    ok = branch_ok(betas, pose, m, idx, aw).to(device)
    for name, g, w in zip(("means", "quats"), got, want):
        assert g.shape == w.shape == (B, N, 3 if name == "means" else 4)
        assert torch.isfinite(g).all()
        if name == "quats" and not mo:
            g, w = g[ok], w.to(device)[ok]
        assert rel(g, w) < 1e-5, (name, rel(g, w))


def test_dense_upsampled_equivalence():
    """Anchored skinning == flame_lbs of the densely upsampled mesh (same joints, same A_j)."""
    V, J, S, B, N = 100, 5, 20, 3, 400
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    idx, aw = make_anchors(N, V)
    D = torch.zeros(N, V, dtype=torch.float64)  # dense upsampling matrix, full column rank
    D.scatter_add_(1, idx, aw)
    P = (J - 1) * 9
    up = [D @ m["v_template"], torch.einsum("nv,vcs->ncs", D, m["shapedirs"]),
          torch.einsum("nv,pvc->pnc", D, m["posedirs"].reshape(P, V, 3)).reshape(P, N * 3),
          m["J_regressor"] @ torch.linalg.pinv(D), m["parents"], D @ m["lbs_weights"]]
    verts_up, _ = F.flame_lbs(betas, pose, *up)
    means, quats = F.skin_gaussians(betas, pose, *model_args(m), idx, aw, means_only=True)
    assert rel(means, verts_up) < 1e-8
    assert torch.allclose(quats, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(B, N, 4))


# ---- gradients ------------------------------------------------------------------------------------
def _all_grads(fn, betas, pose, m, idx, aw, off, q, go, means_only=False):
    leaves = [betas, pose] + [m[k] for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights")]
    leaves += [aw, off, q]
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    b, p, vt, sd, pd, Jr, W, a, o, qq = leaves
    verts, joints, A = fn[0](b, p, vt, sd, pd, Jr, m["parents"], W, return_transforms=True)
    means, quats = fn[1](b, p, vt, sd, pd, Jr, m["parents"], W, idx, a, o, qq, means_only=means_only)
    loss = sum((x * g).sum() for x, g in zip((verts, joints, A, means, quats), go))
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 3, 16])
@pytest.mark.parametrize("means_only", [False, True])
def test_gradients_vs_reference(device, B, means_only):
    V, J, S = (FLAME["V"], FLAME["J"], FLAME["S"]) if device == "cuda" or B == 3 else (800, 5, 50)
    N = 20000 if device == "cuda" else 1500
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    idx, aw = make_anchors(N, V)
    off, q = torch.randn(N, 3, dtype=torch.float64) * 1e-2, torch.randn(N, 4, dtype=torch.float64)
    shapes = [(B, V, 3), (B, J, 3), (B, J, 4, 4), (B, N, 3), (B, N, 4)]
    go = [torch.randn(s, dtype=torch.float64) for s in shapes]
    go[4] = go[4] * branch_ok(betas, pose, m, idx, aw)[..., None]  # no gradient through near-tie branches
    want = _all_grads((ref.flame_lbs, ref.skin_gaussians), betas, pose, m, idx, aw, off, q, go, means_only)
    c = lambda t: cast(t, torch.float32, device)  # noqa: E731
    m32 = {k: c(v) for k, v in m.items()}
    poison_cuda_cache()
    got = _all_grads((F.flame_lbs, F.skin_gaussians), c(betas), c(pose), m32, c(idx), c(aw), c(off), c(q),
                     [c(g) for g in go], means_only)
    names = ["betas", "pose", "v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights",
             "anchor_weights", "offsets", "quats"]
    for name, g, w in zip(names, got, want):
        assert g is not None and g.shape == w.shape, name
        assert rel(g, w) < 1e-4, (name, rel(g, w))


def test_gradcheck_float64():
    V, J, S, B, N = 12, 4, 3, 2, 6
    m = make_model(V, J, S, parents=[-1, 0, 1, 1])
    betas, pose = make_inputs(B, J, S, scale=0.8)
    pose[0, :3] = 1e-3  # small-angle series branch
    idx, aw = make_anchors(N, V)
    off, q = torch.randn(N, 3, dtype=torch.float64) * 0.1, torch.randn(N, 4, dtype=torch.float64)
    par = m["parents"]

    def fn(b, p, vt, sd, pd, Jr, W, a, o, qq):
        v, j, A = F.flame_lbs(b, p, vt, sd, pd, Jr, par, W, return_transforms=True)
        mm, qo = F.skin_gaussians(b, p, vt, sd, pd, Jr, par, W, idx, a, o, qq)
        mm2, _ = F.skin_gaussians(b, p, vt, sd, pd, Jr, par, W, idx, a, o[None].expand(B, N, 3).contiguous(),
                                  None, means_only=True)
        return v, j, A, mm, qo, mm2

    ins = [betas, pose, m["v_template"], m["shapedirs"], m["posedirs"], m["J_regressor"], m["lbs_weights"],
           aw, off, q]
    ins = [t.clone().requires_grad_() for t in ins]
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-6, rtol=1e-5)
    rot = ref.batch_rodrigues(pose.detach().reshape(B, J, 3)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r: F.flame_lbs(betas, r, m["v_template"], m["shapedirs"], m["posedirs"], m["J_regressor"], par,
                              m["lbs_weights"]), [rot], eps=1e-6, atol=1e-6)


# ---- opcheck ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    V, J, S, B, N = 40, 5, 6, 2, 30
    m = {k: cast(v, torch.float32, device) for k, v in make_model(V, J, S).items()}
    betas, pose = (cast(t, torch.float32, device) for t in make_inputs(B, J, S))
    Jt = (m["J_regressor"] @ m["v_template"]).requires_grad_()
    Jd = (m["J_regressor"] @ m["shapedirs"].reshape(V, -1)).reshape(J, 3, S).requires_grad_()
    betas.requires_grad_()
    pose3 = pose.reshape(B, J, 3).clone().requires_grad_()
    ops = torch.ops.ffavatar
    torch.library.opcheck(ops.flame_lbs_joints, (betas, pose3, Jt, Jd, PARENTS))
    rot, _, A = ops.flame_lbs_joints(betas, pose3, Jt, Jd, PARENTS)
    rot, A = rot.detach().requires_grad_(), A.detach().requires_grad_()
    args = [m[k].clone().requires_grad_() for k in ("v_template", "shapedirs", "posedirs", "lbs_weights")]
    torch.library.opcheck(ops.flame_lbs, (betas, rot, A, *args))
    v_posed = ops.flame_lbs(betas, rot, A, *args)[1].detach().requires_grad_()
    idx, aw = make_anchors(N, V, device=device, dtype=torch.float32)
    aw.requires_grad_()
    off = torch.randn(N, 3, device=device, requires_grad=True)
    q = torch.randn(N, 4, device=device, requires_grad=True)
    for mo in (False, True):
        torch.library.opcheck(ops.skin_gaussians, (v_posed, A, args[3], idx, aw, off, q, mo))
    torch.library.opcheck(ops.skin_gaussians, (v_posed, A, args[3], idx.int(), aw, None, None, False))
    # precomputed anchor joint weights (the composite's cached joint_weights argument)
    wg = F._anchor_joint_weights(args[3].detach(), idx, aw.detach())
    torch.library.opcheck(ops.skin_gaussians, (v_posed, A, args[3], idx, aw, off, q, False, False, wg))


@pytest.mark.parametrize("device", DEVICES)
def test_joint_weights_argument_matches_the_gather(device):
    """skin_gaussians with joint_weights = sum_k w_k W[i_k] gives the outputs and every gradient of the
    call without it (the kernels gather lbs_weights themselves then)."""
    V, J, S, B, N = 50, 5, 6, 3, 70
    dt = torch.float64 if device == "cpu" else torch.float32
    m = {k: cast(v, dt, device) for k, v in make_model(V, J, S).items()}
    betas, pose = (cast(t, dt, device) for t in make_inputs(B, J, S))
    rot, _, A = torch.ops.ffavatar.flame_lbs_joints(
        betas, pose.reshape(B, J, 3), m["J_regressor"] @ m["v_template"],
        (m["J_regressor"] @ m["shapedirs"].reshape(V, -1)).reshape(J, 3, S), PARENTS)
    v_posed = torch.ops.ffavatar.flame_lbs(betas, rot, A, m["v_template"], m["shapedirs"], m["posedirs"],
                                           m["lbs_weights"])[1]
    assert v_posed.shape == (B, V, 4) and bool((v_posed[..., 3] == 0).all())
    idx, aw = make_anchors(N, V, device=device, dtype=dt)
    off = torch.randn(N, 3, device=device, dtype=dt)
    q = torch.randn(N, 4, device=device, dtype=dt)
    W = m["lbs_weights"]
    wg = F._anchor_joint_weights(W, idx, aw)
    torch.testing.assert_close(wg, torch.einsum("nk,nkj->nj", aw, W[idx]))
    ins = [t.clone().requires_grad_() for t in (v_posed, A, W, aw, off, q)]
    g_out = [torch.randn(B, N, 3, device=device, dtype=dt), torch.randn(B, N, 4, device=device, dtype=dt)]
    res = []
    for jw in (None, wg):
        vp, a, w, ww, o, qq = ins
        outs = torch.ops.ffavatar.skin_gaussians(vp, a, w, idx, ww, o, qq, False, False, jw)
        res.append(list(outs) + list(torch.autograd.grad(outs, ins, g_out)))
    tol = dict(rtol=1e-10, atol=1e-12) if dt == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for x, y in zip(*res):
        torch.testing.assert_close(x, y, **tol)


# ---- API behaviour ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_expression_fast_path(device):
    V, J, S = FLAME["V"], FLAME["J"], FLAME["S"]
    m = {k: cast(v, torch.float32, device) for k, v in make_model(V, J, S).items()}
    betas, pose = (cast(t, torch.float32, device) for t in make_inputs(4, J, S))
    shape = betas[0, :300]
    full = betas.clone()
    full[:, :300] = shape
    vt_shaped = F.shape_template(m["v_template"], m["shapedirs"], shape)
    sd_expr = m["shapedirs"][..., 300:].contiguous()
    args = dict(m, v_template=vt_shaped, shapedirs=sd_expr)
    a = F.flame_lbs(full, pose, *model_args(m))
    for _ in range(2):  # second call hits the cached joint products
        b = F.flame_lbs(betas[:, 300:].contiguous(), pose, *model_args(args))
        for x, y in zip(a, b):
            assert rel(x, y) < 1e-5
    assert torch.equal(ref.shape_template(m["v_template"], m["shapedirs"], shape), vt_shaped)


def test_empty_inputs():
    m = make_model(30, 5, 4)
    betas, pose = make_inputs(0, 5, 4)
    v, j, A = F.flame_lbs(betas, pose, *model_args(m), return_transforms=True)
    assert v.shape == (0, 30, 3) and j.shape == (0, 5, 3) and A.shape == (0, 5, 4, 4)
    betas, pose = make_inputs(2, 5, 4)
    idx, aw = make_anchors(0, 30)
    means, quats = F.skin_gaussians(betas, pose, *model_args(m), idx, aw)
    assert means.shape == (2, 0, 3) and quats.shape == (2, 0, 4)


def test_non_contiguous_inputs():
    """The public API accepts views (copies them); the raw op rejects them with a clear error."""
    V, J, S, B = 50, 5, 6, 3
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    want = ref.flame_lbs(betas, pose, *model_args(m))
    sd_t = m["shapedirs"].permute(2, 1, 0).contiguous().permute(2, 1, 0)
    got = F.flame_lbs(betas.T.contiguous().T, pose, m["v_template"], sd_t, *model_args(m)[2:])
    assert rel(got[0], want[0]) < 1e-12
    with pytest.raises(RuntimeError, match="shapedirs: must be contiguous"):
        rot, _, A = torch.ops.ffavatar.flame_lbs_joints(betas, pose.reshape(B, J, 3), torch.zeros(J, 3,
                                                        dtype=torch.float64), torch.zeros(J, 3, S, dtype=torch.float64),
                                                        PARENTS)
        torch.ops.ffavatar.flame_lbs(betas, rot, A, m["v_template"], sd_t, m["posedirs"], m["lbs_weights"])


def test_bad_inputs():
    V, J, S, B = 30, 5, 4, 2
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    args = model_args(m)
    call = lambda *a, **k: F.flame_lbs(*a, **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"shapedirs: .*expected shape \[V,3,S\]"):
        call(betas, pose, args[0], args[1][:-1], *args[2:])
    with pytest.raises(ValueError, match=r"betas: expected shape \[\*,4\], got \[2, 3\]"):
        call(betas[:, :3], pose, *args)
    with pytest.raises(ValueError, match="pose"):
        call(betas, pose[:, :14], *args)
    with pytest.raises(ValueError, match="posedirs"):
        call(betas, pose, args[0], args[1], args[2][:-1], *args[3:])
    with pytest.raises(TypeError, match="lbs_weights: expected dtype float64"):
        call(betas, pose, *args[:5], args[5].float())
    with pytest.raises(TypeError, match="betas"):
        call(betas.half(), pose, *args)
    with pytest.raises(ValueError, match="parents: expected a kinematic tree"):
        call(betas, pose, *args[:4], torch.tensor([-1, 0, 2, 1, 1]), args[5])
    with pytest.raises(ValueError, match="parents: expected a kinematic tree"):
        call(betas, pose, *args[:4], [0, 0, 1, 1, 1], args[5])
    with pytest.raises(ValueError, match="parents: expected shape"):
        call(betas, pose, *args[:4], [-1, 0, 1, 1], args[5])
    with pytest.raises(TypeError, match="pose: expected a torch.Tensor"):
        call(betas, pose.tolist(), *args)
    idx, aw = make_anchors(10, V)
    with pytest.raises(ValueError, match="anchor_idx: expected 1..4"):
        F.skin_gaussians(betas, pose, *args, torch.zeros(10, 5, dtype=torch.long), torch.ones(10, 5).double())
    with pytest.raises(TypeError, match="anchor_idx: expected dtype int32 or int64"):
        F.skin_gaussians(betas, pose, *args, idx.float(), aw)
    with pytest.raises(ValueError, match="anchor_weights"):
        F.skin_gaussians(betas, pose, *args, idx, aw[:5])
    with pytest.raises(ValueError, match="offsets"):
        F.skin_gaussians(betas, pose, *args, idx, aw, torch.zeros(10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="quats"):
        F.skin_gaussians(betas, pose, *args, idx, aw, None, torch.zeros(9, 4, dtype=torch.float64))
    # raw ops check too
    with pytest.raises(RuntimeError, match="parents"):
        torch.ops.ffavatar.flame_lbs_joints(betas, pose.reshape(B, J, 3), torch.zeros(J, 3, dtype=torch.float64),
                                            torch.zeros(J, 3, S, dtype=torch.float64), [-1, 0, 3, 1, 1])


@pytest.mark.cuda
def test_cuda_bad_devices_and_dtypes():
    m = make_model(30, 5, 4)
    betas, pose = make_inputs(2, 5, 4)
    args = model_args(m)
    with pytest.raises(ValueError, match="betas: expected a tensor on cpu, got one on cuda"):
        F.flame_lbs(betas.float().cuda(), pose.float().cuda(), *[a.float() if a.is_floating_point() else a
                                                                  for a in args])
    with pytest.raises(TypeError, match="J_regressor: expected dtype float32, got float64"):
        F.flame_lbs(betas.cuda(), pose.cuda(), *[a.cuda() for a in args])


@pytest.mark.cuda
@pytest.mark.parametrize("B", [1, 16])
def test_cuda_graph_capture_and_cpu_match(B):
    V, J, S, N = FLAME["V"], FLAME["J"], FLAME["S"], 81424
    m = {k: cast(v, torch.float32, "cuda") for k, v in make_model(V, J, S).items()}
    betas, pose = (cast(t, torch.float32, "cuda") for t in make_inputs(B, J, S))
    idx, aw = make_anchors(N, V, device="cuda", dtype=torch.float32, idx_dtype=torch.int32)
    off, q = torch.randn(N, 3, device="cuda") * 1e-2, torch.randn(N, 4, device="cuda")
    run = lambda: F.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q)  # noqa: E731
    eager = run()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run()
    betas.copy_(torch.randn_like(betas))
    g.replay()
    torch.cuda.synchronize()
    want = run()
    for x, y in zip(out, want):
        assert torch.equal(x, y)
    cpu = F.skin_gaussians(betas.cpu(), pose.cpu(), *[t.cpu() for t in model_args(m)], idx.cpu(), aw.cpu(),
                           off.cpu(), q.cpu())
    m64 = {k: v.cpu().double() if v.is_floating_point() else v.cpu() for k, v in m.items()}
    ok = branch_ok(betas.cpu().double(), pose.cpu().double(), m64, idx.cpu(), aw.cpu().double())
    assert rel(want[0].cpu(), cpu[0]) < 1e-5
    assert rel(want[1].cpu()[ok], cpu[1][ok]) < 1e-5
    assert not torch.equal(eager[0], want[0])


def _fused_args(m, betas, pose, idx, aw, off, q, means_only=False):
    """Arguments of torch.ops.ffavatar.flame_skin_gaussians from a model dict and inputs."""
    V, S, J = m["v_template"].shape[0], betas.shape[1], m["J_regressor"].shape[0]
    Jt = m["J_regressor"] @ m["v_template"]
    Jd = (m["J_regressor"] @ m["shapedirs"].reshape(V, -1)).reshape(J, 3, S)
    pose_k = pose if pose.dim() == 4 else pose.reshape(pose.shape[0], J, 3)
    wg = F._anchor_joint_weights(m["lbs_weights"], idx, aw)
    return (betas, pose_k, Jt, Jd, m["parents"].tolist(), m["v_template"], m["shapedirs"], m["posedirs"],
            m["lbs_weights"], idx, aw, wg, off, q, means_only)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_op_checks_and_cpu_kernel(device):
    """flame_skin_gaussians (one frame): equals skin_gaussians' three-op path; B != 1 and J > 8 are
    clear errors on both devices."""
    V, J, S, N = 60, 5, 8, 90
    dt = torch.float64 if device == "cpu" else torch.float32
    m = {k: cast(v, dt, device) for k, v in make_model(V, J, S).items()}
    betas, pose = (cast(t, dt, device) for t in make_inputs(1, J, S))
    idx, aw = make_anchors(N, V, device=device, dtype=dt)
    off, q = torch.randn(N, 3, device=device, dtype=dt) * 0.1, torch.randn(N, 4, device=device, dtype=dt)
    got = torch.ops.ffavatar.flame_skin_gaussians(*_fused_args(m, betas, pose, idx, aw, off, q))
    with mock.patch.dict(os.environ, {"FFAVATAR_NO_FUSED": "1"}):
        want = F.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    betas2, pose2 = (cast(t, dt, device) for t in make_inputs(2, J, S))
    with pytest.raises(RuntimeError, match="one frame"):
        torch.ops.ffavatar.flame_skin_gaussians(*_fused_args(m, betas2, pose2, idx, aw, off, q))
    m9 = {k: cast(v, dt, device) for k, v in make_model(V, 9, S).items()}
    b9, p9 = (cast(t, dt, device) for t in make_inputs(1, 9, S))
    with pytest.raises(RuntimeError, match="at most 8 joints"):
        torch.ops.ffavatar.flame_skin_gaussians(*_fused_args(m9, b9, p9, idx, aw, off, q))


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["full", "means_only_int32_matrices", "no_quats_k1", "batched_offsets_k3",
                                  "more_gaussians_than_threads"])
def test_fused_one_frame_matches_three_kernel_path(case):
    """skin_gaussians at B=1 without grad takes the fused one-launch kernel: same outputs as the
    three-kernel path (FFAVATAR_NO_FUSED=1) and the float64 reference."""
    V, J, S = FLAME["V"], FLAME["J"], FLAME["S"]
    N = 300_000 if case == "more_gaussians_than_threads" else 20_000
    K = 1 if "k1" in case else 3 if "k3" in case else 4
    m64 = make_model(V, J, S)
    betas64, pose64 = make_inputs(1, J, S, matrices="matrices" in case)
    idx, aw64 = make_anchors(N, V, K=K, idx_dtype=torch.int32 if "int32" in case else torch.int64)
    off64 = torch.randn(1, N, 3, dtype=torch.float64) * 1e-2 if "batched" in case else \
        torch.randn(N, 3, dtype=torch.float64) * 1e-2
    q64 = None if "no_quats" in case else torch.randn(N, 4, dtype=torch.float64)
    mo = "means_only" in case
    c = lambda t: cast(t, torch.float32, "cuda")  # noqa: E731
    m = {k: c(v) for k, v in m64.items()}
    args = (c(betas64), c(pose64), *model_args(m), c(idx), c(aw64), c(off64), c(q64))
    poison_cuda_cache()
    with torch.no_grad():
        got = F.skin_gaussians(*args, means_only=mo)
        with mock.patch.dict(os.environ, {"FFAVATAR_NO_FUSED": "1"}):
            three = F.skin_gaussians(*args, means_only=mo)
    for x, y in zip(got, three):
        assert bool(torch.isfinite(x).all())
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    want = ref.skin_gaussians(betas64, pose64, *model_args(m64), idx, aw64, off64, q64, means_only=mo)
    ok = branch_ok(betas64, pose64, m64, idx, aw64)[0]
    assert rel(got[0], want[0]) < 1e-5
    assert rel(got[1][0][ok.cuda()], want[1][0][ok]) < 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("J", [1, 16, 55])
def test_cuda_other_skeletons(J):
    """Generic trees (SMPL-X-sized), S not a multiple of 4, B > 16, K in {1,2,3}: CUDA vs float64."""
    V, S, B, N = 2000, 37, 19, 5000
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S, scale=0.2)
    idx, aw = make_anchors(N, V, K={1: 2, 16: 1, 55: 3}[J])
    off, q = torch.randn(N, 3, dtype=torch.float64) * 1e-2, torch.randn(N, 4, dtype=torch.float64)
    go = [torch.randn(s, dtype=torch.float64) for s in [(B, V, 3), (B, J, 3), (B, J, 4, 4), (B, N, 3), (B, N, 4)]]
    ok = branch_ok(betas, pose, m, idx, aw)
    go[4] = go[4] * ok[..., None]
    want = _all_grads((ref.flame_lbs, ref.skin_gaussians), betas, pose, m, idx, aw, off, q, go)
    c = lambda t: cast(t, torch.float32, "cuda")  # noqa: E731
    m32 = {k: c(v) for k, v in m.items()}
    poison_cuda_cache()
    got = _all_grads((F.flame_lbs, F.skin_gaussians), c(betas), c(pose), m32, c(idx), c(aw), c(off), c(q),
                     [c(g) for g in go])
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-4
    fw = ref.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q)
    fg = F.skin_gaussians(c(betas), c(pose), *[c(t) for t in model_args(m)], c(idx), c(aw), c(off), c(q))
    assert rel(fg[0].cpu(), fw[0]) < 1e-5
    assert rel(fg[1].cpu()[ok], fw[1][ok]) < 1e-5


def _synthetic_head():
    from ffavatar.flame import synthetic_head
    return synthetic_head(dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_synthetic_head(device):
    head = _synthetic_head()
    try:
        from ffavatar.geometry.subdivide import subdivide
        idx, aw, _ = subdivide(head.faces, head.v_template.shape[0], 2)
    except Exception:  # noqa: BLE001
        idx, aw = make_anchors(20000, head.v_template.shape[0])
    args = [getattr(head, k) for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "parents",
                                       "lbs_weights")]
    J, S = args[3].shape[0], args[1].shape[2]
    betas, pose = make_inputs(3, J, S, scale=0.2)
    betas = betas * 0.5
    c = lambda t: cast(t, torch.float32, device)  # noqa: E731
    want = ref.flame_lbs(betas, pose, *args)
    got = F.flame_lbs(c(betas), c(pose), *[c(a) for a in args])
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-5
    want = ref.skin_gaussians(betas, pose, *args, idx, aw.double(), means_only=False)
    got = F.skin_gaussians(c(betas), c(pose), *[c(a) for a in args], c(idx), c(aw))
    ok = branch_ok(betas, pose, dict(zip(("v_template", "shapedirs", "posedirs", "J_regressor", "parents",
                                          "lbs_weights"), args)), idx, aw.double()).to(device)
    assert rel(got[0], want[0].to(device)) < 1e-5
    assert rel(got[1][ok], want[1].to(device)[ok]) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_sum_loss_backward(device):
    """Expanded (stride-0) incoming gradients, grads to a subset of inputs only."""
    V, J, S, B, N = 300, 5, 12, 3, 500
    m = {k: cast(v, torch.float64 if device == "cpu" else torch.float32, device) for k, v in make_model(V, J, S).items()}
    dt = m["v_template"].dtype
    betas, pose = (cast(t, dt, device).requires_grad_() for t in make_inputs(B, J, S))
    idx, aw = make_anchors(N, V, device=device, dtype=dt)
    verts, joints = F.flame_lbs(betas, pose, *model_args(m))
    means, quats = F.skin_gaussians(betas, pose, *model_args(m), idx, aw)
    m64 = {k: v.cpu().double() if v.is_floating_point() else v.cpu() for k, v in m.items()}
    ok = branch_ok(betas.detach().cpu().double(), pose.detach().cpu().double(), m64, idx.cpu(), aw.cpu().double())
    gb, gp = torch.autograd.grad(verts.sum() + means.sum() + (quats[..., 0] * ok.to(device)).sum(), [betas, pose])
    b64, p64 = betas.detach().double().cpu().requires_grad_(), pose.detach().double().cpu().requires_grad_()
    v2, _ = ref.flame_lbs(b64, p64, *model_args(m64))
    m2, q2 = ref.skin_gaussians(b64, p64, *model_args(m64), idx.cpu(), aw.cpu().double())
    wb, wp = torch.autograd.grad(v2.sum() + m2.sum() + (q2[..., 0] * ok).sum(), [b64, p64])
    assert rel(gb.cpu(), wb) < 1e-4 and rel(gp.cpu(), wp) < 1e-4


def test_torch_compile():
    """The public functions work under torch.compile (fake kernels + autograd registrations)."""
    m = {k: v.float() if v.is_floating_point() else v for k, v in make_model(40, 5, 6).items()}
    betas, pose = (t.float() for t in make_inputs(2, 5, 6))
    idx, aw = make_anchors(30, 40, dtype=torch.float32)
    off = torch.randn(30, 3, requires_grad=True)
    out = torch.compile(F.skin_gaussians)(betas, pose, *model_args(m), idx, aw, off)
    (g,) = torch.autograd.grad(out[0].sum(), [off])
    want = F.skin_gaussians(betas, pose, *model_args(m), idx, aw, off)
    (gw,) = torch.autograd.grad(want[0].sum(), [off])
    for a, b in zip(list(out) + [g], list(want) + [gw]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_anchor_idx_out_of_range_is_a_clear_error():
    m = make_model(V=20, J=5, S=6, dtype=torch.float32)
    betas, pose = make_inputs(2, 5, 6, dtype=torch.float32)
    aw = torch.full((7, 3), 1 / 3)
    for bad in (torch.full((7, 3), 20), torch.full((7, 3), -1), torch.full((7, 3), 10**6)):
        with pytest.raises(ValueError, match="anchor_idx"):
            F.skin_gaussians(betas, pose, *model_args(m), bad, aw)
        with pytest.raises(ValueError, match="anchor_idx"):  # the raw op checks too
            v, j, A = ref.flame_lbs(betas, pose, *model_args(m), return_transforms=True)
            v4 = torch.nn.functional.pad(v, (0, 1))  # the op's padded v_posed [B,V,4]
            torch.ops.ffavatar.skin_gaussians(v4, A.contiguous(), m["lbs_weights"].contiguous(),
                                              bad, aw, None, None, False)


def test_inference_mode_call_does_not_break_a_later_backward():
    m = make_model(V=30, J=5, S=6, dtype=torch.float32)
    betas, pose = make_inputs(2, 5, 6, dtype=torch.float32)
    with torch.inference_mode():
        F.flame_lbs(betas, pose, *model_args(m))
    b = betas.clone().requires_grad_()
    F.flame_lbs(b, pose, *model_args(m))[0].sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()


def test_shape_template_rejects_batched_or_integer_inputs():
    m = make_model(V=10, J=5, S=6, dtype=torch.float32)
    with pytest.raises(ValueError, match="betas_shape"):
        F.shape_template(m["v_template"], m["shapedirs"], torch.randn(2, 3))
    with pytest.raises(TypeError, match="v_template"):
        F.shape_template(m["v_template"].long(), m["shapedirs"].long(), torch.randn(3).long())


# ---- the fast path (a model checked once, _flame_lbs_fast.py) and one autograd node per call -------
FAST = importlib.import_module("ffavatar_kernels._flame_lbs_fast")


def _fast_setup(V=40, J=5, S=6, N=30, B=2):
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    idx, aw = make_anchors(N, V)
    off, q = torch.randn(N, 3, dtype=torch.float64) * 1e-2, torch.randn(N, 4, dtype=torch.float64)
    return m, betas, pose, idx, aw, off, q


def _skin(m, betas, pose, idx, aw, off, q, parents=None, **kw):
    args = model_args(m)
    if parents is not None:
        args[4] = parents
    return F.skin_gaussians(betas, pose, *args, idx, aw, off, q, **kw)


@pytest.mark.parametrize("parents", ["tensor", "list"])
def test_fast_path_is_taken_after_one_checked_call(parents):
    m, betas, pose, idx, aw, off, q = _fast_setup()
    par = m["parents"] if parents == "tensor" else PARENTS
    want = _skin(m, betas, pose, idx, aw, off, q, par)
    want_v = F.flame_lbs(betas, pose, *model_args(m)[:4], par, m["lbs_weights"])
    with mock.patch.object(F, "_skin_args", side_effect=AssertionError("detailed checks ran")), \
            mock.patch.object(F, "_lbs_args", side_effect=AssertionError("detailed checks ran")):
        got = _skin(m, betas, pose, idx, aw, off, q, par)
        got_v = F.flame_lbs(betas, pose, *model_args(m)[:4], par, m["lbs_weights"])
    for a, b in zip(list(got) + list(got_v), list(want) + list(want_v)):
        assert torch.equal(a, b)
    # a new batch size, offsets batched, pose as [B,J,3]: still the fast path
    with mock.patch.object(F, "_skin_args", side_effect=AssertionError("detailed checks ran")):
        b3, p3 = make_inputs(3, 5, 6)
        got = _skin(m, b3, p3.reshape(3, 5, 3), idx, aw, off[None].expand(3, -1, -1), q, par)
    want = ref.skin_gaussians(b3, p3, *model_args(m), idx, aw, off[None].expand(3, -1, -1), q)
    assert rel(got[0], want[0]) < 1e-12


def test_fast_path_rechecks_a_model_changed_in_place():
    m, betas, pose, idx, aw, off, q = _fast_setup()
    _skin(m, betas, pose, idx, aw, off, q)
    F.flame_lbs(betas, pose, *model_args(m))
    with torch.no_grad():  # in place: versions bump, the cached joint products must not be reused
        m["v_template"].add_(0.05)
        m["shapedirs"].mul_(3.0)
        aw[:, 0] += 0.1
    want = ref.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q)
    got = _skin(m, betas, pose, idx, aw, off, q)
    assert rel(got[0], want[0]) < 1e-12 and rel(got[1], want[1]) < 1e-10
    want_v = ref.flame_lbs(betas, pose, *model_args(m))
    got_v = F.flame_lbs(betas, pose, *model_args(m))
    assert rel(got_v[0], want_v[0]) < 1e-12 and rel(got_v[1], want_v[1]) < 1e-12


def test_fast_path_bad_inputs_still_name_the_argument():
    """After a good call warmed the fast path, a bad per-call input falls back to the detailed checks."""
    m, betas, pose, idx, aw, off, q = _fast_setup()
    _skin(m, betas, pose, idx, aw, off, q)
    F.flame_lbs(betas, pose, *model_args(m))
    with pytest.raises(ValueError, match=r"betas: expected shape \[\*,6\], got \[2, 5\]"):
        _skin(m, betas[:, :5], pose, idx, aw, off, q)
    with pytest.raises(ValueError, match=r"betas: expected shape"):
        F.flame_lbs(betas[:, :5], pose, *model_args(m))
    with pytest.raises(TypeError, match="betas: expected dtype float64"):
        _skin(m, betas.float(), pose, idx, aw, off, q)
    with pytest.raises(TypeError, match="betas: expected a torch.Tensor"):
        _skin(m, betas.tolist(), pose, idx, aw, off, q)
    with pytest.raises(ValueError, match="pose"):
        _skin(m, betas, pose[:, :14], idx, aw, off, q)
    with pytest.raises(ValueError, match="pose"):
        F.flame_lbs(betas, pose[:1], *model_args(m))
    with pytest.raises(ValueError, match="offsets"):
        _skin(m, betas, pose, idx, aw, off[:, :2], q)
    with pytest.raises(ValueError, match="quats"):
        _skin(m, betas, pose, idx, aw, off, q[:-1])
    with pytest.raises(TypeError, match="quats"):
        _skin(m, betas, pose, idx, aw, off, q.float())
    with pytest.raises(ValueError, match="parents: expected a kinematic tree"):
        _skin(m, betas, pose, idx, aw, off, q, [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="anchor_weights"):
        _skin(m, betas, pose, idx, aw[:5], off, q)
    _skin(m, betas, pose, idx, aw, off, q)  # and the good call still works


def test_fast_path_forgets_dead_tensors_and_skips_views():
    m, betas, pose, idx, aw, off, q = _fast_setup()
    _skin(m, betas, pose, idx, aw, off, q)
    keys = set(FAST._entries)
    del m, idx, aw
    import gc
    gc.collect()
    assert not keys & set(FAST._entries)
    m, betas, pose, idx, aw, off, q = _fast_setup()
    m["shapedirs"] = m["shapedirs"].permute(2, 1, 0).contiguous().permute(2, 1, 0)  # a view: copied per call
    n = len(FAST._entries)
    got = _skin(m, betas, pose, idx, aw, off, q)
    assert len(FAST._entries) == n
    want = ref.skin_gaussians(betas, pose, *model_args(m), idx, aw, off, q)
    assert rel(got[0], want[0]) < 1e-12


def test_fast_path_model_that_starts_needing_grad():
    """A model remembered without gradients that later requires grad gets its gradient (the cached
    joint products are not used then)."""
    m, betas, pose, idx, aw, off, q = _fast_setup()
    _skin(m, betas, pose, idx, aw, off, q)
    m["shapedirs"].requires_grad_()
    b = betas.clone().requires_grad_()
    means, _ = _skin(m, b, pose, idx, aw, off, q)
    g_sd, g_b = torch.autograd.grad(means.sum(), [m["shapedirs"], b])
    m_ref = dict(m, shapedirs=m["shapedirs"].detach().clone().requires_grad_())
    b_ref = betas.clone().requires_grad_()
    want = torch.autograd.grad(ref.skin_gaussians(b_ref, pose, *model_args(m_ref), idx, aw, off, q)[0].sum(),
                               [m_ref["shapedirs"], b_ref])
    assert rel(g_sd, want[0]) < 1e-10 and rel(g_b, want[1]) < 1e-10


@pytest.mark.parametrize("which", ["offsets+quats", "pose", "joints only"])
def test_one_node_partial_gradients(which):
    """One autograd node per call: gradients of some inputs only (the backward skips the ops that no
    requested input is behind), and of outputs used partly, match the reference."""
    m, betas, pose, idx, aw, off, q = _fast_setup(B=3)
    impls = []
    for fl, sk in ((F.flame_lbs, F.skin_gaussians), (ref.flame_lbs, ref.skin_gaussians)):
        b, p, o, qq = (t.clone().requires_grad_() for t in (betas, pose, off, q))
        if which == "joints only":
            _, joints = fl(b, p, *model_args(m))
            impls.append(torch.autograd.grad((joints ** 2).sum(), [b, p]))
        else:
            means, quats = sk(b, p, *model_args(m), idx, aw, o, qq)
            leaves = [o, qq] if which == "offsets+quats" else [p]
            impls.append(torch.autograd.grad((means ** 2).sum() + (quats * 0.5).sum(), leaves))
    for g, w in zip(*impls):
        assert rel(g, w) < 1e-10
