"""The training loop: ``python -m ffavatar.train CONFIG`` or, one process per GPU (or CPU worker),
``torchrun --nproc_per_node=N -m ffavatar.train CONFIG``.

With ``WORLD_SIZE > 1`` (torchrun's environment) the model is wrapped in DistributedDataParallel
(nccl on CUDA, gloo on CPU); rank r of W draws, at step s, the synthetic samples
``(s * W + r) * batch + j`` (each its own seeded generator), so the data is a pure function of the
step and a resumed run draws exactly what it would have. AdamW (fused on CUDA), linear warm-up +
cosine decay, gradient clipping, bf16 autocast on CUDA, optional activation checkpointing of the
Query-Former blocks, metrics as JSON lines (rank 0; TensorBoard too when installed), a tqdm bar,
held-out evaluation and atomic checkpoints (:mod:`ffavatar.train.checkpoint`) that resume bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from ffavatar.nn import FFAvatarModel, get_preset
from ffavatar_kernels.cross_attention import force_math_path

from .checkpoint import latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data_synthetic import SyntheticHeads
from .evaluate import evaluate
from .objective import FewToManyObjective, unwrap

__all__ = ["train", "build_model", "lr_factor", "enable_activation_checkpointing", "weight_digest",
           "attention_path"]


def attention_path(device: torch.device, attention: str = "kernel"):
    """The context a training step (forward and backward) runs in. ``attention="kernel"``: our
    kernel (on CPU its exact PyTorch path, also for the backward, even under ``TRITON_INTERPRET=1``);
    ``"sdpa"``: every attention through PyTorch SDPA (on a CPU its flash kernel, ~4x faster than
    the exact path for the ``small`` preset's 5,023 queries)."""
    if attention == "sdpa":
        from ffavatar.nn.attention import use_sdpa
        return use_sdpa(None)
    return force_math_path() if torch.device(device).type == "cpu" else contextlib.nullcontext()


def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def load_flame_model(cfg: TrainConfig):
    """The FLAME model of the run: ``cfg.flame`` read from its file, or None (the synthetic head)."""
    if not cfg.flame:
        return None
    from ffavatar.flame import load_flame
    return load_flame(cfg.flame)


def build_datasets(cfg: TrainConfig, flame) -> tuple:
    """(training data, held-out data): synthetic identities, or ``cfg.captures`` when given."""
    if not cfg.captures:
        return (SyntheticHeads(cfg.data, seed=cfg.seed, split="train"),
                SyntheticHeads(cfg.data, seed=cfg.seed, split="eval"))
    from ffavatar.flame import synthetic_head
    from .data_captures import TrackedCaptures
    d = cfg.data
    kw = dict(image_size=d.image_size, min_views=d.min_views, max_views=d.max_views, num_targets=d.num_targets,
              seed=cfg.seed, background=d.background, distance=d.distance)
    model = flame or synthetic_head()
    return (TrackedCaptures(cfg.captures, model, split="train", **kw),
            TrackedCaptures(cfg.eval_captures or cfg.captures, model, split="eval", **kw))


def build_model(cfg: TrainConfig, device: torch.device, flame=None) -> FFAvatarModel:
    """The preset (with ``preset_overrides``) bound to ``flame``, seeded by ``cfg.seed`` so every
    rank starts alike."""
    import dataclasses
    preset = get_preset(cfg.preset)
    if cfg.preset_overrides:
        preset = dataclasses.replace(preset, **cfg.preset_overrides)
    torch.manual_seed(cfg.seed)
    model = FFAvatarModel.from_preset(preset, flame)
    if cfg.encoder_weights:
        model.load_encoder_weights(cfg.encoder_weights)
    model.autocast = bool(cfg.bf16)
    return model.to(device).train()


def enable_activation_checkpointing(model: FFAvatarModel) -> None:
    """Recompute each Query-Former block in the backward (``torch.utils.checkpoint``,
    ``use_reentrant=False``); the state-dict keys stay as they are."""
    for blk in model.query_former.blocks:
        if getattr(blk, "_ffa_checkpointed", False):
            continue
        plain = blk.forward
        blk.forward = functools.partial(checkpoint, plain, use_reentrant=False)
        blk._ffa_checkpointed = True


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or name.endswith(("pos_embed", "cls_token", "reg_tokens")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def weight_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter's bytes (ranks in sync hold equal digests)."""
    h = hashlib.sha256()
    for _, p in sorted(unwrap(model).named_parameters()):
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _Metrics:
    """JSON lines in ``out/metrics.jsonl`` and, when installed, TensorBoard (rank 0 only)."""

    def __init__(self, out: str, enabled: bool):
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        self.f = open(os.path.join(out, "metrics.jsonl"), "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out, "tb"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def train(cfg: TrainConfig, *, stop_at: Optional[int] = None) -> dict:
    """Run (or resume) training as configured; ``stop_at``: leave after that many steps in all
    (as an interrupted run would, after writing a checkpoint). Returns a summary on every rank:
    ``step``, ``loss`` (last step, this rank), ``losses`` (this run's steps), ``out``."""
    rank, world, local_rank = _dist_env()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    det_before = (torch.are_deterministic_algorithms_enabled(),
                  torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.deterministic:
        # PyTorch reads this at the process's first cuBLAS call (a process that multiplied on the GPU
        # before gets PyTorch's error naming the variable: set it before starting then). Left set.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, rank, world, device, stop_at)
    finally:
        torch.use_deterministic_algorithms(det_before[0], warn_only=det_before[1])
        if own_group:
            dist.destroy_process_group()
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, stop_at: Optional[int]) -> dict:
    os.makedirs(cfg.out, exist_ok=True)
    flame = load_flame_model(cfg)
    model = build_model(cfg, device, flame)
    if cfg.checkpointing:
        enable_activation_checkpointing(model)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                            fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(lr_factor, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio))
    start = 0
    ckpt_path = latest(cfg.out) if cfg.resume else None
    if ckpt_path:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck.model_state, strict=False)
        opt.load_state_dict(ck.optimizer_state)
        sched.load_state_dict(ck.scheduler_state)
        start = int(ck.data["next_step"])
        set_rng_state(ck.rng(rank))
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    data, held_out = build_datasets(cfg, flame)
    objective = FewToManyObjective(cfg.loss, flame=flame, background=cfg.data.background)
    metrics = _Metrics(cfg.out, rank == 0)
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    losses, step, loss_v = [], start, float("nan")
    began = time.perf_counter()
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            idx = [(step * world + rank) * cfg.batch + j for j in range(cfg.batch)]
            batch = [data.sample(i, device=device) for i in idx]
            with attention_path(device, cfg.attention):
                out = objective(ddp, batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
            opt.step()
            sched.step()
            loss_v = float(out.loss.detach())
            losses.append(loss_v)
            done = step + 1
            out_of_time = _out_of_time(cfg, began, world)
            last = done == end or out_of_time
            rec = None
            if cfg.log_every and (done % cfg.log_every == 0 or last):
                rec = {"step": done, "loss": loss_v, **{f"loss/{k}": float(v) for k, v in out.terms.items()},
                       "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0],
                       "step_s": time.perf_counter() - t0}
            if cfg.log_weight_digest:
                digests = _gather(weight_digest(model), world)
                rec = rec or {"step": done}
                rec["weight_digests"] = digests
            if rec is not None:
                metrics.log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.4f}")
            if cfg.eval_every and done % cfg.eval_every == 0 and rank == 0:
                ev = evaluate(model, held_out, objective, samples=cfg.eval_samples, views=cfg.eval_views,
                              step=done, out_dir=cfg.out)
                metrics.log({"step": done, **ev})
            if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or last:
                _save(cfg, model, opt, sched, done, world, rank)
            if out_of_time:
                end = done
                break
        step = end
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    return {"step": step, "loss": loss_v, "losses": losses, "out": cfg.out}


def _out_of_time(cfg: TrainConfig, began: float, world: int) -> bool:
    """Past ``cfg.time_limit`` (rank 0's clock decides, so every rank stops at the same step)."""
    if not cfg.time_limit:
        return False
    over = time.perf_counter() - began > cfg.time_limit
    return bool(_gather(over, world)[0])


def _save(cfg, model, opt, sched, done: int, world: int, rank: int) -> None:
    states = _gather(rng_state(), world)
    if rank == 0:
        save_checkpoint(os.path.join(cfg.out, "checkpoint.safetensors"), model=model, optimizer=opt,
                        scheduler=sched, step=done, data_state={"next_step": done, "world_size": world},
                        rng_states=states, config_json=cfg.to_json(), preset_json=model.preset.to_json())
    if world > 1:
        dist.barrier()
