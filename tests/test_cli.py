"""`ffavatar` CLI and the animation path (needs ffavatar_kernels' reference twins to render)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kernels_importable():
    try:
        import ffavatar_kernels  # noqa: F401
        from ffavatar_kernels.reference import flame_lbs, rasterize  # noqa: F401
        return True
    except Exception:
        return False


needs_kernels = pytest.mark.skipif(not _kernels_importable(), reason="ffavatar_kernels (reference twins) not importable")


def _run(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ffavatar", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout and "info" in r.stdout
    r = _run("demo", "--help")
    assert r.returncode == 0
    for opt in ("--out", "--frames", "--size", "--device", "--fps", "--batch", "--backend"):
        assert opt in r.stdout


@needs_kernels
def test_info():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "torch.ops.ffavatar" in r.stdout


def test_import_both():
    if not _kernels_importable():
        pytest.skip("ffavatar_kernels not importable yet")
    r = subprocess.run([sys.executable, "-c", "import ffavatar_kernels, ffavatar"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert r.returncode == 0, r.stderr


@needs_kernels
def test_demo_writes_video(tmp_path):
    import imageio.v3 as iio
    out = tmp_path / "d.mp4"
    r = _run("demo", "--frames", "4", "--size", "64", "--device", "cpu", "--out", str(out), "--no-progress",
             "--mode", "head")
    assert r.returncode == 0, r.stderr
    assert "4 frames, 64x64, device cpu" in r.stdout and "FPS" in r.stdout
    frames = iio.imread(out)
    if frames.ndim == 3:
        frames = frames[None]
    frames = frames[..., :3].astype(np.float32)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (64, 64)
    assert np.abs(frames[0] - frames[-1]).mean() > 1.0                   # frames change
    for f in frames:
        assert f.std() > 10                                               # not blank
        center = f[16:48, 16:48]
        assert center.mean() > 60 and (center[..., 0] > center[..., 2]).mean() > 0.5   # lit skin tones


@needs_kernels
def test_demo_default_reconstructs_with_the_shipped_model(tmp_path):
    import imageio.v3 as iio
    from ffavatar.nn.pretrained import has_default_weights
    if not has_default_weights():
        pytest.skip("no shipped default model in this installation")
    out = tmp_path / "d.mp4"
    r = _run("demo", "--frames", "4", "--size", "64", "--device", "cpu", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "the shipped network" in r.stdout and "4 frames, 64x64" in r.stdout
    frames = iio.imread(out)[..., :3].astype(np.float32)
    assert frames.shape == (4, 64, 128, 3)                                  # input views | animation
    assert np.abs(frames[0, :, :64] - frames[-1, :, :64]).mean() < 1.0      # the inputs stay
    assert np.abs(frames[0, :, 64:] - frames[-1, :, 64:]).mean() > 1.0      # the avatar moves
    assert frames[:, :, 64:].std() > 10                                     # not blank


def test_demo_rejects_bad_args(tmp_path):
    from ffavatar.cli import main
    with pytest.raises(SystemExit, match="--frames"):
        main(["demo", "--frames", "0", "--out", str(tmp_path / "x.mp4")])
    with pytest.raises(SystemExit, match=".mp4 or .gif"):
        main(["demo", "--out", str(tmp_path / "x.avi")])


def test_gif_writer(tmp_path):
    import imageio.v3 as iio
    from ffavatar.render.video import VideoWriter
    frames = torch.rand(3, 20, 30, 3)
    with VideoWriter(tmp_path / "a.gif", fps=10) as w:
        for f in frames:
            w.write(f)
    back = iio.imread(tmp_path / "a.gif")
    assert back.shape[0] == 3 and back.shape[1:3] == (20, 30)
    with pytest.raises(ValueError, match="frame size"):
        with VideoWriter(tmp_path / "b.mp4") as w:
            w.write(np.zeros((4, 6, 3), np.uint8))
            w.write(np.zeros((6, 6, 3), np.uint8))


@needs_kernels
def test_tiled_reference_matches_dense():
    from ffavatar_kernels.reference import rasterize as ref
    from ffavatar_kernels.reference.rasterize import rasterize_tiled
    from ffavatar.geometry.cameras import intrinsics, look_at
    B, N, W, H = 2, 300, 40, 24
    dt = torch.float64
    means = torch.randn(B, N, 3, dtype=dt) * 0.3
    quats = torch.randn(B, N, 4, dtype=dt)
    scales = torch.rand(B, N, 3, dtype=dt) * 0.05 + 0.005
    opac = torch.rand(B, N, dtype=dt)
    colors = torch.rand(B, N, 3, dtype=dt)
    eye = torch.tensor([[0.3, 0.2, 2.5], [-0.5, 0.0, 2.2]], dtype=dt)
    vm = look_at(eye, torch.zeros(B, 3, dtype=dt))[:, None]
    K = intrinsics(W, H, 40.0, dtype=dt).expand(B, 1, 3, 3)
    bg = torch.rand(B, 1, 3, dtype=dt)
    want, wa, _ = ref.rasterize(means, quats, scales, opac, colors, vm, K, W, H, backgrounds=bg)
    got, ga = rasterize_tiled(means, quats, scales, opac, colors, vm, K, W, H, bg, tile=8, tiles_per_call=5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ga, wa, rtol=1e-10, atol=1e-10)


@needs_kernels
def test_render_frames_shapes_and_empty():
    from ffavatar import canonical_gaussians, intrinsics, motion_script, orbit, render_frames, synthetic_head
    m = synthetic_head()
    g = canonical_gaussians(m, levels=1)
    betas, pose = motion_script(2)
    img = render_frames(m, g, betas, pose, orbit(2), intrinsics(24, 24), 24, 24)
    assert img.shape == (2, 24, 24, 3) and torch.isfinite(img).all()
    e = render_frames(m, g, betas[:0], pose[:0], orbit(0), intrinsics(24, 24), 24, 24)
    assert e.shape == (0, 24, 24, 3)


@pytest.mark.parametrize("opt,val", [("--fps", "0"), ("--fps", "-5"), ("--fps", "nan"), ("--fps", "inf"),
                                     ("--batch", "0"), ("--batch", "-2")])
def test_demo_rejects_bad_fps_and_batch(tmp_path, opt, val):
    from ffavatar.cli import main
    with pytest.raises(SystemExit, match=f"{opt} must be"):
        main(["demo", opt, val, "--device", "cpu", "--out", str(tmp_path / "x.mp4")])


def test_motion_script_fps():
    from ffavatar.flame.motion import motion_script
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            motion_script(3, 4, 4, fps=bad)
    with pytest.raises(TypeError, match="fps"):
        motion_script(3, 4, 4, fps="24")
    b24, p24 = motion_script(5, 4, 4, fps=24.0)
    b48, p48 = motion_script(10, 4, 4, fps=48.0)
    torch.testing.assert_close(p48[::2], p24)                 # same motion in seconds
    torch.testing.assert_close(b48[::2], b24)


def test_animator_fps_and_batch(monkeypatch):
    import ffavatar.render.animator as A
    from ffavatar.render import Animator, Backend
    from ffavatar.flame.gaussians import canonical_gaussians
    from ffavatar.flame.synthetic import synthetic_head
    m = synthetic_head()
    g = canonical_gaussians(m, levels=1)
    dummy = Backend(skin_gaussians=None, rasterize=None, description="dummy")
    with pytest.raises(ValueError, match="Animator: fps"):
        Animator(m, g, 16, backend=dummy, fps=0)
    anim = Animator(m, g, 16, backend=dummy, fps=12.0)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch"):
            anim.render_sequence(4, bad)                     # raised at the call, not at next()
    with pytest.raises(TypeError, match="batch"):
        anim.render_sequence(4, 2.0)
    seen = {}

    def fake_motion(*a, **kw):
        seen.update(kw)
        return torch.zeros(4, m.num_betas), torch.zeros(4, m.num_joints * 3)
    monkeypatch.setattr(A, "motion_script", fake_motion)
    monkeypatch.setattr(A, "render_frames", lambda model, gs, betas, *a, **k: torch.zeros(len(betas), 16, 16, 3))
    sizes = [x.shape[0] for x in anim.render_sequence(4, 3)]
    assert seen["fps"] == 12.0 and sizes == [3, 1]


def test_version():
    import ffavatar
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ffavatar {ffavatar.__version__}"


@pytest.mark.parametrize("out, why", [("/proc/x.mp4", "cannot write"), ("{tmp}/missing/x.mp4", "does not exist"),
                                      ("{tmp}", "must end in"), ("{tmp}/d.mp4/", "must end in")])
def test_demo_unwritable_output_fails_before_work(tmp_path, out, why):
    """One line on stderr, non-zero exit, no traceback, nothing written, checked before rendering."""
    out = out.format(tmp=tmp_path)
    r = _run("demo", "--frames", "2", "--size", "32", "--device", "cpu", "--out", out, "--no-progress")
    assert r.returncode != 0
    assert why in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Gaussians" not in r.stdout                          # failed before any work started
    assert not os.path.exists(os.path.join(str(tmp_path), "missing"))


def test_demo_output_folder_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    r = _run("demo", "--frames", "2", "--size", "32", "--device", "cpu", "--out", str(tmp_path / "f" / "x.mp4"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unexpected_error_is_one_line(monkeypatch, capsys):
    """An error inside a command is reported as one line with exit status 1, not a traceback."""
    from ffavatar.cli import demo, main

    def boom(args):
        raise RuntimeError("kernel exploded\nsecond line")
    monkeypatch.setattr(demo, "run", boom)
    assert main(["demo", "--out", "x.mp4"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "ffavatar demo: RuntimeError: kernel exploded"


def test_select_backend_asks_only_for_registered_ops():
    import ffavatar_kernels as fk
    from ffavatar_kernels.registry import OPS
    for public, compiled in OPS.items():
        for name in compiled:
            assert hasattr(torch.ops.ffavatar, name), f"{public}: {name} is not a registered op"
    with pytest.raises(ValueError, match="op expected one of"):
        fk.has_kernel("skin_gaussians_fwd", "cpu")
