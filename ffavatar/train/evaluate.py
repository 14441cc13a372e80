"""Held-out evaluation: PSNR / SSIM of the target views of held-out synthetic identities (their own
seed stream, split ``"eval"``), the mean-head avatar's PSNR on the same views as the baseline to
beat, and a picture grid PNG (row 1: the inputs, row 2: targets, row 3: predictions)."""
from __future__ import annotations

import os
import warnings

import torch

from ffavatar.avatar.ssim import psnr, ssim

from .data_synthetic import SyntheticHeads, flame_pose
from .objective import FewToManyObjective, unwrap

__all__ = ["evaluate", "picture_grid"]


def picture_grid(inputs: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """inputs [k,3,H,W], targets / preds [M,H,W,3] -> uint8 [3H, columns*W, 3] (blank cells black)."""
    H, W = targets.shape[1:3]
    rows = []
    for imgs in (inputs.permute(0, 2, 3, 1), targets, preds):
        imgs = imgs[:columns].float().cpu().clamp(0, 1)
        pad = torch.zeros(columns - imgs.shape[0], H, W, 3)
        rows.append(torch.cat(list(torch.cat([imgs, pad], 0)), 1))
    return (torch.cat(rows, 0) * 255).round().to(torch.uint8)


@torch.no_grad()
def evaluate(model, data: SyntheticHeads, objective: FewToManyObjective, *, samples: int, views: int,
             step: int, out_dir: str | None = None) -> dict:
    """Metrics over ``samples`` held-out identities with ``views`` conditioning views each; writes
    ``out_dir/eval_<step>.png`` (first identity) when ``out_dir`` is given."""
    base = unwrap(model)
    was_training = base.training
    base.eval()
    dev = base.device
    flame = objective.flame(dev)
    p_sum = s_sum = p_mean = 0.0
    n_img = 0
    try:
        for i in range(samples):
            s = data.sample(i, device=dev, num_views=views)
            res = objective(base, [s])
            pred = res.predictions[0].float()
            truth = s.target_images.permute(0, 2, 3, 1).float()
            p_sum += float(psnr(pred, truth).sum())
            s_sum += float(ssim(pred, truth)) * pred.shape[0]
            if hasattr(data, "identity"):          # synthetic data: the mean head as the baseline
                mean_head = data.identity(torch.zeros_like(s.shape), data.head(dev)[1].colors, dev)
                H, W = truth.shape[1:3]
                base_img = mean_head.render(flame, s.target["viewmats"], s.target["Ks"], W, H,
                                            expression=s.target["expr"], pose=flame_pose(s.target),
                                            background=objective.background)
                p_mean += float(psnr(base_img, truth).sum())
            n_img += pred.shape[0]
            if i == 0 and out_dir is not None:
                grid = picture_grid(s.images, truth, pred, columns=max(views, min(8, pred.shape[0])))
                _write_grid(os.path.join(out_dir, f"eval_{step:07d}.png"), grid)
    finally:
        base.train(was_training)
    out = {"eval/psnr": p_sum / n_img, "eval/ssim": s_sum / n_img}
    if hasattr(data, "identity"):
        out["eval/psnr_mean_head"] = p_mean / n_img
    return out


def _write_grid(path: str, grid: torch.Tensor) -> None:
    """Write the evaluation picture; a machine that cannot (no PNG writer installed, a full disk)
    gets a warning, not a stopped training run: the figures are already in the metrics."""
    try:
        import imageio.v2 as imageio
        imageio.imwrite(path, grid.numpy())
    except Exception as e:  # noqa: BLE001 - any writer failure: warn and go on
        warnings.warn(f"evaluation picture {path} not written: {type(e).__name__}: {e}", RuntimeWarning)
