"""Personalization: fit an avatar's per-Gaussian residuals (and optionally per-view expressions) to
photos of the person (MODEL.md section 3, issue 17 item 4).

The residuals (:class:`ffavatar.avatar.Residuals`: offsets, axis-angle rotations, log-scale factors,
opacity logit shifts, colour shifts) start from the avatar's own (zeros when it has none) and are
optimized, optionally with per-view expression corrections and the leading shape coefficients of
the identity (``refine_shape``: a mean head fitted to another person differs most by its shape),
with Adam (``fused=True`` on CUDA, ``foreach=True`` on CPU) against the input views with
3DGS's photometric loss ``(1 - w) L1 + w (1 - SSIM)`` (:mod:`ffavatar.avatar.ssim`, w = 0.2). Every
step renders all V views (one frame per view: its expression and pose, its camera) through the
compiled ``skin_gaussians`` / ``rasterize`` ops (or the reference twins where the build has no
kernels), both differentiable on CPU and CUDA. Learning rates decay exponentially from ``lr`` to
``lr * lr_decay`` over the run.

The step is not CUDA-graph captured (the rasterizer's bin waits on the host for its intersection
count, so the step cannot be captured today); the loop avoids host syncs of its own: the losses stay
on the device until the end, the progress bar reads one every ``log_every`` steps.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from ..flame import FlameModel
from ..render import Backend, select_backend
from .residuals import Residuals

AvatarLike = Any  # an ffavatar.avatar.Avatar (not imported here: avatar.py imports this module)
from .ssim import l1_ssim_loss

__all__ = ["personalize", "Views", "History", "DEFAULT_LR"]

# Adam learning rates per parameter (per step, at the start of the run; units of the residual):
# metres, radians, log-scale, opacity logit, RGB, expression and shape coefficients.
DEFAULT_LR = {"offsets": 2e-4, "rotations": 5e-3, "scales": 5e-3, "opacities": 2e-2, "colors": 5e-3,
              "expression": 2e-2, "shape": 1e-1}


@dataclass
class Views:
    """Posed views of the person: V images with their cameras and FLAME parameters.

    Attributes:
        images: [V,H,W,3] or [V,3,H,W], float in [0,1] (or uint8).
        viewmats: [V,4,4] world-to-camera (OpenCV / gsplat).
        Ks: [V,3,3] or [3,3] intrinsics at the images' size.
        expression: [V,n] (n <= the model's n_expr), [n] (every view) or None (zeros).
        pose: [V,J*3], [V,J,3] or [V,J,3,3] (FLAME's joint order), one frame's form, or None (zeros).
    """
    images: torch.Tensor
    viewmats: torch.Tensor
    Ks: torch.Tensor
    expression: Optional[torch.Tensor] = None
    pose: Optional[torch.Tensor] = None


@dataclass
class History:
    """What :func:`personalize` did.

    Attributes:
        loss: [(step, loss)] for every step (1-based: the loss of the render before step's update).
        psnr: [(step, dB)] on the held-out views every ``eval_every`` steps, step 0 (before) and the
            last step included; mean of the per-view PSNRs. Empty without ``eval_views``.
        expression: [V,n_expr] the refined per-view expressions (``refine_expression``), else None.
        train_s: wall seconds of the steps (evaluations excluded; CUDA synchronized).
        steps: the number of steps run.
    """
    loss: list = field(default_factory=list)
    psnr: list = field(default_factory=list)
    expression: Optional[torch.Tensor] = None
    train_s: float = 0.0
    steps: int = 0


# ------------------------------------------------------------------------------------ validation
def _check_tensor(x, name: str, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"personalize: {name} expected a torch.Tensor, got {type(x).__name__}")
    if x.device != device:
        raise ValueError(f"personalize: {name} is on {x.device}, but the model is on {device}; "
                         f"move it with .to({str(device)!r})")
    return x


def _images(x, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[V,H,W,3] float in [0,1] from [V,H,W,3] / [V,3,H,W] float in [0,1] or uint8."""
    x = _check_tensor(x, name, device)
    if x.dim() != 4 or not (x.shape[-1] == 3 or x.shape[1] == 3):
        raise ValueError(f"personalize: {name} expected shape [V,H,W,3] or [V,3,H,W], got {list(x.shape)}")
    if x.shape[-1] != 3:
        x = x.permute(0, 2, 3, 1)
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"personalize: {name} is empty: {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    if not x.is_floating_point():
        raise TypeError(f"personalize: {name} expected a floating dtype (values in [0,1]) or uint8, got {x.dtype}")
    x = x.to(dtype)
    lo, hi, finite = torch.stack([x.min(), x.max(), torch.isfinite(x).all().to(dtype)]).tolist()  # one sync
    if not finite:
        raise ValueError(f"personalize: {name} has NaN or infinite values")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"personalize: {name} expected values in [0,1], got [{lo:.4g}, {hi:.4g}] "
                         f"(uint8 images are divided by 255)")
    return x.clamp(0.0, 1.0).contiguous()


def _cameras(viewmats, Ks, V: int, prefix: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    vm = _check_tensor(viewmats, prefix + "viewmats", device)
    if vm.dim() != 3 or tuple(vm.shape) != (V, 4, 4):
        raise ValueError(f"personalize: {prefix}viewmats expected shape [{V},4,4] (one per image), "
                         f"got {list(vm.shape)}")
    K = _check_tensor(Ks, prefix + "Ks", device)
    if K.dim() == 2:
        K = K[None]
    if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, V):
        raise ValueError(f"personalize: {prefix}Ks expected shape [3,3] or [{V},3,3], got {list(Ks.shape)}")
    for name, t in ((prefix + "viewmats", vm), (prefix + "Ks", K)):
        if not t.is_floating_point():
            raise TypeError(f"personalize: {name} expected a floating dtype, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"personalize: {name} has NaN or infinite values")
    return vm.to(dtype).contiguous(), K.to(dtype).expand(V, 3, 3).contiguous()


def _frames(expression, pose, V: int, model: FlameModel, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """expression [V,n_expr] and pose [V,J*3] or [V,J,3,3], zeros where None."""
    dev, dt, J, E = model.device, model.dtype, model.num_joints, model.n_expr
    if expression is None:
        expression = torch.zeros(V, E, dtype=dt, device=dev)
    else:
        e = _check_tensor(expression, prefix + "expression", dev)
        if e.dim() == 1:
            e = e[None].expand(V, -1)
        if e.dim() != 2 or e.shape[0] != V or e.shape[1] > E:
            raise ValueError(f"personalize: {prefix}expression expected shape [{V},n] or [n] with n <= {E} "
                             f"(the model's n_expr), got {list(expression.shape)}")
        expression = torch.nn.functional.pad(e.to(dt), (0, E - e.shape[1]))
    if pose is None:
        pose = torch.zeros(V, J * 3, dtype=dt, device=dev)
    else:
        p = _check_tensor(pose, prefix + "pose", dev).to(dt)
        if p.dim() == 1 and p.shape[0] == J * 3:
            p = p[None].expand(V, -1)
        elif p.dim() == 2 and p.shape == (J, 3):
            p = p.reshape(1, J * 3).expand(V, -1)
        elif p.dim() == 3 and p.shape == (J, 3, 3):
            p = p[None].expand(V, J, 3, 3)
        elif p.dim() == 3 and p.shape[1:] == (J, 3):
            p = p.reshape(p.shape[0], J * 3)
        if not ((p.dim() == 2 and p.shape == (V, J * 3)) or (p.dim() == 4 and p.shape == (V, J, 3, 3))):
            raise ValueError(f"personalize: {prefix}pose expected shape [{V},{J * 3}], [{V},{J},3] or "
                             f"[{V},{J},3,3] (FLAME's {J} joints), got {list(pose.shape)}")
        pose = p
    for name, t in ((prefix + "expression", expression), (prefix + "pose", pose)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"personalize: {name} has NaN or infinite values")
    return expression.contiguous(), pose.contiguous()


def _learning_rates(lr) -> dict:
    if isinstance(lr, dict):
        unknown = set(lr) - set(DEFAULT_LR)
        if unknown:
            raise ValueError(f"personalize: lr has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_LR)}")
        rates = {**DEFAULT_LR, **lr}
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        rates = {k: v * float(lr) for k, v in DEFAULT_LR.items()}
    else:
        raise TypeError(f"personalize: lr expected a float (a factor on DEFAULT_LR) or a dict of rates, "
                        f"got {type(lr).__name__}")
    for k, v in rates.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"personalize: lr[{k!r}] must be a finite number >= 0, got {v!r}")
    return rates


# ------------------------------------------------------------------------------------ rendering
class _ViewRenderer:
    """Renders V views (one frame each) of an avatar whose tensors may change between calls; the
    static work (shaped template, cameras, background) is done once. Same images as
    :meth:`Avatar.render` with one camera per frame."""

    def __init__(self, avatar: AvatarLike, model: FlameModel, viewmats, Ks, width: int, height: int,
                 background, backend: Backend):
        dt, dev = model.dtype, model.device
        bs = avatar.betas_shape.detach().to(dt)
        if bs.shape[0] < model.n_shape:
            bs = torch.nn.functional.pad(bs, (0, model.n_shape - bs.shape[0]))
        with torch.no_grad():
            self.lbs_args = model.expression_lbs_args(bs)
        V = viewmats.shape[0]
        self.viewmats, self.Ks = viewmats.contiguous(), Ks.contiguous()                 # [V,4,4], [V,3,3]
        self.bg = torch.as_tensor(background, dtype=dt, device=dev).reshape(1, 1, 3).expand(V, 1, 3).contiguous()
        self.width, self.height, self.V, self.dtype = width, height, V, dt
        self.backend = backend

    def __call__(self, avatar: AvatarLike, expression: torch.Tensor, pose: torch.Tensor, lbs_args=None) -> torch.Tensor:
        """[V,H,W,3] in [0,1]; ``lbs_args``: another shape's ``model.expression_lbs_args``."""
        dt, V, be = self.dtype, self.V, self.backend
        g = avatar.effective()
        means, quats = be.skin_gaussians(expression, pose, *(lbs_args or self.lbs_args), g.anchor_idx,
                                         g.anchor_weights.to(dt),
                                         g.offsets.to(dt).contiguous(), g.quats.to(dt).contiguous())
        N = means.shape[1]
        colors = g.colors.to(dt).expand(V, N, 3).contiguous()
        scales = g.scales.to(dt).expand(V, N, 3).contiguous()
        opac = g.opacities.to(dt).expand(V, N).contiguous()
        return be.render_scenes(means, quats, scales, opac, colors, self.viewmats, self.Ks, self.width, self.height,
                                self.bg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ the fit
def personalize(avatar: AvatarLike, model: FlameModel, images: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                expression: Optional[torch.Tensor] = None, pose: Optional[torch.Tensor] = None, steps: int = 500,
                lr: Union[float, dict] = 1.0, refine_expression: bool = False, refine_shape: int = 0,
                progress: bool = True,
                backend: Optional[Backend] = None, *, eval_views: "Views | dict | None" = None,
                eval_every: int = 50, ssim_weight: float = 0.2, lr_decay: float = 0.1,
                background=(0.0, 0.0, 0.0), log_every: int = 10) -> tuple[AvatarLike, History]:
    """Fit ``avatar``'s per-Gaussian residuals to V photos of the person.

    Args:
        avatar: the avatar to personalize (not modified); its residuals, if any, are the start.
        model: the FLAME model it is bound to (fingerprint checked), on the device to fit on.
        images: [V,H,W,3] or [V,3,H,W] float in [0,1] (or uint8), RGB, on the model's device.
        viewmats: [V,4,4] world-to-camera; Ks: [V,3,3] or [3,3] intrinsics at the images' size.
        expression: [V,n] (n <= model.n_expr) / [n] per-view expression coefficients, or None (zeros).
        pose: [V,J*3] / [V,J,3] / [V,J,3,3] per-view FLAME pose (global, neck, jaw, eyes), or None.
        steps: optimizer steps (>= 1), each on all V views.
        lr: a factor on :data:`DEFAULT_LR` or a dict of rates by name (offsets, rotations, scales,
            opacities, colors, expression, shape); missing names take the default.
        refine_expression: also optimize a per-view correction of the given ``expression``
            coefficients (all n_expr when None; the missing ones stay zero), returned in
            ``history.expression`` [V,n_expr].
        refine_shape: also fit the first ``refine_shape`` shape coefficients of the avatar's identity
            (0: keep the shape); the returned avatar carries them (``betas_shape`` [n_shape]).
        progress: show a tqdm progress bar.
        backend: from :func:`ffavatar.render.select_backend` (default: chosen for the device).
        eval_views: held-out :class:`Views` (or a dict of its fields): PSNR every ``eval_every`` steps.
        ssim_weight: w in ``(1 - w) L1 + w (1 - SSIM)``.
        lr_decay: the rates decay exponentially to ``lr * lr_decay`` at the last step.
        background: RGB behind the head (as the photos' background).
        log_every: the progress bar shows the loss every this many steps.

    Returns:
        (a new :class:`Avatar` with the fitted residuals, detached; :class:`History`).
    """
    from tqdm import tqdm

    if not (dataclasses.is_dataclass(avatar) and hasattr(avatar, "effective") and hasattr(avatar, "residuals")):
        # (duck-typed: this module sits below avatar.py, whose Avatar.personalize calls it)
        raise TypeError(f"personalize: avatar expected an Avatar, got {type(avatar).__name__}")
    if not isinstance(model, FlameModel):
        raise TypeError(f"personalize: model expected a FlameModel, got {type(model).__name__}")
    avatar.check_model(model)
    dev, dt = model.device, model.dtype
    if avatar.device != dev:
        raise ValueError(f"personalize: avatar is on {avatar.device}, but the model is on {dev}; "
                         f"use avatar.to({str(dev)!r})")
    for name, v, lo in (("steps", steps, 1), ("eval_every", eval_every, 1), ("log_every", log_every, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"personalize: {name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(ssim_weight, (int, float)) and 0.0 <= ssim_weight <= 1.0):
        raise ValueError(f"personalize: ssim_weight must be in [0,1], got {ssim_weight!r}")
    if not (isinstance(lr_decay, (int, float)) and 0.0 < lr_decay <= 1.0):
        raise ValueError(f"personalize: lr_decay must be in (0,1], got {lr_decay!r}")
    rates = _learning_rates(lr)
    if not isinstance(refine_shape, int) or isinstance(refine_shape, bool) or not 0 <= refine_shape <= model.n_shape:
        raise ValueError(f"personalize: refine_shape must be an integer in [0, {model.n_shape}] (the model's "
                         f"n_shape), got {refine_shape!r}")

    target = _images(images, "images", dev, dt)
    V, H, W = target.shape[:3]
    vm, K = _cameras(viewmats, Ks, V, "", dev, dt)
    expr0, pose0 = _frames(expression, pose, V, model, "")
    n_refine = model.n_expr if expression is None else int(expression.shape[-1])   # the given coefficients
    backend = backend or select_backend(dev)

    ev = None
    if eval_views is not None:
        if isinstance(eval_views, dict):
            try:
                eval_views = Views(**eval_views)
            except TypeError as exc:
                raise ValueError(f"personalize: eval_views: {exc}") from None
        if not isinstance(eval_views, Views):
            raise TypeError(f"personalize: eval_views expected a Views or a dict, got {type(eval_views).__name__}")
        e_img = _images(eval_views.images, "eval_views.images", dev, dt)
        e_vm, e_K = _cameras(eval_views.viewmats, eval_views.Ks, e_img.shape[0], "eval_views.", dev, dt)
        e_expr, e_pose = _frames(eval_views.expression, eval_views.pose, e_img.shape[0], model, "eval_views.")
        ev = (e_img, e_expr, e_pose,
              _ViewRenderer(avatar, model, e_vm, e_K, e_img.shape[2], e_img.shape[1], background, backend))

    # parameters: the residuals (from the avatar's own, else zeros) and the expression correction
    start = avatar.residuals if avatar.residuals is not None else \
        Residuals.zeros(avatar.num_gaussians, avatar.offsets.dtype, dev)
    params = start.map(lambda t: t.detach().clone().requires_grad_(True))
    work = dataclasses.replace(avatar.detach(), residuals=params)
    groups = [{"params": [t], "lr": rates[k], "name": k} for k, t in params.tensors().items()]
    delta = None
    if refine_expression:
        delta = torch.zeros(V, n_refine, dtype=dt, device=dev, requires_grad=True)
        groups.append({"params": [delta], "lr": rates["expression"], "name": "expression"})
    shape0 = shape_delta = None
    if refine_shape:
        shape0 = avatar.betas_shape.detach().to(dt)
        shape0 = torch.nn.functional.pad(shape0, (0, model.n_shape - shape0.shape[0]))
        shape_delta = torch.zeros(refine_shape, dtype=dt, device=dev, requires_grad=True)
        groups.append({"params": [shape_delta], "lr": rates["shape"], "name": "shape"})

    def shape_now() -> torch.Tensor:
        return shape0 + torch.nn.functional.pad(shape_delta, (0, model.n_shape - refine_shape))

    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = torch.optim.Adam(groups, eps=1e-15, **({"fused": True} if dev.type == "cuda" else {"foreach": True}))

    render = _ViewRenderer(avatar, model, vm, K, W, H, background, backend)
    history = History()

    def evaluate(step: int) -> None:
        e_img, e_expr, e_pose, e_render = ev
        with torch.no_grad():
            out = e_render(work, e_expr, e_pose, model.expression_lbs_args(shape_now()) if refine_shape else None)
            mse = (out.double() - e_img.double()).pow(2).flatten(1).mean(1)
            history.psnr.append((step, float((-10.0 * torch.log10(mse.clamp_min(1e-20))).mean())))

    if ev is not None:
        evaluate(0)
    losses = torch.empty(steps, dtype=torch.float32, device=dev)
    bar = tqdm(total=steps, desc="personalize", unit="step", disable=not progress, leave=False)
    _sync(dev)
    t0, train_s = time.perf_counter(), 0.0
    try:
        for i in range(steps):
            f = lr_decay ** (i / max(steps - 1, 1))
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            expr = expr0 if delta is None else expr0 + torch.nn.functional.pad(delta, (0, model.n_expr - n_refine))
            img = render(work, expr, pose0, model.expression_lbs_args(shape_now()) if refine_shape else None)
            loss = l1_ssim_loss(img, target, ssim_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[i] = loss.detach()
            bar.update(1)
            if progress and ((i + 1) % log_every == 0 or i + 1 == steps):
                bar.set_postfix(loss=f"{losses[i].item():.4f}")
            if ev is not None and ((i + 1) % eval_every == 0 or i + 1 == steps):
                _sync(dev)
                train_s += time.perf_counter() - t0
                evaluate(i + 1)
                t0 = time.perf_counter()
        _sync(dev)
        train_s += time.perf_counter() - t0
    finally:
        bar.close()

    history.loss = list(zip(range(1, steps + 1), losses.tolist()))
    history.train_s, history.steps = train_s, steps
    if delta is not None:
        history.expression = (expr0 + torch.nn.functional.pad(delta, (0, model.n_expr - n_refine))).detach()
    if not math.isfinite(history.loss[-1][1]):
        raise FloatingPointError("personalize: the loss became NaN or infinite; lower lr")
    fitted = params.map(lambda t: t.detach().clone())
    out = dataclasses.replace(avatar, residuals=fitted)
    if refine_shape:
        out.betas_shape = shape_now().detach().to(avatar.betas_shape.dtype)
    return out, history
