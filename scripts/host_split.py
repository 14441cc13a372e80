"""Where one synchronized rasterize forward's wall time goes, without a profiler (81K head, 512x512,
C cameras): the registered ops (torch.ops.ffavatar.rasterize_*) called as rasterize() calls them, host timestamps (perf_counter) after each op
returns, and CUDA events recorded between the ops, all relative to an event recorded at the call's
start, as benchmarks/bench_rasterize.py times a call. Medians over 50 steady calls.
Usage: python scripts/host_split.py [C]"""
import statistics
import sys
import time

import torch

import ffavatar_kernels as fk
import _paths  # noqa: F401  (repository root on sys.path)
from benchmarks.scenes import head_scene


def main(C: int) -> None:
    s = head_scene(C=C, size=512)
    W = H = 512

    ops = torch.ops.ffavatar

    def staged(ev, hs):
        ev[0].record()
        hs.append(time.perf_counter())
        m2, dp, cn, op, rr, tl = ops.rasterize_project(s["means"], s["quats"], s["scales"], s["opacities"],
                                                       s["viewmats"], s["Ks"], W, H, 0.01, 1e10, 0.3, False, 16)
        hs.append(time.perf_counter())
        ev[1].record()
        offs, fids = ops.rasterize_bin(m2, rr, dp, cn, op, tl, W, H, 16)
        hs.append(time.perf_counter())
        ev[2].record()
        img = ops.rasterize_render(m2, cn, op, s["colors"], None, offs, fids, W, H, 16)
        hs.append(time.perf_counter())
        ev[3].record()
        return img

    rows = {k: [] for k in ("host project", "host bin", "host render", "gpu @project returned",
                            "gpu @bin returned", "gpu @render returned", "call (event to event)", "plain rasterize()")}
    for it in range(60):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        hs = []
        staged(ev, hs)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fk.rasterize(**s)
        b.record()
        b.synchronize()
        if it < 10:
            continue
        rows["host project"].append((hs[1] - hs[0]) * 1e3)
        rows["host bin"].append((hs[2] - hs[1]) * 1e3)
        rows["host render"].append((hs[3] - hs[2]) * 1e3)
        for k, i in (("gpu @project returned", 1), ("gpu @bin returned", 2), ("gpu @render returned", 3)):
            rows[k].append(ev[0].elapsed_time(ev[i]))
        rows["call (event to event)"].append(ev[0].elapsed_time(ev[3]))
        rows["plain rasterize()"].append(a.elapsed_time(b))
    print(f"C={C}: medians, ms (gpu @X: GPU time from the call's start to an event recorded after X)")
    for k, v in rows.items():
        print(f"  {k:24s} {statistics.median(v):.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
