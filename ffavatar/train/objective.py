"""The few-to-many objective (the FFAvatar paper's training signal).

Per identity: reconstruct an avatar from its k conditioning views (``FFAvatarModel.forward``, the
differentiable path: Gaussian attributes + the FLAME estimate), then

- **targets** (the avatar branch): render the M target views with *their* expressions, poses and
  cameras through our skinning and rasterizer and compare with the ground truth:
  ``(1 - lam) L1 + lam (1 - SSIM)``, lam = 0.2 (:func:`ffavatar.avatar.ssim.l1_ssim_loss`), plus
  ``perceptual_weight * perceptual(pred, target)`` when the user gives a perceptual module (LPIPS
  needs pretrained weights: never downloaded here);
- **inputs** (the estimator, photometric): render the k conditioning views with the *estimated*
  expression, pose and camera of each view, same loss against the inputs;
- **parameters** (the estimator, supervised where the sample has ground truth): mean squared error
  of expression, jaw / eyes / neck pose, head rotation, translation (in units of 0.1 m, the
  estimator's scale), log focal length and the shape coefficients the model predicts.

Images are compared channels-last ([V,H,W,3]) as the renderer returns them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ffavatar.avatar.ssim import l1_ssim_loss
from ffavatar.flame import FlameModel, synthetic_head
from ffavatar.render import Backend

from .data_synthetic import SyntheticSample, flame_pose

__all__ = ["LossWeights", "FewToManyObjective", "ObjectiveOutput", "unwrap"]


@dataclass
class LossWeights:
    """Weights of the loss terms (0 turns a term off). ``ssim_lambda``: the SSIM share of the
    photometric loss; ``perceptual``: used only when a perceptual module is given."""
    target: float = 1.0
    inputs: float = 0.5
    params: float = 0.1
    ssim_lambda: float = 0.2
    perceptual: float = 0.0


@dataclass
class ObjectiveOutput:
    """``loss`` (0-dim, differentiable), ``terms`` (detached 0-dim tensors per term) and the target
    renders ``predictions`` (per sample [M,H,W,3], detached) for evaluation."""
    loss: torch.Tensor
    terms: dict
    predictions: list


def unwrap(model: nn.Module) -> nn.Module:
    """The FFAvatarModel inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = min(a.shape[-1], b.shape[-1])
    return (a[..., :n].float() - b[..., :n].float()).pow(2).mean()


class FewToManyObjective:
    """``objective(model, samples)`` -> :class:`ObjectiveOutput` for a batch of samples
    (:class:`~ffavatar.train.data_synthetic.SyntheticSample` or anything with the same fields:
    ``images``, ``target_images``, ``target``, and optionally ``cond`` / ``shape`` ground truth).

    Args:
        weights: :class:`LossWeights`.
        perceptual: optional module ``(pred [B,3,H,W], target [B,3,H,W]) -> loss`` (e.g. an LPIPS
            with the user's weights); ignored unless ``weights.perceptual > 0``.
        flame: the FLAME model the avatars are bound to (default: the synthetic head).
        background: RGB of the renders (the data's background).
        backend: the skinning / rasterization :class:`~ffavatar.render.Backend` of the renders
            (default: chosen for the device; benchmarks pass a comparator's).
    """

    def __init__(self, weights: Optional[LossWeights] = None, perceptual: Optional[Callable] = None,
                 flame: Optional[FlameModel] = None, background: Sequence[float] = (0.0, 0.0, 0.0),
                 backend: Optional[Backend] = None):
        self.backend = backend
        self.weights = weights or LossWeights()
        self.perceptual = perceptual
        self._flame = flame
        self._flames: dict = {}
        self.background = tuple(float(c) for c in background)

    def flame(self, device) -> FlameModel:
        key = str(torch.device(device))
        if key not in self._flames:
            self._flames[key] = (self._flame or synthetic_head()).to(device)
        return self._flames[key]

    def photometric(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [V,H,W,3] -> L1 + SSIM (+ perceptual) loss."""
        w = self.weights
        loss = l1_ssim_loss(pred, target, lam=w.ssim_lambda)
        if self.perceptual is not None and w.perceptual > 0:
            loss = loss + w.perceptual * self.perceptual(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2))
        return loss

    def __call__(self, model: nn.Module, samples: Sequence[SyntheticSample]) -> ObjectiveOutput:
        base = unwrap(model)
        dev = base.device
        w = self.weights
        flame = self.flame(dev)
        attrs, est = model([s.images.to(dev) for s in samples])       # differentiable forward
        terms = {k: torch.zeros((), device=dev) for k in ("target", "inputs", "params")}
        preds = []
        for b, s in enumerate(samples):
            avatar = base.to_avatar(attrs, est, b)                         # differentiable (no detach)
            H, W = s.target_images.shape[-2:]
            tgt = {k: v.to(dev) for k, v in s.target.items()}
            pred = avatar.render(flame, tgt["viewmats"], tgt["Ks"], W, H, expression=tgt["expr"],
                                 pose=flame_pose(tgt), background=self.background, backend=self.backend)
            truth = s.target_images.to(dev).permute(0, 2, 3, 1)
            terms["target"] = terms["target"] + self.photometric(pred, truth)
            preds.append(pred.detach())
            views = est.avatar(b)
            if w.inputs > 0:
                terms["inputs"] = terms["inputs"] + self._inputs(avatar, views, s, flame, base.preset.image_size)
            if w.params > 0 and getattr(s, "cond", None) is not None:
                terms["params"] = terms["params"] + self._params(views, s, base.preset.image_size)
        n = len(samples)
        terms = {k: v / n for k, v in terms.items()}
        loss = w.target * terms["target"] + w.inputs * terms["inputs"] + w.params * terms["params"]
        # every estimator output takes part in the graph (DDP without find_unused_parameters)
        loss = loss + 0.0 * sum(t.float().sum() for t in (est.shape, est.focal))
        return ObjectiveOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()}, predictions=preds)

    def _inputs(self, avatar, views: dict, s, flame: FlameModel, net_size: int) -> torch.Tensor:
        """The conditioning views re-rendered with the estimated parameters and cameras."""
        H, W = s.images.shape[-2:]
        K = views["Ks"].clone()
        K[:, :2] = K[:, :2] * (W / net_size)          # square inputs: preprocess only rescales
        pred = avatar.render(flame, views["viewmats"], K, W, H, expression=views["expr"],
                             pose=flame_pose(views), background=self.background, backend=self.backend)
        return self.photometric(pred, s.images.to(pred.device).permute(0, 2, 3, 1))

    def _params(self, views: dict, s, net_size: int) -> torch.Tensor:
        """Parameter supervision against the sample's ground truth (``cond``, ``shape``)."""
        gt = {k: v.to(views["expr"].device) for k, v in s.cond.items()}
        W = s.images.shape[-1]
        loss = _mse(views["expr"], gt["expr"])
        for k in ("jaw_pose", "eyes_pose", "neck_pose", "rotation"):
            loss = loss + _mse(views[k], gt[k])
        loss = loss + _mse(views["translation"] / 0.1, gt["translation"] / 0.1)
        f_gt = gt["focal"] * (net_size / W)
        loss = loss + (torch.log(views["focal"].float()) - torch.log(f_gt.float())).pow(2).mean()
        if getattr(s, "shape", None) is not None:
            loss = loss + _mse(views["shape"][None], s.shape.to(views["shape"].device)[None])
        return loss
