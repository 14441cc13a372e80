"""In-process A/B of rasterize's bin + render as one op call (rasterize_bin_render) vs two calls
(FFAVATAR_SPLIT_BIN_RENDER's path), 1-camera 81K head at 512x512, forward and forward+backward,
timed interleaved call by call (benchmarks/bench_rasterize.py's _time_ms). Usage:
python scripts/ab_rasterize.py [iters]"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_rasterize as bench  # noqa: E402

import ffavatar_kernels.rasterize as R  # noqa: E402


def main(iters: int) -> None:
    for backward in (False, True):
        s = bench._prep(bench._scene("1cam"), backward)
        ours = bench._ours(s, backward)

        def with_split(split):
            def run():
                R._SPLIT_BIN_RENDER = split
                ours()
            return run
        fused, split = bench._time_ms([with_split(False), with_split(True)], iters=iters)
        R._SPLIT_BIN_RENDER = False
        print(f"1 camera {'fwd+bwd' if backward else 'fwd'}: one call {fused:.4f} ms, two calls {split:.4f} ms "
              f"(two / one = {split / fused:.3f})")


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = False
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
