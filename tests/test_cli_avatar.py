"""`ffavatar reconstruct / animate / export / info / bench`: success paths (files exist and read back)
and failure paths (one line naming the command, non-zero exit, no traceback, no output file).

Mostly in-process (`main([...])`, fast); a few through `python -m ffavatar` for the real process
behaviour. Tiny sizes: the `tiny` network preset, 32-pixel frames, a few frames."""
import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

from test_cli import _run, needs_kernels  # one helper set for the CLI tests


def _main(capsys, *argv):
    """main(argv) in-process -> (exit status, stdout, stderr); a CliError / argparse exit is caught."""
    from ffavatar.cli import main
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        if isinstance(exc.code, str):          # CliError: Python would print it and exit 1
            print(exc.code, file=sys.stderr)
            rc = 1
        else:
            rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_failure(rc, err, command):
    assert rc not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ffavatar {command}: "), err
    assert "Traceback" not in err


def _no_leftovers(folder, allowed):
    """Nothing but ``allowed`` in ``folder``: no output, no temporary files of a failed write."""
    left = sorted(set(os.listdir(folder)) - set(allowed))
    assert not left, left


def _write_images(folder):
    import imageio.v3 as iio
    g = torch.Generator().manual_seed(0)
    rgba = (torch.rand(40, 52, 4, generator=g) * 255).to(torch.uint8).numpy()
    gray = (torch.rand(30, 30, generator=g) * 255).to(torch.uint8).numpy()
    paths = [os.path.join(folder, "front.png"), os.path.join(folder, "side.jpg")]
    iio.imwrite(paths[0], rgba)
    iio.imwrite(paths[1], gray)
    return paths


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with two photos, a reconstructed (tiny preset) avatar, the synthetic head's own
    avatar (visible, for videos that must change) and a motion file."""
    from ffavatar import Avatar, canonical_gaussians, save_motion, synthetic_head
    from ffavatar.cli import main
    d = tmp_path_factory.mktemp("cli_avatar")
    images = _write_images(str(d))
    rec = d / "rec.ffavatar"
    assert main(["reconstruct", *images, "--out", str(rec), "--preset", "tiny", "--device", "cpu"]) == 0
    m = synthetic_head()
    head = d / "head.ffavatar"
    Avatar.from_canonical(m, canonical_gaussians(m, levels=1)).save(head)
    T = 5
    t = torch.linspace(0, 1, T)[:, None]
    pose = torch.zeros(T, 15)
    pose[:, 6] = 0.4 * t[:, 0]                                      # open the jaw
    pose[:, 4] = 0.3 * t[:, 0]                                      # turn the head (neck yaw)
    motion = d / "m.npz"
    save_motion(motion, 1.5 * t.expand(T, 20), pose, 0.01 * t.expand(T, 3), fps=30.0)
    return {"dir": d, "images": images, "rec": rec, "head": head, "motion": motion, "T": T}


# ---------------------------------------------------------------------------------- reconstruct
@needs_kernels
def test_reconstruct_writes_a_loadable_avatar(work, capsys, tmp_path):
    from ffavatar import Avatar, synthetic_head
    out = tmp_path / "a.ffavatar"
    rc, stdout, err = _main(capsys, "reconstruct", *work["images"], "--out", out, "--preset", "tiny",
                            "--device", "cpu")
    assert rc == 0, err
    assert "2 views" in stdout and "512 Gaussians" in stdout and "a.ffavatar" in stdout
    assert err.count("randomly initialised") == 1 and len(err.strip().splitlines()) == 1   # said once, one line
    a = Avatar.load(out, model=synthetic_head())
    assert a.num_gaussians == 512 and a.num_views == 2 and a.image_size == 56
    assert torch.isfinite(a.means).all()


def test_read_images_conversions(tmp_path):
    """Alpha dropped, grayscale -> 3 equal channels, 16-bit scaled, different sizes -> common squares."""
    import imageio.v3 as iio
    from ffavatar.cli.reconstruct import read_images
    rgba = np.random.randint(0, 256, (12, 16, 4), dtype=np.uint8)
    gray = np.random.randint(0, 256, (12, 16), dtype=np.uint8)
    g16 = np.random.randint(0, 65536, (12, 16), dtype=np.uint16)
    for name, a in (("rgba.png", rgba), ("gray.png", gray), ("g16.png", g16)):
        iio.imwrite(tmp_path / name, a)
    x = read_images([str(tmp_path / n) for n in ("rgba.png", "gray.png", "g16.png")])
    assert x.shape == (3, 3, 12, 16) and x.dtype == torch.uint8
    assert torch.equal(x[0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert torch.equal(x[1], torch.from_numpy(gray)[None].expand(3, 12, 16))
    want16 = torch.from_numpy((g16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8))
    assert (x[2].int() - want16[None].int()).abs().max() <= 1
    iio.imwrite(tmp_path / "big.png", np.random.randint(0, 256, (30, 20, 3), dtype=np.uint8))
    y = read_images([str(tmp_path / "rgba.png"), str(tmp_path / "big.png")])
    assert y.shape == (2, 3, 12, 12) and y.dtype == torch.uint8


@needs_kernels
def test_reconstruct_with_weights(work, capsys, tmp_path):
    from ffavatar import Avatar, FFAvatarModel
    w = tmp_path / "w.safetensors"
    FFAvatarModel.from_preset("tiny").save_pretrained(w)
    out = tmp_path / "b.ffavatar"
    rc, stdout, err = _main(capsys, "reconstruct", work["images"][0], "--out", out, "--weights", w)
    assert rc == 0, err
    assert "randomly initialised" not in err and "weights" in stdout
    assert Avatar.load(out).num_views == 1


@pytest.mark.parametrize("case", ["missing_image", "bad_image", "wrong_ext", "no_folder", "missing_weights",
                                  "bad_weights", "weights_and_preset", "text_as_image"])
def test_reconstruct_failures(work, capsys, tmp_path, case):
    img = work["images"][0]
    out = tmp_path / "x.ffavatar"
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    args = {"missing_image": [img, tmp_path / "none.png", "--out", out],
            "bad_image": [tmp_path / "junk.png", "--out", out],
            "text_as_image": [img, work["motion"], "--out", out],
            "wrong_ext": [img, "--out", tmp_path / "x.ply"],
            "no_folder": [img, "--out", tmp_path / "no" / "x.ffavatar"],
            "missing_weights": [img, "--out", out, "--weights", tmp_path / "none.safetensors"],
            "bad_weights": [img, "--out", out, "--weights", tmp_path / "junk.safetensors"],
            "weights_and_preset": [img, "--out", out, "--weights", tmp_path / "junk.safetensors",
                                   "--preset", "tiny"]}[case]
    extra = ["--device", "cpu"] if "--weights" in args else ["--preset", "tiny"]
    rc, stdout, err = _main(capsys, "reconstruct", *args, *extra)
    _assert_one_line_failure(rc, err, "reconstruct")
    want = {"missing_image": "none.png", "bad_image": "junk.png", "text_as_image": "m.npz", "wrong_ext": ".ffavatar",
            "no_folder": "does not exist", "missing_weights": "none.safetensors", "bad_weights": "--weights",
            "weights_and_preset": "not both"}[case]
    assert want in err
    assert "randomly initialised" not in err                 # failed before the work
    _no_leftovers(tmp_path, {"junk.png", "junk.safetensors"})


# ---------------------------------------------------------------------------------- animate
def _frames(path):
    import imageio.v3 as iio
    f = iio.imread(path)
    f = f[None] if f.ndim == 3 else f
    return f[..., :3].astype(np.float32)


@needs_kernels
def test_animate_motion_to_gif(work, capsys, tmp_path):
    out = tmp_path / "v.gif"
    rc, stdout, err = _main(capsys, "animate", work["head"], "--motion", work["motion"], "--out", out,
                            "--size", 32, "--device", "cpu", "--batch", 2)
    assert rc == 0, err
    assert f"{work['T']} frames, 32x32, device cpu" in stdout and "video at 30 fps" in stdout   # the file's fps
    f = _frames(out)
    assert f.shape == (work["T"], 32, 32, 3)
    assert f[0].std() > 5                                               # not blank
    assert np.abs(f[0] - f[-1]).mean() > 1.0                            # frames change over time
    _no_leftovers(tmp_path, {"v.gif"})


@needs_kernels
def test_animate_demo_motion_mp4_from_reconstruction(work, capsys, tmp_path):
    out = tmp_path / "v.mp4"
    rc, stdout, err = _main(capsys, "animate", work["rec"], "--out", out, "--size", 32, "--frames", 3,
                            "--device", "cpu", "--no-progress")
    assert rc == 0, err
    assert "3 frames of the demo's motion" in stdout
    assert _frames(out).shape == (3, 32, 32, 3)
    _no_leftovers(tmp_path, {"v.mp4"})


@pytest.mark.parametrize("case", ["missing_avatar", "corrupt_avatar", "not_avatar", "bad_motion", "too_many_frames",
                                  "wrong_ext", "unwritable", "bad_size", "bad_fps"])
def test_animate_failures(work, capsys, tmp_path, case):
    corrupt = tmp_path / "c.ffavatar"
    data = bytearray(open(work["head"], "rb").read())
    data[len(data) // 2] ^= 0x40
    corrupt.write_bytes(bytes(data))
    out = tmp_path / "v.mp4"
    head, motion = work["head"], work["motion"]
    args = {"missing_avatar": [tmp_path / "none.ffavatar", "--out", out],
            "corrupt_avatar": [corrupt, "--out", out],
            "not_avatar": [motion, "--out", out],
            "bad_motion": [head, "--motion", work["images"][0], "--out", out],
            "too_many_frames": [head, "--motion", motion, "--frames", 99, "--out", out],
            "wrong_ext": [head, "--out", tmp_path / "v.avi"],
            "unwritable": [head, "--out", "/proc/v.mp4"],
            "bad_size": [head, "--out", out, "--size", 8],
            "bad_fps": [head, "--out", out, "--fps", "nan"]}[case]
    rc, stdout, err = _main(capsys, "animate", *args, "--device", "cpu")
    _assert_one_line_failure(rc, err, "animate")
    want = {"missing_avatar": "no such avatar file", "corrupt_avatar": "checksum", "not_avatar": "m.npz",
            "bad_motion": "front.png", "too_many_frames": "only 5 frames", "wrong_ext": ".mp4 or .gif",
            "unwritable": "cannot write", "bad_size": "--size", "bad_fps": "--fps"}[case]
    assert want in err
    assert "Gaussians" not in stdout                                     # before the work
    _no_leftovers(tmp_path, {"c.ffavatar"})


@needs_kernels
@pytest.mark.parametrize("command", ["animate", "demo"])
def test_failure_while_writing_leaves_no_file(work, capsys, tmp_path, monkeypatch, command):
    """A failure after the video was started: one line, exit 1, neither the output nor a temp file."""
    import ffavatar.render as R
    real = R.VideoWriter

    class Failing(real):
        def write(self, frame):
            if self.frames == 1:
                raise OSError(28, "No space left on device")
            super().write(frame)
    monkeypatch.setattr(R, "VideoWriter", Failing)
    out = tmp_path / "v.mp4"
    (tmp_path / "v.mp4").write_bytes(b"old")                              # an older file stays as it was
    extra = [work["head"], "--motion", work["motion"]] if command == "animate" else ["--frames", 3, "--no-progress"]
    rc, stdout, err = _main(capsys, command, *extra, "--out", out, "--size", 16, "--device", "cpu", "--batch", 1)
    _assert_one_line_failure(rc, err, command)
    assert "No space left" in err
    assert out.read_bytes() == b"old"
    _no_leftovers(tmp_path, {"v.mp4"})


@needs_kernels
def test_animate_other_flame_model(capsys, tmp_path):
    """An avatar of another FLAME model: a clear error naming --flame; with --flame it animates."""
    from ffavatar import Avatar, canonical_gaussians, save_flame_npz, synthetic_head
    m = synthetic_head()
    other = dataclasses.replace(m, v_template=m.v_template * 1.05)
    save_flame_npz(other, tmp_path / "flame.npz")
    Avatar.from_canonical(other, canonical_gaussians(other, levels=0)).save(tmp_path / "o.ffavatar")
    out = tmp_path / "o.gif"
    rc, _, err = _main(capsys, "animate", tmp_path / "o.ffavatar", "--out", out, "--size", 16, "--frames", 2)
    _assert_one_line_failure(rc, err, "animate")
    assert "--flame" in err and not out.exists()
    rc, stdout, err = _main(capsys, "animate", tmp_path / "o.ffavatar", "--out", out, "--size", 16, "--frames", 2,
                            "--flame", tmp_path / "flame.npz", "--device", "cpu")
    assert rc == 0, err
    assert _frames(out).shape == (2, 16, 16, 3)


# ---------------------------------------------------------------------------------- export
@needs_kernels
def test_export_canonical_and_posed(work, capsys, tmp_path):
    from plyfile import PlyData
    from ffavatar import load_ply
    canon, posed = tmp_path / "c.ply", tmp_path / "p.ply"
    rc, stdout, err = _main(capsys, "export", work["head"], "--ply", canon)
    assert rc == 0, err
    assert "canonical frame" in stdout
    rc, stdout, err = _main(capsys, "export", work["head"], "--ply", posed, "--motion", work["motion"], "--frame", 4)
    assert rc == 0, err
    assert "frame 4 of" in stdout
    ply = PlyData.read(str(canon))
    names = ply["vertex"].data.dtype.names
    for p in ("x", "y", "z", "f_dc_0", "opacity", "scale_0", "rot_0", "rot_3"):
        assert p in names
    a, b = load_ply(canon), load_ply(posed)
    from ffavatar import Avatar
    n = Avatar.load(work["head"]).num_gaussians
    assert a.num_gaussians == b.num_gaussians == n == len(ply["vertex"].data)
    assert torch.isfinite(a.means).all() and (a.means - b.means).norm(dim=-1).max() > 1e-3   # posed moves
    torch.testing.assert_close(a.colors, b.colors)


@pytest.mark.parametrize("case", ["frame_without_motion", "frame_out_of_range", "negative_frame", "wrong_ext",
                                  "missing_avatar"])
def test_export_failures(work, capsys, tmp_path, case):
    out = tmp_path / "x.ply"
    args = {"frame_without_motion": [work["head"], "--ply", out, "--frame", 1],
            "frame_out_of_range": [work["head"], "--ply", out, "--motion", work["motion"], "--frame", 5],
            "negative_frame": [work["head"], "--ply", out, "--motion", work["motion"], "--frame", -1],
            "wrong_ext": [work["head"], "--ply", tmp_path / "x.splat"],
            "missing_avatar": [tmp_path / "none.ffavatar", "--ply", out]}[case]
    rc, stdout, err = _main(capsys, "export", *args)
    _assert_one_line_failure(rc, err, "export")
    want = {"frame_without_motion": "--frame needs --motion", "frame_out_of_range": "has 5 frames (0..4)",
            "negative_frame": ">= 0", "wrong_ext": ".ply", "missing_avatar": "none.ffavatar"}[case]
    assert want in err
    _no_leftovers(tmp_path, set())


# ---------------------------------------------------------------------------------- info, bench
@needs_kernels
def test_info_with_avatar(work, capsys, tmp_path):
    rc, stdout, err = _main(capsys, "info", work["rec"])
    assert rc == 0, err
    assert "torch.ops.ffavatar" in stdout                                 # the usual part is still there
    assert "format: ffavatar version 1" in stdout and "Gaussians: 512" in stdout
    assert "(the built-in synthetic head)" in stdout and "n_shape: 16, n_expr: 10" in stdout
    assert "views: 2" in stdout
    bad = tmp_path / "t.ffavatar"
    bad.write_bytes(open(work["rec"], "rb").read()[:100])
    rc, stdout, err = _main(capsys, "info", bad)
    _assert_one_line_failure(rc, err, "info")
    assert "truncated" in err and stdout == ""                            # checked before printing


@needs_kernels
def test_bench_prints_one_table(capsys):
    rc, stdout, err = _main(capsys, "bench", "--device", "cpu", "--size", 32, "--frames", 2, "--batch", 2,
                            "--preset", "tiny", "--views", 2)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("ffavatar") and "bench on cpu" in lines[0]
    assert lines[1].split()[:4] == ["stage", "work", "time", "rate"]
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(rows) == {"setup", "animate", "reconstruct"}
    assert "FPS" in rows["animate"] and "2 frames 32x32" in rows["animate"]
    assert "ms" in rows["reconstruct"] and "preset tiny, 2 views" in rows["reconstruct"]


@pytest.mark.parametrize("args, want", [(["--frames", "0"], "--frames"), (["--size", "4"], "--size"),
                                        (["--views", "0"], "--views")])
def test_bench_rejects_bad_args(capsys, args, want):
    rc, stdout, err = _main(capsys, "bench", *args)
    _assert_one_line_failure(rc, err, "bench")
    assert want in err and stdout == ""


def test_device_cuda_without_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for argv in (["bench", "--device", "cuda"], ["animate", "x.ffavatar", "--out", tmp_path / "v.mp4", "--device", "cuda"]):
        rc, _, err = _main(capsys, *argv)
        _assert_one_line_failure(rc, err, argv[0])
        assert "--device cuda" in err


# ---------------------------------------------------------------------------------- real processes
def test_usage_errors_are_one_line():
    r = _run("reconstruct")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "ffavatar reconstruct: the following arguments are required: IMAGES, --out "
        "(see `ffavatar reconstruct --help`)"]
    from ffavatar.cli import build_parser
    text = build_parser().format_help()
    for c in ("reconstruct", "animate", "export", "bench", "info", "demo"):
        assert c in text


def test_process_failures_one_line(work, tmp_path):
    """Through `python -m ffavatar`: exit 1, one line, no traceback, no output file."""
    r = _run("reconstruct", str(tmp_path / "none.png"), "--out", str(tmp_path / "a.ffavatar"))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"ffavatar reconstruct: IMAGES: no such image {str(tmp_path / 'none.png')!r}"]
    _no_leftovers(tmp_path, set())


@needs_kernels
def test_process_export_success(work, tmp_path):
    from ffavatar import load_ply
    r = _run("export", str(work["rec"]), "--ply", str(tmp_path / "r.ply"))
    assert r.returncode == 0, r.stderr
    assert load_ply(tmp_path / "r.ply").num_gaussians == 512


def test_reconstruct_uses_the_shipped_model(work, capsys, tmp_path, monkeypatch):
    import ffavatar.nn.pretrained as pretrained
    from ffavatar import Avatar, FFAvatarModel
    w = tmp_path / "shipped.safetensors"
    FFAvatarModel.from_preset("tiny").save_pretrained(w, dtype=torch.float16, metadata={"trained_on": "test"})
    monkeypatch.setattr(pretrained, "default_weights_path", lambda: str(w))
    net = FFAvatarModel.from_pretrained()                     # no path: the shipped weights
    assert net.pretrained and net.metadata["trained_on"] == "test" and net.preset.name == "tiny"
    assert next(net.parameters()).dtype == torch.float32      # fp16 file, float32 model
    out = tmp_path / "c.ffavatar"
    rc, stdout, err = _main(capsys, "reconstruct", work["images"][0], "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert "randomly initialised" not in err and "shipped default model" in stdout
    assert Avatar.load(out).num_gaussians == net.num_gaussians
    monkeypatch.setattr(pretrained, "default_weights_path", lambda: str(tmp_path / "gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="shipped default weights.*gone.safetensors"):
        FFAvatarModel.from_pretrained()
    rc, _, err = _main(capsys, "reconstruct", work["images"][0], "--out", tmp_path / "d.ffavatar", "--device", "cpu")
    assert rc == 0 and "lacks the shipped weights" in err


def test_demo_avatar_mode_shows_inputs_beside_the_animation(capsys, tmp_path, monkeypatch):
    import imageio.v3 as iio
    import ffavatar.nn.pretrained as pretrained
    from ffavatar import FFAvatarModel
    w = tmp_path / "shipped.safetensors"
    FFAvatarModel.from_preset("tiny").save_pretrained(w, metadata={"train_config": '{"data": {"image_size": 32}}'})
    monkeypatch.setattr(pretrained, "default_weights_path", lambda: str(w))
    out = tmp_path / "demo.mp4"
    rc, stdout, err = _main(capsys, "demo", "--frames", "3", "--size", "64", "--device", "cpu", "--out", out,
                            "--no-progress")
    assert rc == 0, err
    assert "unseen synthetic identity, 4 views of 32 px -> the shipped network" in stdout
    video = iio.imread(out)
    assert video.shape == (3, 64, 128, 3)                    # input views | animated avatar
    assert video[:, :, :64].std() > 5 and video[:, :, 64:].std() > 5
    monkeypatch.setattr(pretrained, "default_weights_path", lambda: str(tmp_path / "none"))
    rc, _, err = _main(capsys, "demo", "--mode", "avatar", "--out", tmp_path / "x.mp4")
    assert rc != 0 and "lacks" in err and len(err.strip().splitlines()) == 1
