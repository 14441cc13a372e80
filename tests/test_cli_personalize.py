"""`ffavatar personalize AVATAR IMAGES... --cameras c.json --out b.ffavatar` (CPU, tiny)."""
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ffavatar.avatar import Avatar
from ffavatar.cli import main
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at

SIZE = 32


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("pers")
    m = synthetic_head()
    a = Avatar.from_canonical(m, canonical_gaussians(m, levels=0))
    a.save(str(d / "a.ffavatar"))
    target = Avatar.from_canonical(m, canonical_gaussians(m, levels=0))
    target.colors = (target.colors + torch.tensor([0.15, -0.05, 0.05])).clamp(0, 1)
    eye = torch.tensor([[0.3, 0.03, 0.7], [-0.3, 0.03, 0.7]])
    vm = look_at(eye, torch.tensor([0.0, -0.02, 0.0]).expand_as(eye))
    K = intrinsics(SIZE, SIZE, 22.0)
    with torch.no_grad():
        img = target.render(m, vm, K, SIZE, SIZE)                            # [2,H,W,3]
    paths = []
    for i, x in enumerate(img):
        p = d / f"v{i}.png"
        iio.imwrite(p, (x.numpy() * 255 + 0.5).astype(np.uint8))
        paths.append(str(p))
    views = [{"viewmat": vm[i].tolist(), "K": K.tolist()} for i in range(2)]
    (d / "c.json").write_text(json.dumps({"views": views}))
    return d, paths


def test_personalize_fits_and_writes(case):
    d, paths = case
    out = d / "b.ffavatar"
    assert main(["personalize", str(d / "a.ffavatar"), *paths, "--cameras", str(d / "c.json"), "--out", str(out),
                 "--steps", "5", "--device", "cpu", "--no-progress"]) == 0
    b = Avatar.load(str(out), model=synthetic_head())
    assert b.residuals is not None and b.residuals.colors.abs().max().item() > 0


@pytest.mark.parametrize("edit, why", [
    (lambda v: v[:1], "has 1 views, but 2 images"),
    (lambda v: [{"K": v[0]["K"]}, v[1]], "has no 'viewmat'"),
    (lambda v: [dict(v[0], K=[[1, 0], [0, 1]]), v[1]], "expected shape [3, 3]"),
    (lambda v: [dict(v[0], expression=[0.0] * 100), v[1]], "for every view"),
])
def test_personalize_bad_cameras(case, edit, why, capsys):
    d, paths = case
    views = json.loads((d / "c.json").read_text())["views"]
    bad = d / "bad.json"
    bad.write_text(json.dumps({"views": edit(views)}))
    out = d / "never.ffavatar"
    with pytest.raises(SystemExit, match="ffavatar personalize") as info:
        main(["personalize", str(d / "a.ffavatar"), *paths, "--cameras", str(bad), "--out", str(out),
              "--steps", "5", "--device", "cpu", "--no-progress"])
    assert why in str(info.value) and not out.exists()


def test_personalize_not_json(case):
    d, paths = case
    (d / "x.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not readable JSON"):
        main(["personalize", str(d / "a.ffavatar"), *paths, "--cameras", str(d / "x.json"),
              "--out", str(d / "y.ffavatar")])
