"""Kernel timeline of the LBS forward in CUDA-graph replay (what bench_lbs times): start and end of
every kernel of one replay relative to the replay's first kernel, for B=1 (one-frame path) and B=16,
81,424 random anchors, COPIES models so shapedirs is streamed from DRAM as in the benchmark.
Shows the gaps between dependent kernels and how far PDL overlaps them.
Usage: python scripts/timeline_lbs.py [trace_dir]"""
import importlib
import json
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

V, J, S, P, N = 5023, 5, 400, 36, 81424
COPIES = 4


def _model(dev):
    W = torch.rand(V, J, device=dev) ** 4
    Jr = torch.rand(J, V, device=dev)
    return [torch.randn(V, 3, device=dev) * 0.1, torch.randn(V, 3, S, device=dev) * 1e-3,
            torch.randn(P, V * 3, device=dev) * 1e-2, Jr / Jr.sum(1, keepdim=True),
            torch.tensor([-1, 0, 1, 1, 1]), W / W.sum(1, keepdim=True)]


def timeline(B: int, out_dir: str) -> None:
    F = importlib.import_module("ffavatar_kernels.flame_lbs")
    dev = "cuda"
    models = [_model(dev) for _ in range(COPIES)]
    idx = torch.randint(0, V, (N, 4), device=dev, dtype=torch.int32)
    aw = torch.rand(N, 4, device=dev) + 0.05
    aw = aw / aw.sum(1, keepdim=True)
    off, q = torch.randn(N, 3, device=dev) * 1e-2, torch.randn(N, 4, device=dev)
    betas = [torch.randn(B, S, device=dev) for _ in range(COPIES)]
    pose = [torch.randn(B, J * 3, device=dev) * 0.3 for _ in range(COPIES)]

    def step():
        with torch.no_grad():
            for i in range(COPIES):
                F.skin_gaussians(betas[i], pose[i], *models[i], idx, aw, off, q)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            g.replay()
        torch.cuda.synchronize()
    path = os.path.join(out_dir, f"lbs_B{B}.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        ev = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    ev.sort(key=lambda e: e["ts"])
    per = len(ev) // 5
    print(f"\n==== B={B}: {len(ev)} kernels in 5 replays ({per} per replay of {COPIES} calls)")
    if per == 0:
        return
    for r in (2, 3):  # two middle replays
        chunk = ev[r * per:(r + 1) * per]
        t0 = chunk[0]["ts"]
        print(f"-- replay {r}: total {chunk[-1]['ts'] + chunk[-1]['dur'] - t0:.2f} us")
        prev_end = None
        for e in chunk:
            gap = "" if prev_end is None else f" gap {e['ts'] - prev_end:+.2f}"
            print(f"  {e['ts'] - t0:8.2f} .. {e['ts'] + e['dur'] - t0:8.2f}  ({e['dur']:6.2f}){gap}  {e['name'][:70]}")
            prev_end = e["ts"] + e["dur"]
    nxt = ev[4 * per]["ts"] - ev[3 * per]["ts"]
    print(f"-- replay start to next replay start: {nxt:.2f} us = {nxt / COPIES:.2f} us per call")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    for b in (1, 16):
        timeline(b, out)
