"""The real-capture loader (VHAP / GaussianAvatars layout) on a small example written in that layout:
two timesteps x three cameras of the synthetic head with a global head rotation and translation,
non-square images, OpenGL camera-to-world matrices, a mask. Known answer: re-rendering the
ground-truth head with what the loader returns (our conventions: OpenCV world-to-camera with the
head's rigid motion folded in, global pose zero, cropped intrinsics) reproduces its images, and
its estimator-convention parameters rebuild its cameras. Plus clear errors on broken folders."""
import json
import math

import numpy as np
import pytest
import torch

from ffavatar.avatar import Avatar
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.train.data_captures import CaptureError, TrackedCaptures
from ffavatar.train.data_synthetic import VIEW_KEYS, camera_matrices, flame_pose
from ffavatar.train.objective import FewToManyObjective
from ffavatar_kernels.reference.flame_lbs import batch_rodrigues

W, H = 80, 64            # non-square: the loader centre-crops to 64 x 64
GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _look_at(yaw: float, dist: float = 0.8) -> torch.Tensor:
    """OpenCV world-to-camera looking at the origin from yaw (rad) around +y, head upright."""
    R = batch_rodrigues(torch.tensor([[0.0, yaw, 0.0]]))[0]
    vm = torch.eye(4)
    vm[:3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ R
    vm[:3, 3] = torch.tensor([0.0, 0.0, dist])
    return vm


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    import imageio.v3 as iio
    root = tmp_path_factory.mktemp("subject")
    (root / "images").mkdir()
    (root / "fg_masks").mkdir()
    (root / "flame_param").mkdir()
    model = synthetic_head()
    avatar = Avatar.from_canonical(model, canonical_gaussians(model, 0))
    g = torch.Generator().manual_seed(3)
    shape = torch.zeros(model.n_shape)
    shape[:8] = 0.5 * torch.randn(8, generator=g)
    avatar.betas_shape = shape
    K = torch.tensor([[90.0, 0.0, 41.0], [0.0, 90.0, 31.0], [0.0, 0.0, 1.0]])
    frames, truth = [], {}
    for t in range(2):
        p = {"expr": 0.8 * torch.randn(1, model.n_expr, generator=g), "rotation": torch.tensor([[0.1, 0.3 * t - 0.1, 0.05]]),
             "neck_pose": torch.tensor([[0.05, 0.0, 0.0]]), "jaw_pose": torch.tensor([[0.15 * t, 0.0, 0.0]]),
             "eyes_pose": torch.zeros(1, 6), "translation": torch.tensor([[0.01, -0.02, 0.03 * t]]),
             "shape": shape[None]}
        np.savez(root / "flame_param" / f"{t:05d}.npz", **{k: v.numpy() for k, v in p.items()},
                 static_offset=np.zeros((1, 5023, 3), np.float32))
        pose = torch.cat([p["rotation"], p["neck_pose"], p["jaw_pose"], p["eyes_pose"]], -1)
        for c, yaw in enumerate((-0.5, 0.0, 0.6)):
            vm = _look_at(yaw)
            img = avatar.render(model, vm[None], K[None], W, H, expression=p["expr"], pose=pose,
                                translation=p["translation"])[0]                       # [H,W,3]
            name = f"images/{t:05d}_{c:02d}.png"
            iio.imwrite(root / name, (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
            fr = {"file_path": name, "flame_param_path": f"flame_param/{t:05d}.npz", "timestep_index": t,
                  "camera_index": c, "transform_matrix": (torch.linalg.inv(vm) @ GL).tolist()}
            if (t, c) == (1, 2):                   # one frame with a mask (all foreground) and own intrinsics
                iio.imwrite(root / "fg_masks/m.png", np.full((H, W), 255, np.uint8))
                fr.update(fg_mask_path="fg_masks/m.png", fl_x=90.0, fl_y=90.0, cx=41.0, cy=31.0, w=W, h=H)
            frames.append(fr)
            truth[name] = img
    meta = {"fl_x": 90.0, "fl_y": 90.0, "cx": 41.0, "cy": 31.0, "w": W, "h": H, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return {"root": root, "model": model, "avatar": avatar, "shape": shape}


def test_loader_conventions_reproduce_the_images(capture):
    ds = TrackedCaptures(capture["root"], capture["model"], image_size=64, num_targets=5, seed=1)
    s = ds.sample(0)
    k = s.images.shape[0]
    assert 1 <= k <= 3 and s.images.shape == (k, 3, 64, 64) and s.target_images.shape == (5, 3, 64, 64)
    assert set(s.cond) == set(VIEW_KEYS) and set(s.target) == set(VIEW_KEYS)
    assert torch.allclose(s.shape, capture["shape"])
    m, a = capture["model"], capture["avatar"]
    for imgs, views in ((s.images, s.cond), (s.target_images, s.target)):
        # the ground-truth head rendered with the returned cameras and global pose zero
        re = a.render(m, views["viewmats"], views["Ks"], 64, 64, expression=views["expr"], pose=flame_pose(views))
        err = (re.permute(0, 3, 1, 2) - imgs).abs().max()
        assert err < 1.5 / 255, float(err)
        # the estimator-convention ground truth rebuilds the cameras
        vm, _ = camera_matrices(views["rotation"], views["translation"], views["focal"], 64, ds.distance)
        assert torch.allclose(vm, views["viewmats"], atol=1e-5)
    assert torch.equal(ds.sample(0).target_images, s.target_images)        # reproducible
    assert not torch.equal(ds.sample(1).target_images, s.target_images)


def test_loader_feeds_the_objective(capture):
    import dataclasses
    from ffavatar.nn import FFAvatarModel, get_preset
    ds = TrackedCaptures(capture["root"], capture["model"], image_size=32, num_targets=2)
    net = FFAvatarModel.from_preset(dataclasses.replace(get_preset("tiny"), max_queries=128))
    from ffavatar_kernels.cross_attention import force_math_path
    with force_math_path():
        out = FewToManyObjective()(net, [ds.sample(0), ds.sample(1)])
    assert torch.isfinite(out.loss) and float(out.terms["params"]) > 0
    out.loss.backward()


def test_loader_errors_name_the_file_and_key(capture, tmp_path):
    m = capture["model"]
    with pytest.raises(CaptureError, match="transforms.json.*cannot read"):
        TrackedCaptures(tmp_path, m)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(CaptureError, match="not valid JSON"):
        TrackedCaptures(tmp_path, m)
    meta = json.loads((capture["root"] / "transforms.json").read_text())
    bad = dict(meta, frames=[{k: v for k, v in meta["frames"][0].items() if k != "flame_param_path"}])
    (tmp_path / "transforms.json").write_text(json.dumps(bad))
    with pytest.raises(CaptureError, match=r"frames\[0\]: missing key 'flame_param_path'"):
        TrackedCaptures(tmp_path, m)
    bad = dict(meta, frames=[dict(meta["frames"][0], transform_matrix=[[0.0] * 4] * 4)])
    (tmp_path / "transforms.json").write_text(json.dumps(bad))
    with pytest.raises(CaptureError, match="transform_matrix"):
        TrackedCaptures(tmp_path, m)
    # a broken parameter file and an image of the wrong size are reported when sampled
    sub = tmp_path / "s2"
    (sub / "flame_param").mkdir(parents=True)
    (sub / "images").mkdir()
    import shutil
    for d in ("images", "flame_param"):
        for f in (capture["root"] / d).iterdir():
            shutil.copy(f, sub / d / f.name)
    (sub / "transforms.json").write_text(json.dumps(dict(meta, frames=meta["frames"][:5])))
    (sub / "flame_param" / "00000.npz").write_bytes(b"junk")
    ds = TrackedCaptures(sub, m)
    with pytest.raises(CaptureError, match="00000.npz.*not a readable"):
        [ds.sample(i) for i in range(6)]
    np.savez(sub / "flame_param" / "00000.npz", rotation=np.zeros((1, 4)))
    with pytest.raises(CaptureError, match="'rotation' has 4 values"):
        [ds.sample(i) for i in range(6)]
    np.savez(sub / "flame_param" / "00000.npz", expr=np.full((1, 10), np.nan))
    with pytest.raises(CaptureError, match="'expr' holds NaN"):
        [ds.sample(i) for i in range(6)]


def test_training_on_captures_with_a_flame_file(capture, tmp_path):
    """The loop trains on capture folders with the FLAME model of a file; the network, the data and
    the checkpoint are bound to it (a checkpoint of another FLAME needs that FLAME to load)."""
    from ffavatar.flame import flame_fingerprint, save_flame_npz, synthetic_fingerprint
    from ffavatar.nn import FFAvatarModel
    from ffavatar.train import TrainConfig, load_checkpoint, train
    m = capture["model"]
    flame_path = tmp_path / "flame.npz"
    save_flame_npz(m, flame_path)            # the capture was tracked with this model
    cfg = TrainConfig.from_dict({
        "preset": "tiny", "preset_overrides": {"max_queries": 128}, "steps": 2, "batch": 1, "warmup": 1,
        "eval_every": 2, "eval_samples": 1, "eval_views": 2, "ckpt_every": 0, "out": str(tmp_path / "run"),
        "progress": False, "threads": 1, "flame": str(flame_path), "captures": [str(capture["root"])],
        "data": {"image_size": 24, "num_targets": 2}})
    res = train(cfg)
    assert res["step"] == 2 and all(math.isfinite(x) for x in res["losses"])
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    ev = [r for r in lines if "eval/psnr" in r]
    assert ev and "eval/psnr_mean_head" not in ev[0]          # no mean-head baseline for captures
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").step == 2
    # binding: a model of another FLAME records its fingerprint and needs that FLAME back
    other = synthetic_head()
    other.v_template = other.v_template * 1.01
    net = FFAvatarModel.from_preset("tiny", flame=other)
    assert net.flame_fingerprint == flame_fingerprint(other) != synthetic_fingerprint()
    w = tmp_path / "w.safetensors"
    net.save_pretrained(w)
    with pytest.raises(ValueError, match="bound to a FLAME model with fingerprint"):
        FFAvatarModel.from_pretrained(w)
    back = FFAvatarModel.from_pretrained(w, flame=other)
    avatar = back.reconstruct(torch.rand(1, 3, 56, 56))
    assert avatar.flame_fingerprint == flame_fingerprint(other)
    with pytest.raises(ValueError, match="bound to the built-in synthetic head"):
        FFAvatarModel.from_pretrained(_save_plain(tmp_path), flame=other)


def _save_plain(tmp_path):
    from ffavatar.nn import FFAvatarModel
    p = tmp_path / "plain.safetensors"
    FFAvatarModel.from_preset("tiny").save_pretrained(p)
    return p
