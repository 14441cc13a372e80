"""Host/GPU timeline of one rasterize forward, or forward+backward (81K head, 512x512, C cameras: 1 by
default), eager as bench_rasterize times it: every kernel / memcpy and every runtime call (launches,
syncs) relative to the call's start, so the GPU's idle time behind host work shows.
Usage: python scripts/timeline_rasterize.py [dir] [bwd|fwd] [C]"""
import json
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

import ffavatar_kernels as fk
import _paths  # noqa: F401  (repository root on sys.path)
from benchmarks.scenes import head_scene


KEYS = ("means", "quats", "scales", "opacities", "colors")


def main(out_dir: str, backward: bool, C: int = 1) -> None:
    s = head_scene(C=C, size=512)

    def call():
        t = {k: (v.detach().requires_grad_(backward) if k in KEYS else v) for k, v in s.items()}
        img, alpha, _ = fk.rasterize(**t)
        if backward:
            (img.sum() + alpha.sum()).backward()

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.cuda.synchronize()
            with torch.profiler.record_function("CALL"):
                call()
            torch.cuda.synchronize()
    path = os.path.join(out_dir, "rasterize_fwd.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        ev = json.load(f)["traceEvents"]
    calls = sorted((e for e in ev if e.get("name") == "CALL" and e.get("ph") == "X"), key=lambda e: e["ts"])
    keep = ("kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver")
    for c in calls[1:]:
        t0, t1 = c["ts"], c["ts"] + c["dur"]
        rows = sorted((e for e in ev if e.get("cat") in keep and e.get("ph") == "X" and t0 <= e["ts"] <= t1 + 2000),
                      key=lambda e: e["ts"])
        last_gpu = max((e["ts"] + e["dur"] for e in rows if e["cat"] in keep[:3]), default=t1)
        busy = sum(e["dur"] for e in rows if e["cat"] in keep[:3])
        print(f"\n==== call: host {c['dur']:.1f} us, last GPU op ends at {last_gpu - t0:.1f} us, GPU busy {busy:.1f} us")
        for e in rows:
            side = "GPU " if e["cat"] in keep[:3] else "host"
            print(f"  {side} {e['ts'] - t0:8.1f} .. {e['ts'] + e['dur'] - t0:8.1f} ({e['dur']:6.1f})  {e['name'][:60]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(), len(sys.argv) > 2 and sys.argv[2] == "bwd",
         int(sys.argv[3]) if len(sys.argv) > 3 else 1)
