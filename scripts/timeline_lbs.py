"""Kernel timeline of the LBS forward in CUDA-graph replay (what bench_lbs times): start and end of
every kernel of one replay relative to the replay's first kernel, for B=1 (one-frame path) and B=16,
81,424 random anchors, COPIES models so shapedirs is streamed from DRAM as in the benchmark.
Shows the gaps between dependent kernels and how far PDL overlaps them.
Usage: python scripts/timeline_lbs.py [trace_dir] [subdiv]  (subdiv: benchmarks/bench_lbs.py's
subdivision anchors instead of random ones)"""
import importlib
import json
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

J, S = 5, 400
COPIES = 4


def timeline(B: int, out_dir: str, subdiv: bool) -> None:
    F = importlib.import_module("ffavatar_kernels.flame_lbs")
    dev = "cuda"
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    bench = importlib.import_module("bench_flame_lbs")
    models = [bench._args(bench._model(dev)) for _ in range(COPIES)]
    idx, aw, off, q = (bench._subdiv_anchors if subdiv else bench._anchors)(dev)
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
        timeline(b, out, "subdiv" in sys.argv[2:])
