"""End-to-end reconstruction with the ``paper`` preset (random weights, bf16 autocast), 1 / 4 / 8 views.

For each view count, in one process: ours (every attention = ``ffavatar_kernels.cross_attention``)
and the same model with every attention routed to PyTorch SDPA (cuDNN, then flash backend) through
``ffavatar.nn.attention.use_sdpa``. Reported per case (pytest-benchmark extra_info and a table):

- median ms (``triton.testing.do_bench``) of ``model.reconstruct(images)`` (preprocessing included);
- analytic matmul FLOPs of the forward (``FFAvatarModel.flops``: per stage, 2 per multiply-add) and
  model FLOP utilisation against the bf16 GEMM rate measured here (8192^3 ``torch.matmul``);
- a per-stage split (encoder, estimator, Query-Former self-attention / cross-attention / MLP,
  decoder) timed with CUDA events around the stages of one forward;
- speedup of ours vs each SDPA route.

Stages are NVTX ranges (``ffavatar.nn.<stage>``), so ``nsys profile -t cuda,nvtx pytest
benchmarks/bench_reconstruct.py`` shows the same split on a timeline.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

VIEWS = [1, 4, 8]
IMPLS = ["ours", "cudnn", "flash"]
_state: dict = {}
_rows: dict = {}


def _model():
    if "model" not in _state:
        from ffavatar.nn.model import FFAvatarModel
        import ffavatar.nn.model as model_mod
        model_mod._warned_random = True  # random weights are the point here
        torch.manual_seed(0)
        _state["model"] = FFAvatarModel.from_preset("paper").cuda().eval()
    return _state["model"]


def _images(v: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(100 + v)
    return torch.rand(v, 3, 518, 518, device="cuda", generator=g)   # [V,3,H,W], already 518 px


def _gemm_tflops() -> float:
    """bf16 GEMM rate of this GPU, measured in this process (8192^3 matmul, median)."""
    if "gemm" not in _state:
        import triton.testing
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
        _state["gemm"] = 2 * 8192 ** 3 / ms / 1e9
    return _state["gemm"]


def _route(impl: str):
    from ffavatar.nn.attention import use_sdpa
    return contextlib.nullcontext() if impl == "ours" else use_sdpa(impl)


def _stage_split(model, images) -> dict:
    """ms per stage of one forward, CUDA events around each stage (Query-Former parts summed over
    blocks)."""
    from ffavatar.nn.model import preprocess
    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    marks: dict = {}

    def timed(name, fn, *a):
        s, e = ev(), ev()
        s.record()
        out = fn(*a)
        e.record()
        marks.setdefault(name, []).append((s, e))
        return out

    with torch.no_grad(), model._autocast():
        x = timed("preprocess", preprocess, images, model.preset.image_size)
        counts = [images.shape[0]]
        tok = timed("encoder", model.encoder, x)[:, model.encoder.num_prefix_tokens:]
        t = tok.shape[1]
        bank = tok.reshape(-1, tok.shape[-1])
        cu = torch.tensor([0, bank.shape[0]], dtype=torch.int32, device="cuda")
        timed("estimator", model.estimator, x, counts)
        qf = model.query_former
        q = qf.queries(model.canon_means).unsqueeze(0)
        for blk in qf.blocks:
            q = q + timed("qf.self_attn", blk.self_attn, q)
            q = q + timed("qf.cross_attn", blk.cross_attn, q, bank, cu, t * counts[0])
            q = q + timed("qf.mlp", lambda z: blk.mlp(blk.norm3(z)), q)
        feats = qf.norm(q)
        timed("decoder", model.decoder, feats, model.canon_quats, model.canon_scales,
              model.canon_opacities, model.canon_colors)
    torch.cuda.synchronize()
    return {k: sum(s.elapsed_time(e) for s, e in v) for k, v in marks.items()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("views", VIEWS)
def test_reconstruct_paper(benchmark, views, impl):
    import triton.testing
    model = _model()
    images = _images(views)
    flops = model.flops([views])
    with _route(impl):
        try:
            model.reconstruct(images)  # autotune / warm-up
        except RuntimeError as exc:   # an SDPA backend refusing a shape
            pytest.skip(f"{impl}: {str(exc).splitlines()[0][:120]}")
        ms = triton.testing.do_bench(lambda: model.reconstruct(images), warmup=2, rep=20,
                                     return_mode="median")
        split = _stage_split(model, images)
    gemm = _gemm_tflops()
    tflops = flops["total"] / ms / 1e9
    info = {"ms": ms, "views": views, "impl": impl, "tflop": flops["total"] / 1e12,
            "tflops": tflops, "mfu": tflops / gemm, "gemm_tflops": gemm,
            "gpu": torch.cuda.get_device_name()}
    info.update({f"stage_ms.{k}": v for k, v in split.items()})
    info.update({f"stage_tflop.{k}": v / 1e12 for k, v in flops.items() if k != "total"})
    ours = _rows.get((views, "ours"), {}).get("ms")
    if impl != "ours" and ours:
        info["ours_speedup"] = ms / ours
    _rows[(views, impl)] = info
    benchmark.extra_info.update(info)

    def synced():
        with _route(impl):
            model.reconstruct(images)
        torch.cuda.synchronize()
    benchmark.pedantic(synced, rounds=3, iterations=1, warmup_rounds=1)


def test_reconstruct_summary():
    """Print the table: ms, TFLOP, MFU, speedup vs the SDPA routes, and the stage split."""
    if not _rows:
        pytest.skip("nothing timed")
    stages = ["preprocess", "encoder", "estimator", "qf.self_attn", "qf.cross_attn", "qf.mlp", "decoder"]
    print(f"\nGPU {torch.cuda.get_device_name()}, bf16 GEMM {_gemm_tflops():.0f} TFLOP/s")
    print("| views | impl | ms | TFLOP | MFU | ours x | " + " | ".join(stages) + " |")
    for (views, impl), r in sorted(_rows.items(), key=lambda kv: (kv[0][0], IMPLS.index(kv[0][1]))):
        sp = f"{r['ours_speedup']:.2f}" if "ours_speedup" in r else "-"
        cells = " | ".join(f"{r.get('stage_ms.' + s, 0):.1f}" for s in stages)
        print(f"| {views} | {impl} | {r['ms']:.1f} | {r['tflop']:.1f} | {r['mfu']:.0%} | {sp} | {cells} |")
