"""A head avatar: canonical Gaussians bound to a FLAME model's surface, its identity, optional
per-Gaussian residuals (personalization) and, from a reconstruction, the estimator's per-view FLAME
parameters and cameras of the input photos.

Frames: the *canonical* frame is the avatar's shaped head at zero expression and zero pose
(anchor points of the shaped template + offsets); a *posed* frame skins it with an expression and
a pose (:meth:`Avatar.posed`). Units are metres; cameras follow OpenCV / gsplat (x right, y down,
z forward, world-to-camera ``viewmats``); quaternions are wxyz.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..flame import CanonicalGaussians, FlameModel, anchor_points, flame_fingerprint
from ..geometry.rotations import quat_mul
from ..render import Backend, select_backend
from ..render.shading import shade
from .engine import AnimationEngine
from .files import AvatarFileError, read_avatar, save_avatar
from .personalize import personalize as _personalize
from .ply import export_avatar_ply
from .residuals import EffectiveGaussians, Residuals, axis_angle_to_quat

__all__ = ["Avatar", "FlameMismatchError", "load_avatar"]

_FIELDS = ("offsets", "quats", "scales", "opacities", "colors")


class FlameMismatchError(ValueError):
    """An avatar is used with a FLAME model other than the one it was built on (fingerprints differ)."""


@dataclass
class Avatar:
    """Canonical 3D Gaussians of one head (N Gaussians, K <= 4 anchors, V input views).

    Gaussian ``i`` is anchored to template vertices ``anchor_idx[i]`` with barycentric-like weights
    ``anchor_weights[i]``: its rest position is the anchor combination of the (shaped, posed)
    FLAME vertices + ``offsets[i]``; skinning is exact through that combination.

    Attributes:
        anchor_idx: [N,K] int64 vertex indices.
        anchor_weights: [N,K] float, rows sum to 1.
        means: [N,3] canonical centres as the producer computed them (anchor points of the
            template + offsets); informational: posing, rendering and :meth:`canonical_means` use
            the binding (anchors + offsets) and the shape.
        offsets: [N,3] offsets from the anchor points (metres).
        quats: [N,4] canonical rotations, wxyz.
        scales: [N,3] standard deviations (metres, not logs).
        opacities: [N] in [0,1].
        colors: [N,3] RGB in [0,1].
        betas_shape: [n_shape] FLAME shape coefficients (the identity); fewer than the model's
            n_shape means the rest are zero.
        flame_fingerprint: :func:`ffavatar.flame.flame_fingerprint` of the model the Gaussians
            are bound to (None: unknown, any model with enough vertices is accepted).
        n_expr: expression components of that model, if known.
        residuals: optional :class:`Residuals` (None = zeros).
        expr: [V,n_expr]; jaw_pose, neck_pose, rotation, translation: [V,3]; eyes_pose: [V,6]:
            the estimator's per-view FLAME parameters (head pose in the view's camera frame).
        viewmats: [V,4,4] world-to-camera (OpenCV / gsplat), Ks: [V,3,3] at ``image_size`` pixels.
    """
    anchor_idx: torch.Tensor
    anchor_weights: torch.Tensor
    means: torch.Tensor
    offsets: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    betas_shape: torch.Tensor
    flame_fingerprint: Optional[str] = None
    n_expr: Optional[int] = None
    residuals: Optional[Residuals] = None
    expr: Optional[torch.Tensor] = None
    jaw_pose: Optional[torch.Tensor] = None
    eyes_pose: Optional[torch.Tensor] = None
    neck_pose: Optional[torch.Tensor] = None
    rotation: Optional[torch.Tensor] = None
    translation: Optional[torch.Tensor] = None
    viewmats: Optional[torch.Tensor] = None
    Ks: Optional[torch.Tensor] = None
    image_size: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------ structure
    def validate(self) -> None:
        """Shapes and dtypes of every tensor (``ValueError`` / ``TypeError`` naming the field)."""
        for name in ("anchor_idx", "anchor_weights", "means", *_FIELDS, "betas_shape"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"Avatar.{name}: expected a torch.Tensor, got {type(getattr(self, name)).__name__}")
        ai = self.anchor_idx
        if ai.dim() != 2 or not 1 <= ai.shape[1] <= 4:
            raise ValueError(f"Avatar.anchor_idx: expected shape [N,K] with 1 <= K <= 4, got {list(ai.shape)}")
        if ai.is_floating_point() or ai.dtype == torch.bool:
            raise TypeError(f"Avatar.anchor_idx: expected an integer dtype, got {ai.dtype}")
        N, K = ai.shape
        want = {"anchor_weights": (N, K), "means": (N, 3), "offsets": (N, 3), "quats": (N, 4),
                "scales": (N, 3), "opacities": (N,), "colors": (N, 3)}
        for name, shape in want.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"Avatar.{name}: expected shape {list(shape)} (N={N}, K={K}), got {list(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"Avatar.{name}: expected a floating dtype, got {t.dtype}")
        if self.betas_shape.dim() != 1:
            raise ValueError(f"Avatar.betas_shape: expected shape [n_shape], got {list(self.betas_shape.shape)}")
        if self.residuals is not None:
            r = self.residuals
            for name, shape in (("offsets", (N, 3)), ("rotations", (N, 3)), ("scales", (N, 3)),
                                ("opacities", (N,)), ("colors", (N, 3))):
                t = getattr(r, name)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                    got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"Avatar.residuals.{name}: expected shape {list(shape)}, got {got}")

    @property
    def num_gaussians(self) -> int:
        """N."""
        return self.means.shape[0]

    @property
    def num_views(self) -> int:
        """V, the input views the per-view fields describe (0 without them)."""
        return 0 if self.viewmats is None else self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def _map(self, fn) -> "Avatar":
        kw = {f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
              if isinstance(getattr(self, f.name), torch.Tensor)}
        if self.residuals is not None:
            kw["residuals"] = self.residuals.map(fn)
        return dataclasses.replace(self, **kw)

    def to(self, device: "torch.device | str | None" = None, dtype: "torch.dtype | None" = None) -> "Avatar":
        """A copy with every tensor on ``device``; floating tensors cast to ``dtype`` if given."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def detach(self) -> "Avatar":
        """A copy with every tensor detached from autograd."""
        return self._map(lambda t: t.detach())

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_canonical(cls, model: FlameModel, gaussians: CanonicalGaussians) -> "Avatar":
        """The avatar of ``model``'s own head (zero shape) with ``gaussians`` (e.g.
        :func:`ffavatar.flame.canonical_gaussians`; the mean head when ``model`` is the synthetic one).

        Offsets are ``gaussians.means`` minus their anchor points on ``model.v_template`` (zero for
        Gaussians made by ``canonical_gaussians``).
        """
        g = gaussians
        anchors = anchor_points(model.v_template, g.anchor_idx, g.anchor_weights)
        return cls(anchor_idx=g.anchor_idx.long(), anchor_weights=g.anchor_weights.clone(), means=g.means.clone(),
                   offsets=g.means - anchors, quats=g.quats.clone(), scales=g.scales.clone(),
                   opacities=g.opacities.clone(), colors=g.colors.clone(),
                   betas_shape=torch.zeros(model.n_shape, dtype=g.means.dtype, device=g.means.device),
                   flame_fingerprint=flame_fingerprint(model), n_expr=int(model.n_expr))

    # ------------------------------------------------------------------------------ residuals
    def effective(self) -> EffectiveGaussians:
        """The Gaussians with the residuals applied (quats normalized); differentiable w.r.t. both."""
        q = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = self.residuals
        if r is None:
            return EffectiveGaussians(self.anchor_idx, self.anchor_weights, self.offsets, q, self.scales,
                                      self.opacities, self.colors)
        e = torch.exp(r.opacities)
        op = self.opacities * e / (1 - self.opacities + self.opacities * e)   # sigmoid(logit(op) + r)
        return EffectiveGaussians(self.anchor_idx, self.anchor_weights, self.offsets + r.offsets,
                                  quat_mul(axis_angle_to_quat(r.rotations), q), self.scales * torch.exp(r.scales),
                                  op, (self.colors + r.colors).clamp(0.0, 1.0))

    def init_residuals(self, requires_grad: bool = False) -> Residuals:
        """Zero residuals (kept on the avatar and returned), e.g. as personalization's parameters."""
        self.residuals = Residuals.zeros(self.num_gaussians, self.offsets.dtype, self.device)
        if requires_grad:
            for t in self.residuals.tensors().values():
                t.requires_grad_(True)
        return self.residuals

    # ------------------------------------------------------------------------------ posing
    def check_model(self, model: FlameModel) -> None:
        """Raise :class:`FlameMismatchError` unless ``model`` is the one this avatar is bound to."""
        if not isinstance(model, FlameModel):
            raise TypeError(f"Avatar: model expected a FlameModel, got {type(model).__name__}")
        if self.flame_fingerprint is not None:
            fp = flame_fingerprint(model)
            if fp != self.flame_fingerprint:
                raise FlameMismatchError(
                    f"Avatar: built on the FLAME model {self.flame_fingerprint[:23]}..., but the given model is "
                    f"{fp[:23]}...; use the model the avatar was made with")
        if self.betas_shape.shape[0] > model.n_shape:
            raise ValueError(f"Avatar: {self.betas_shape.shape[0]} shape coefficients, the model has only "
                             f"{model.n_shape}")

    def _frames(self, expression, pose, model: FlameModel) -> tuple[torch.Tensor, torch.Tensor]:
        """expression [B,n_expr] and pose [B,J*3] (or [B,J,3,3]) on the model's device and dtype."""
        dev, dt, J = model.device, model.dtype, model.num_joints
        if expression is not None:
            expression = torch.as_tensor(expression, dtype=dt, device=dev)
            if expression.dim() == 1:
                expression = expression[None]
            if expression.dim() != 2 or expression.shape[1] > model.n_expr:
                raise ValueError(f"Avatar: expression expected shape [B,n] or [n] with n <= {model.n_expr} "
                                 f"(the model's n_expr), got {list(expression.shape)}")
        if pose is not None:
            pose = torch.as_tensor(pose, dtype=dt, device=dev)
            if pose.dim() == 1 or (pose.dim() == 3 and pose.shape == (J, 3, 3)):
                pose = pose[None]                                  # one frame
            elif pose.dim() == 3 and pose.shape[1:] == (J, 3):
                pose = pose.reshape(pose.shape[0], J * 3)
            if not ((pose.dim() == 2 and pose.shape[1] == J * 3) or (pose.dim() == 4 and pose.shape[1:] == (J, 3, 3))):
                raise ValueError(f"Avatar: pose expected shape [B,{J * 3}], [{J * 3}], [B,{J},3] or [B,{J},3,3], "
                                 f"got {list(pose.shape)}")
        B = expression.shape[0] if expression is not None else (pose.shape[0] if pose is not None else 1)
        if expression is not None and pose is not None and pose.shape[0] != B:
            raise ValueError(f"Avatar: expression has {B} frames but pose has {pose.shape[0]}")
        if expression is None:
            expression = torch.zeros(B, model.n_expr, dtype=dt, device=dev)
        elif expression.shape[1] < model.n_expr:
            expression = torch.nn.functional.pad(expression, (0, model.n_expr - expression.shape[1]))
        if pose is None:
            pose = torch.zeros(B, J * 3, dtype=dt, device=dev)
        return expression.contiguous(), pose.contiguous()

    def posed(self, expression=None, pose=None, model: Optional[FlameModel] = None, *, translation=None,
              backend: Optional[Backend] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Skin the (effective) Gaussians: B frames -> means [B,N,3], quats [B,N,4] (wxyz, unit).

        Args:
            expression: [B,n] or [n] expression coefficients (n <= model.n_expr; missing ones are
                zero), or None (zeros).
            pose: [B,J*3] / [J*3] / [B,J,3] axis-angle or [B,J,3,3] rotations in FLAME's joint order
                (global, neck, jaw, left eye, right eye), or None (zeros).
            model: the FLAME model the avatar is bound to (fingerprint checked).
            translation: optional [B,3] or [3], added to the means.
            backend: from :func:`ffavatar.render.select_backend` (default: the compiled
                ``ffavatar_kernels.skin_gaussians`` when it has kernels for the device, else the
                reference twin).
        """
        if model is None:
            raise ValueError("Avatar.posed: a FlameModel is needed to pose the avatar")
        self.check_model(model)
        if self.device != model.device:
            raise ValueError(f"Avatar.posed: the avatar is on {self.device} but the model on {model.device}; "
                             f"use avatar.to(model.device)")
        expression, pose = self._frames(expression, pose, model)
        dt = model.dtype
        g = self.effective()
        bs = self.betas_shape.to(dt)
        if bs.shape[0] < model.n_shape:
            bs = torch.nn.functional.pad(bs, (0, model.n_shape - bs.shape[0]))
        args = model.expression_lbs_args(bs)
        backend = backend or select_backend(model.device)
        means, quats = backend.skin_gaussians(expression, pose, *args, g.anchor_idx, g.anchor_weights.to(dt),
                                              g.offsets.to(dt).contiguous(), g.quats.to(dt).contiguous())
        if translation is not None:
            tr = torch.as_tensor(translation, dtype=dt, device=model.device).reshape(-1, 3)
            if tr.shape[0] not in (1, means.shape[0]):
                raise ValueError(f"Avatar.posed: translation expected shape [3] or [{means.shape[0]},3], "
                                 f"got {list(torch.as_tensor(translation).shape)}")
            means = means + tr[:, None, :]
        return means, quats

    def canonical_means(self, model: FlameModel) -> torch.Tensor:
        """[N,3] centres in the canonical frame: anchor points of the shaped template + offsets
        (residuals included)."""
        self.check_model(model)
        bs = self.betas_shape.to(model.dtype)
        if bs.shape[0] < model.n_shape:
            bs = torch.nn.functional.pad(bs, (0, model.n_shape - bs.shape[0]))
        v = model.expression_lbs_args(bs)[0]
        g = self.effective()
        return anchor_points(v, g.anchor_idx, g.anchor_weights) + g.offsets.to(model.dtype)

    # ------------------------------------------------------------------------------ rendering
    def render(self, model: FlameModel, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               expression=None, pose=None, *, translation=None, backend: Optional[Backend] = None,
               background=(0.0, 0.0, 0.0), lit: bool = False) -> torch.Tensor:
        """Render B frames (from ``expression`` / ``pose``; one frame when both are None).

        Args:
            model: the FLAME model the avatar is bound to.
            viewmats: [4,4], [B,4,4] (one camera per frame) or, for one frame, [C,4,4] (C views of it).
            Ks: [3,3] or [S,3,3] intrinsics, S the number of images.
            width, height: image size in pixels.
            expression, pose, translation: as :meth:`posed`.
            backend: from :func:`ffavatar.render.select_backend` (default: chosen for the device).
            background: RGB.
            lit: shade with the camera-attached lights of :mod:`ffavatar.render.shading` (default:
                the colours as they are, which already hold the captured lighting).

        Returns:
            [S,H,W,3] images in [0,1], S = max(B, C).
        """
        if model is None:
            raise ValueError("Avatar.render: a FlameModel is needed to pose the avatar (model is None)")
        if not isinstance(model, FlameModel):
            raise TypeError(f"Avatar.render: model expected a FlameModel, got {type(model).__name__}")
        dev, dt = model.device, model.dtype
        backend = backend or select_backend(dev)
        means, quats = self.posed(expression, pose, model, translation=translation, backend=backend)
        B = means.shape[0]
        vm = torch.as_tensor(viewmats, dtype=dt, device=dev)
        vm = vm[None] if vm.dim() == 2 else vm
        if vm.dim() != 3 or vm.shape[1:] != (4, 4) or not (vm.shape[0] in (1, B) or B == 1):
            raise ValueError(f"Avatar.render: viewmats expected shape [4,4] or [{B},4,4] (one per frame)"
                             f"{' or [C,4,4]' if B == 1 else ''}, got {list(torch.as_tensor(viewmats).shape)}")
        S = max(B, vm.shape[0])
        K = torch.as_tensor(Ks, dtype=dt, device=dev)
        K = K[None] if K.dim() == 2 else K
        if K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, S):
            raise ValueError(f"Avatar.render: Ks expected shape [3,3] or [{S},3,3], got {list(torch.as_tensor(Ks).shape)}")
        vm, K = vm.expand(S, 4, 4), K.expand(S, 3, 3)
        means, quats = means.expand(S, -1, 3).contiguous(), quats.expand(S, -1, 4).contiguous()
        g = self.effective()
        N = g.offsets.shape[0]
        colors = shade(g.colors.to(dt), quats, vm) if lit else g.colors.to(dt).expand(S, N, 3)
        scales = g.scales.to(dt).expand(S, N, 3).contiguous()
        opac = g.opacities.to(dt).expand(S, N).contiguous()
        bg = torch.as_tensor(background, dtype=dt, device=dev)
        if bg.numel() != 3:
            raise ValueError(f"Avatar.render: background expected 3 values (RGB), got shape {list(bg.shape)}")
        bg = bg.reshape(1, 1, 3).expand(S, 1, 3).contiguous()
        return backend.render_scenes(means, quats, scales, opac, colors, vm, K, width, height, bg)

    # ------------------------------------------------------------------------------ animation
    def engine(self, model: FlameModel, width: int, height: int, **options) -> AnimationEngine:
        """An :class:`~ffavatar.avatar.engine.AnimationEngine` for this avatar: frames from FLAME
        parameters, replayed from a CUDA graph on the GPU (``options``: viewmat, K, batch,
        background, lit, backend, graph)."""
        return AnimationEngine(self, model, width, height, **options)

    def animate(self, model: FlameModel, expression=None, pose=None, width: int = 512, height: Optional[int] = None,
                *, translation=None, viewmats=None, batch: int = 16, **options):
        """Render an animation in batches: yields [b,H,W,3] images in [0,1], in order.

        Args:
            model: the FLAME model the avatar is bound to.
            expression: [T,n] expression coefficients, pose: [T,J*3] or [T,J,3] axis-angle (either
                may be None: zeros), translation: [T,3] or None, viewmats: [T,4,4], [4,4] or None
                (the front camera, or ``options['viewmat']``).
            width, height: frame size (height defaults to width).
            batch: frames per replay of the engine.
            options: more :class:`~ffavatar.avatar.engine.AnimationEngine` arguments.

        The inputs are checked before the first frame renders.
        """
        eng = self.engine(model, width, width if height is None else height, batch=batch, **options)
        expr, pose, tr, vm = eng._inputs(expression, pose, translation, viewmats)

        def frames():
            for s in range(0, expr.shape[0], batch):
                e = min(expr.shape[0], s + batch)
                yield eng.render(expr[s:e], pose[s:e], translation=tr[s:e], viewmats=vm[s:e])
        return frames()

    # ------------------------------------------------------------------------------ files
    def personalize(self, model: FlameModel, images: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                    expression: Optional[torch.Tensor] = None, pose: Optional[torch.Tensor] = None,
                    steps: int = 500, **options):
        """Fit per-Gaussian residuals (and optionally per-view expressions / shape) to photos of this
        head: :func:`ffavatar.avatar.personalize.personalize` with this avatar. ``images`` [V,H,W,3] or
        [V,3,H,W] in [0,1] (or uint8), ``viewmats`` [V,4,4], ``Ks`` [V,3,3] or [3,3], ``expression``
        [V,n_expr], ``pose`` [V,J*3]. Returns (the personalized Avatar, its History)."""
        return _personalize(self, model, images, viewmats, Ks, expression=expression, pose=pose, steps=steps,
                            **options)

    def save(self, path: "str | os.PathLike") -> None:
        """Write a ``.ffavatar`` file atomically (:mod:`ffavatar.avatar.files`)."""
        save_avatar(self, path)

    @classmethod
    def load(cls, path: "str | os.PathLike", model: Optional[FlameModel] = None) -> "Avatar":
        """Read a ``.ffavatar`` file (CPU tensors); with ``model``, check that it is the avatar's
        FLAME model (``AvatarFileError`` naming the file otherwise)."""
        kw = read_avatar(path, model)
        if kw["residuals"] is not None:
            kw["residuals"] = Residuals(**kw["residuals"])
        try:
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise AvatarFileError(f"{os.fspath(path)}: malformed avatar ({exc})") from None

    def export_ply(self, path: "str | os.PathLike", expression=None, pose=None, model: Optional[FlameModel] = None,
                   *, translation=None) -> None:
        """Write the standard 3DGS ``.ply`` of the canonical frame (no expression / pose / translation)
        or of one posed frame (``model`` needed). See :mod:`ffavatar.avatar.ply`."""
        export_avatar_ply(self, path, expression, pose, model, translation=translation)


def load_avatar(path: "str | os.PathLike", model: Optional[FlameModel] = None) -> Avatar:
    """:meth:`Avatar.load`."""
    return Avatar.load(path, model)
