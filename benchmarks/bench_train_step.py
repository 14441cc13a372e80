"""One training step of the ``paper`` preset: 4 conditioning + 8 target views (512 px), bf16 autocast.

A step = the few-to-many objective (forward of the network, skinning + rendering of the 8 targets and
the 4 re-rendered inputs, L1 + SSIM, estimator losses) + backward + fused AdamW. In one process:

- ours: every attention ``ffavatar_kernels.cross_attention``, our skinning and rasterizer;
- the comparator: every attention PyTorch SDPA (cuDNN backend, ``ffavatar.nn.attention.use_sdpa``)
  and gsplat's rasterizer (our skinning, so the row isolates attention + rendering).

Reported: median step ms (CUDA events over timed steps after warm-up), analytic matmul FLOPs of the
step (the trained parts count 3x their forward: forward + two backward GEMMs; the frozen encoder
once) and model FLOP utilisation against the bf16 GEMM rate measured in this process.
"""
from __future__ import annotations

import contextlib
import statistics

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

IMPLS = ["ours", "sdpa_gsplat"]
_state: dict = {}
_rows: dict = {}


def _setup():
    if "model" not in _state:
        import ffavatar.nn.model as model_mod
        from ffavatar.nn import FFAvatarModel
        from ffavatar.train import SyntheticConfig, SyntheticHeads
        model_mod._warned_random = True
        torch.manual_seed(0)
        model = FFAvatarModel.from_preset("paper").cuda().train()
        data = SyntheticHeads(SyntheticConfig(image_size=512, min_views=4, max_views=4, num_targets=8), seed=0)
        _state["model"] = model
        _state["sample"] = data.sample(0, device="cuda")
        _state["opt"] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                                          fused=True)
    return _state["model"], _state["sample"], _state["opt"]


def _gemm_tflops() -> float:
    if "gemm" not in _state:
        import triton.testing
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        _state["gemm"] = 2 * 8192 ** 3 / triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300,
                                                                  return_mode="median") / 1e9
    return _state["gemm"]


def step_flops(model, views: int) -> float:
    """Matmul FLOPs of one step: 3x the forward of the trained parts, 1x the frozen encoder's."""
    f = model.flops([views])
    enc = f["encoder"]
    trained = f["total"] - enc
    return 3 * trained + (enc if model.preset.freeze_encoder else 3 * enc)


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_paper(benchmark, impl):
    from ffavatar.train import FewToManyObjective
    model, sample, opt = _setup()
    if impl == "ours":
        objective, route = FewToManyObjective(), contextlib.nullcontext()
    else:
        from benchmarks.comparators import gsplat_backend
        from ffavatar.nn.attention import use_sdpa
        objective, route = FewToManyObjective(backend=gsplat_backend(torch_lbs=False)), use_sdpa("cudnn")

    def step():
        with route:
            out = objective(model, [sample])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
        opt.step()

    for _ in range(2):
        step()                                    # autotune, allocator warm-up
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = statistics.median(times)
    flops = step_flops(model, 4)
    gemm = _gemm_tflops()
    info = {"ms": ms, "impl": impl, "tflop": flops / 1e12, "tflops": flops / ms / 1e9,
            "mfu": flops / ms / 1e9 / gemm, "gemm_tflops": gemm, "gpu": torch.cuda.get_device_name(),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    ours = _rows.get("ours", {}).get("ms")
    if impl != "ours" and ours:
        info["ours_speedup"] = ms / ours
    _rows[impl] = info
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: (step(), torch.cuda.synchronize()), rounds=1, iterations=1)


def test_train_step_summary():
    if not _rows:
        pytest.skip("nothing timed")
    print(f"\nGPU {torch.cuda.get_device_name()}, bf16 GEMM {_gemm_tflops():.0f} TFLOP/s")
    print("| impl | step ms | TFLOP | MFU | ours x | peak GiB |")
    for impl, r in _rows.items():
        sp = f"{r['ours_speedup']:.2f}" if "ours_speedup" in r else "-"
        print(f"| {impl} | {r['ms']:.0f} | {r['tflop']:.1f} | {r['mfu']:.0%} | {sp} | {r['peak_gib']:.1f} |")
