"""Held-out quality of a trained model (by default the shipped one) on synthetic identities it never saw.

For each of ``--identities`` held-out identities (split ``"eval"``, indices from ``--first``, an index
range the training's own evaluation never draws): reconstruct from 4 input views, render the 8 target
views (novel cameras, expressions, jaw / eye / neck poses; ground-truth cameras and parameters, as
the few-to-many objective does) and report

- reconstruction PSNR / SSIM (whole image, black background included) and the mean-head avatar's
  PSNR on the same views (the baseline to beat by >= 5 dB);
- the estimator's errors on the input views: expression (mean absolute coefficient error of the
  coefficients drawn), jaw opening (deg), head rotation (geodesic deg), translation (mm), focal (%),
  beside the errors of an estimator that always answers zero (what it has learned shows as the gap);
- for the first ``--personalize`` identities: ``--steps`` steps of personalization of the
  reconstructed avatar on its 4 input views (ground-truth cameras and parameters, shape refined),
  then the PSNR of the same 8 target views.

    python scripts/eval_default.py                         # the shipped weights, GPU if present
    python scripts/eval_default.py --weights runs/x.safetensors --identities 4 --personalize 1 --steps 20
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

import _paths  # noqa: F401  (repository root on sys.path)
from ffavatar.avatar.personalize import Views, personalize
from ffavatar.avatar.ssim import psnr, ssim
from ffavatar.nn import FFAvatarModel
from ffavatar.train import SyntheticConfig, SyntheticHeads
from ffavatar.train.data_synthetic import flame_pose
from ffavatar_kernels.reference.flame_lbs import batch_rodrigues


def _geodesic_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[V,3] axis-angles -> [V] angle of R(a)^T R(b) in degrees."""
    R = batch_rodrigues(a.double()).transpose(-1, -2) @ batch_rodrigues(b.double())
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="FFAvatarModel checkpoint (default: the shipped model)")
    ap.add_argument("--identities", type=int, default=32)
    ap.add_argument("--first", type=int, default=100_000, help="first held-out index")
    ap.add_argument("--personalize", type=int, default=4, help="identities also personalized")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    dev = torch.device(args.device)
    model = FFAvatarModel.from_pretrained(args.weights, device=dev)
    cfg = json.loads(model.metadata.get("train_config", "{}"))
    data_cfg = SyntheticConfig(**cfg.get("data", {"image_size": 128}))
    data = SyntheticHeads(data_cfg, seed=int(cfg.get("seed", 0)), split="eval")
    flame, _ = data.head(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device {name}; weights {args.weights or 'shipped default'} (preset {model.preset.name}, "
          f"train step {model.metadata.get('train_step', '?')}); {args.identities} held-out identities "
          f"from index {args.first}, 4 input views, {data_cfg.num_targets} target views, {data_cfg.image_size} px")
    n_drawn = data_cfg.n_expr
    rec, rec_ssim, base, pers, pers0 = [], [], [], [], []
    err = {"expr_mae": [], "jaw_deg": [], "rotation_deg": [], "translation_mm": [], "focal_pct": []}
    # the same errors of an estimator that always answers zero (the mean of the data's ranges): the
    # baseline that shows how much the estimator has learned
    zero = {k: [] for k in ("expr_mae", "jaw_deg", "rotation_deg", "translation_mm")}
    t_rec = 0.0
    for j in range(args.identities):
        s = data.sample(args.first + j, device=dev, num_views=4)
        S = data_cfg.image_size
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        avatar = model.reconstruct(s.images)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_rec += time.perf_counter() - t0
        tgt = s.target
        truth = s.target_images.permute(0, 2, 3, 1)
        with torch.no_grad():
            pred = avatar.render(flame, tgt["viewmats"], tgt["Ks"], S, S, expression=tgt["expr"], pose=flame_pose(tgt))
            mean = data.identity(torch.zeros_like(s.shape), data.head(dev)[1].colors, dev)
            pm = mean.render(flame, tgt["viewmats"], tgt["Ks"], S, S, expression=tgt["expr"], pose=flame_pose(tgt))
        rec.append(float(psnr(pred, truth).mean()))
        rec_ssim.append(float(ssim(pred, truth)))
        base.append(float(psnr(pm, truth).mean()))
        # the estimator on the input views (the avatar keeps its per-view estimates)
        c = s.cond
        e_expr = avatar.expr[:, :n_drawn].float() - c["expr"][:, :n_drawn]
        err["expr_mae"].append(float(e_expr.abs().mean()))
        err["jaw_deg"].append(float(torch.rad2deg((avatar.jaw_pose[:, 0].float() - c["jaw_pose"][:, 0]).abs()).mean()))
        err["rotation_deg"].append(float(_geodesic_deg(avatar.rotation.float(), c["rotation"]).mean()))
        err["translation_mm"].append(float(1e3 * (avatar.translation.float() - c["translation"]).norm(dim=-1).mean()))
        zero["expr_mae"].append(float(c["expr"][:, :n_drawn].abs().mean()))
        zero["jaw_deg"].append(float(torch.rad2deg(c["jaw_pose"][:, 0].abs()).mean()))
        zero["rotation_deg"].append(float(_geodesic_deg(torch.zeros_like(c["rotation"]), c["rotation"]).mean()))
        zero["translation_mm"].append(float(1e3 * c["translation"].norm(dim=-1).mean()))
        f_gt = c["focal"] * (model.preset.image_size / S)
        err["focal_pct"].append(float(100 * ((avatar.Ks[:, 0, 0].float() - f_gt) / f_gt).abs().mean()))
        if j < args.personalize:
            held = Views(truth, tgt["viewmats"], tgt["Ks"], tgt["expr"], flame_pose(tgt))
            _, hist = personalize(avatar, flame, s.images, c["viewmats"], c["Ks"], c["expr"], flame_pose(c),
                                  steps=args.steps, refine_shape=16, progress=False, eval_views=held,
                                  eval_every=args.steps)
            pers0.append(hist.psnr[0][1])
            pers.append(hist.psnr[-1][1])
            print(f"  identity {j}: reconstruction {rec[-1]:.2f} dB, mean head {base[-1]:.2f} dB, "
                  f"personalized ({args.steps} steps, {hist.train_s:.2f} s) {pers[-1]:.2f} dB")
    avg = lambda x: sum(x) / max(1, len(x))  # noqa: E731
    out = {"device": name, "identities": args.identities, "psnr": avg(rec), "ssim": avg(rec_ssim),
           "psnr_mean_head": avg(base), "psnr_gain": avg(rec) - avg(base),
           "psnr_personalized": avg(pers) if pers else None, "personalized_identities": len(pers),
           "personalize_steps": args.steps, "reconstruct_ms": 1e3 * t_rec / args.identities,
           **{k: avg(v) for k, v in err.items()}, "zero_estimator": {k: avg(v) for k, v in zero.items()}}
    print(f"\nreconstruction PSNR {out['psnr']:.2f} dB (SSIM {out['ssim']:.3f}); mean head {out['psnr_mean_head']:.2f} dB; "
          f"gain {out['psnr_gain']:.2f} dB (targets: >= 25 dB, >= 5 dB gain)")
    if pers:
        print(f"after {args.steps} personalization steps: {out['psnr_personalized']:.2f} dB over {len(pers)} identities "
              f"(target >= 30 dB)")
    print("estimator on the input views: " + ", ".join(f"{k} {out[k]:.3g}" for k in err))
    print("  an estimator answering zero: " + ", ".join(f"{k} {v:.3g}" for k, v in out["zero_estimator"].items()))
    print(f"reconstruct: {out['reconstruct_ms']:.1f} ms per identity (4 views, {name})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if not math.isfinite(out["psnr"]):
        raise SystemExit("eval_default: PSNR is not finite")


if __name__ == "__main__":
    main()
