"""What reading the FLAME blend basis costs on this GPU, outside our kernels: the B=1 LBS forward
streams shapedirs [5023*3, 400] + posedirs [36, 5023*3] (26.3 MB fp32) once per frame. Times per
call (CUDA graph of 64 calls over 4 rotating copies, so nothing stays in L2) of: torch.sum over the
bytes, cuBLAS GEMV (shapedirs @ betas), and a copy of the same bytes (read + write).
Usage: python scripts/read_floor.py"""
import torch

ROWS, S, P = 5023 * 3, 400, 36


def graph_us(fns, reps=16):
    """Mean µs per call of fns (called round-robin) replayed in one CUDA graph."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / (10 * reps * len(fns))


def main():
    sd = [torch.randn(ROWS, S, device="cuda") for _ in range(4)]
    pd = [torch.randn(P, ROWS, device="cuda") for _ in range(4)]
    beta = torch.randn(S, device="cuda")
    pf = torch.randn(P, device="cuda")
    out = torch.empty(ROWS, device="cuda")
    dst = [torch.empty_like(x) for x in sd]
    mb = (sd[0].numel() + pd[0].numel()) * 4 / 1e6
    sd_mb = sd[0].numel() * 4 / 1e6
    rows = [
        ("sum of shapedirs and posedirs", mb, [lambda i=i: (sd[i].sum(), pd[i].sum()) for i in range(4)]),
        ("cuBLAS GEMV: shapedirs @ betas + posedirs^T @ pose features", mb,
         [lambda i=i: (torch.mv(sd[i], beta, out=out), torch.addmv(out, pd[i].t(), pf, out=out)) for i in range(4)]),
        ("copy of shapedirs (read + write)", sd_mb, [lambda i=i: dst[i].copy_(sd[i]) for i in range(4)]),
    ]
    print("| op | MB read | µs per call | GB/s read |")
    print("|---|---|---|---|")
    for name, m, fns in rows:
        us = graph_us(fns)
        print(f"| {name} | {m:.1f} | {us:.2f} | {m * 1e3 / us:.0f} |")


if __name__ == "__main__":
    main()
