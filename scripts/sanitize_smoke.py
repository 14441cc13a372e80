"""Run every CUDA op once, forward and backward, on small inputs: the program that
`compute-sanitizer --tool memcheck|racecheck` watches in scripts/gpu_check.sh (stage `sanitize`)."""
import torch

import ffavatar_kernels as fk


def lbs_inputs(dev, B=2, V=300, J=5, S=20):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dev)
    W = torch.rand(V, J, generator=g).to(dev)
    return dict(
        betas=r(B, S).requires_grad_(), pose=(0.3 * r(B, J * 3)).requires_grad_(),
        v_template=r(V, 3), shapedirs=0.1 * r(V, 3, S), posedirs=0.01 * r((J - 1) * 9, V * 3),
        J_regressor=torch.softmax(r(J, V), 1), parents=torch.tensor([-1, 0, 1, 1, 1], device=dev),
        lbs_weights=W / W.sum(1, keepdim=True))


def main(which):
    dev = "cuda"
    a = lbs_inputs(dev)
    v, j = fk.flame_lbs(*a.values())
    (v.square().sum() + j.sum()).backward()
    N = 1000
    idx = torch.randint(0, 300, (N, 4), device=dev)
    w = torch.rand(N, 4, device=dev); w = w / w.sum(1, keepdim=True)
    off = (0.01 * torch.randn(N, 3, device=dev)).requires_grad_()
    q = torch.randn(N, 4, device=dev).requires_grad_()
    for B in (2, 6, 16):  # B > 4: several frame groups in the Gaussian backward; 16: vertex BT=16
        a = lbs_inputs(dev, B=B)
        m, qq = fk.skin_gaussians(*a.values(), idx, w, off, q)
        (m.square().sum() + qq.sum()).backward()
    with torch.no_grad():  # one frame without grad: the fused path (flame_skin_gaussians)
        a = lbs_inputs(dev, B=1)
        for n in (N, 300_000):  # 300K: more Gaussians than resident threads (grid-stride)
            ii = torch.randint(0, 300, (n, 4), device=dev)
            fk.skin_gaussians(*a.values(), ii, torch.full((n, 4), 0.25, device=dev))
        a = lbs_inputs(dev, B=6)  # per-frame offsets [B,N,3]: the Gaussian forward's batched-offset loads
        fk.skin_gaussians(*a.values(), idx, w, torch.randn(6, N, 3, device=dev) * 0.01, q.detach())

    means = (torch.randn(N, 3, device=dev) * 0.3 + torch.tensor([0, 0, 3.0], device=dev)).requires_grad_()
    quats = torch.randn(N, 4, device=dev).requires_grad_()
    scales = (torch.rand(N, 3, device=dev) * 0.05 + 0.01).requires_grad_()
    opac = torch.rand(N, device=dev).requires_grad_()
    cols = torch.rand(N, 3, device=dev).requires_grad_()
    view = torch.eye(4, device=dev)[None].repeat(2, 1, 1)
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]], device=dev)[None].repeat(2, 1, 1)
    img, alpha, _ = fk.rasterize(means, quats, scales, opac, cols, view, K, 100, 80, render_mode="RGB+ED")
    (img.square().sum() + alpha.sum()).backward()
    # the bin's speculative capacity (after the first call on a device): the same scene four times
    # (the guess fits; from the third call the sort replays a captured graph), a 10x larger one (the
    # guess is short: redo), the first again (fits, with slack)
    with torch.no_grad():
        big = [t.detach().repeat(10, *([1] * (t.dim() - 1))) for t in (means, quats, scales, opac, cols)]
        small = (means, quats, scales, opac, cols)
        for scene in (small,) * 4 + (big, small):
            fk.rasterize(*(t.detach() for t in scene), view, K, 100, 80)

    if "attention" not in which:
        torch.cuda.synchronize(); print("sanitize_smoke: lbs, rasterize ran"); return
    qa = torch.randn(2, 4, 200, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    ka = torch.randn(2, 4, 150, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    va = torch.randn(2, 4, 150, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    fk.cross_attention(qa, ka, va).float().square().sum().backward()
    torch.cuda.synchronize()
    print("sanitize_smoke: all ops ran")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:] or ["attention"])
