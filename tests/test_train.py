"""Training on the CPU (tiny preset, 16 px images): synthetic data is reproducible and varies with the
seed, the few-to-many loss falls on a fixed batch, a 2-process gloo run (torchrun) keeps both ranks'
weights identical after every step, stop + resume equals an uninterrupted run bit for bit,
activation checkpointing leaves the gradients unchanged, configuration and checkpoint errors."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ffavatar.nn import FFAvatarModel, FlameEstimator, ViTConfig, get_preset
from ffavatar.train import (CheckpointError, ConfigError, FewToManyObjective, LossWeights, SyntheticConfig,
                            SyntheticHeads, TrainConfig, load_checkpoint, load_config, train)
from ffavatar.train.data_synthetic import VIEW_KEYS, camera_matrices
from ffavatar.train.loop import attention_path, enable_activation_checkpointing, lr_factor

SIZE = 16
DATA = {"image_size": SIZE, "num_targets": 8}


def _cfg(out, **kw) -> TrainConfig:
    d = {"preset": "tiny", "preset_overrides": {"max_queries": 256}, "steps": 4, "batch": 1, "lr": 2e-3,
         "warmup": 1, "eval_every": 0, "ckpt_every": 0, "out": str(out), "seed": 7, "progress": False,
         "threads": 1, "data": dict(DATA)}
    d.update(kw)
    return TrainConfig.from_dict(d)


def _samples_equal(a, b) -> bool:
    same = torch.equal(a.images, b.images) and torch.equal(a.target_images, b.target_images) and \
        torch.equal(a.shape, b.shape) and torch.equal(a.colors, b.colors)
    return same and all(torch.equal(a.cond[k], b.cond[k]) and torch.equal(a.target[k], b.target[k])
                        for k in VIEW_KEYS)


def test_synthetic_data_is_reproducible_and_varies():
    cfg = SyntheticConfig(**DATA)
    ds = SyntheticHeads(cfg, seed=5)
    a = ds.sample(3)
    ds.sample(11)                                          # drawing order does not matter
    b = SyntheticHeads(cfg, seed=5).sample(3)
    assert _samples_equal(a, b)
    assert _samples_equal(a, ds[3])
    k = a.images.shape[0]
    assert 1 <= k <= 4 and a.images.shape == (k, 3, SIZE, SIZE)
    assert a.target_images.shape == (8, 3, SIZE, SIZE)
    assert a.cond["expr"].shape == (k, cfg.n_expr) and a.target["viewmats"].shape == (8, 4, 4)
    assert 0 <= a.images.min() and a.images.max() <= 1 and a.images.std() > 0.05
    other_seed, other_index = SyntheticHeads(cfg, seed=6).sample(3), ds.sample(4)
    for o in (other_seed, other_index):
        assert not torch.equal(o.shape, a.shape) and not torch.equal(o.colors, a.colors)
        assert not torch.equal(o.target_images, a.target_images)
    assert not torch.equal(SyntheticHeads(cfg, seed=5, split="eval").sample(3).shape, a.shape)
    # ground-truth cameras follow the FLAME estimator's convention (it supervises the estimator)
    est = FlameEstimator(ViTConfig(width=32, depth=1, heads=2, grid=2), 4, 4, image_size=SIZE)
    vm, K = est.cameras(a.cond["rotation"], a.cond["translation"], a.cond["focal"])
    assert torch.allclose(vm, a.cond["viewmats"]) and torch.allclose(K, a.cond["Ks"])
    vm2, _ = camera_matrices(a.cond["rotation"], a.cond["translation"], a.cond["focal"], SIZE)
    assert torch.equal(vm2, a.cond["viewmats"])


def _tiny_model(max_queries=256) -> FFAvatarModel:
    import dataclasses
    return FFAvatarModel.from_preset(dataclasses.replace(get_preset("tiny"), max_queries=max_queries)).train()


def test_loss_falls_on_a_fixed_batch():
    ds = SyntheticHeads(SyntheticConfig(**DATA), seed=int(torch.randint(1 << 30, ())))
    batch = [ds.sample(0), ds.sample(1)]
    model = _tiny_model()
    objective = FewToManyObjective()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        with attention_path("cpu"):       # the exact attention path also in the backward
            out = objective(model, batch)
            opt.zero_grad()
            out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        assert set(out.terms) == {"target", "inputs", "params"}
        assert out.predictions[0].shape == (8, SIZE, SIZE, 3)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert sum(losses[-2:]) / 2 < 0.9 * losses[0], losses


def test_activation_checkpointing_keeps_gradients():
    s = SyntheticHeads(SyntheticConfig(**DATA), seed=1).sample(0)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _tiny_model(128)
        if ckpt:
            enable_activation_checkpointing(model)
        with attention_path("cpu"):
            FewToManyObjective()(model, [s]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], rtol=1e-4, atol=1e-7), n


def test_perceptual_term_only_with_a_module():
    s = SyntheticHeads(SyntheticConfig(**DATA), seed=2).sample(0)
    model = _tiny_model(64)
    calls = []

    def perceptual(pred, target):                  # [B,3,H,W] both
        calls.append(pred.shape)
        return (pred - target).pow(2).mean() + 1.0

    with torch.no_grad():
        plain = FewToManyObjective(LossWeights(perceptual=2.0))(model, [s])
        off = FewToManyObjective(LossWeights(), perceptual=perceptual)(model, [s])
        assert not calls                             # weight 0: the module is not called
        on = FewToManyObjective(LossWeights(perceptual=2.0), perceptual=perceptual)(model, [s])
    assert torch.equal(plain.loss, off.loss)
    assert on.loss.item() > plain.loss.item() + 2.0 and calls[0] == (8, 3, SIZE, SIZE)


def _state(path):
    return load_checkpoint(os.path.join(path, "checkpoint.safetensors"))


def test_stop_and_resume_is_bit_for_bit(tmp_path):
    kw = {"eval_every": 2, "eval_samples": 1, "eval_views": 2, "checkpointing": True}
    full = train(_cfg(tmp_path / "full", **kw))
    first = train(_cfg(tmp_path / "resumed", **kw), stop_at=2)
    assert first["step"] == 2 and len(first["losses"]) == 2
    assert _state(tmp_path / "resumed").step == 2
    second = train(_cfg(tmp_path / "resumed", **kw))
    assert second["step"] == 4 and len(second["losses"]) == 2
    assert first["losses"] + second["losses"] == full["losses"]
    a, b = _state(tmp_path / "full"), _state(tmp_path / "resumed")
    assert a.step == b.step == 4 and a.model_state.keys() == b.model_state.keys()
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    sa, sb = a.optimizer_state["state"], b.optimizer_state["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert a.scheduler_state == b.scheduler_state
    lines = [json.loads(x) for x in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    ev = [r for r in lines if "eval/psnr" in r]
    assert [r["step"] for r in ev] == [2, 4] and all(r["eval/psnr"] > 0 and 0 < r["eval/ssim"] <= 1 for r in ev)
    assert (tmp_path / "resumed" / "eval_0000004.png").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_keeps_ranks_in_sync(tmp_path):
    cfg = _cfg(tmp_path / "run", steps=3, log_weight_digest=True).to_dict()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "ffavatar.train", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    digests = [r["weight_digests"] for r in recs if "weight_digests" in r]
    assert len(digests) == 3
    assert all(len(d) == 2 and d[0] == d[1] for d in digests), digests
    assert len({d[0] for d in digests}) == 3                 # the weights moved every step
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").data == {"next_step": 3, "world_size": 2}


def test_lr_schedule():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_config_files_and_errors(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "tiny"\nsteps = 5\n[data]\nimage_size = 24\n[loss]\ninputs = 0.0\n')
    c = load_config(toml, out=str(tmp_path / "o"))
    assert (c.preset, c.steps, c.data.image_size, c.loss.inputs, c.out) == ("tiny", 5, 24, 0.0, str(tmp_path / "o"))
    js = tmp_path / "c.json"
    js.write_text(json.dumps(c.to_dict()))
    assert load_config(js) == c
    js.write_text(json.dumps({"preset": "tiny", "stpes": 3}))
    with pytest.raises(ConfigError, match="stpes"):
        load_config(js)
    js.write_text(json.dumps({"data": {"imagesize": 3}}))
    with pytest.raises(ConfigError, match="imagesize"):
        load_config(js)
    js.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        load_config(js)
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig.from_dict({"steps": 0})


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
    model = tmp_path / "model.safetensors"
    _tiny_model(64).save_pretrained(model)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(model)


def test_cli_train_rejects_bad_config(tmp_path, capsys):
    """`ffavatar train`: a missing or bad config is one line, non-zero exit, before any work."""
    from ffavatar.cli import main
    with pytest.raises(SystemExit, match="ffavatar train"):
        main(["train", str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"no_such_key": 1}')
    with pytest.raises(SystemExit, match="no_such_key"):
        main(["train", str(bad)])


def test_time_limit_checkpoints_and_resumes(tmp_path):
    # a run lent a fixed time: past time_limit it finishes the step, checkpoints, logs and returns;
    # the next run resumes where it stopped
    first = train(_cfg(tmp_path / "run", steps=6, log_every=5, time_limit=1e-9))
    assert first["step"] == 1 and _state(tmp_path / "run").step == 1
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [1]
    second = train(_cfg(tmp_path / "run", steps=6))
    assert second["step"] == 6 and len(second["losses"]) == 5
    with pytest.raises(ConfigError, match="time_limit"):
        _cfg(tmp_path, time_limit=-1)


def test_sdpa_attention_option_trains(tmp_path):
    # attention = "sdpa": every attention of the step through PyTorch SDPA (the CPU recipe)
    res = train(_cfg(tmp_path / "run", steps=2, attention="sdpa"))
    assert res["step"] == 2 and all(torch.isfinite(torch.tensor(res["losses"])))
    with pytest.raises(ConfigError, match="attention"):
        _cfg(tmp_path, attention="flash")
