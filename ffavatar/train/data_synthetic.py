"""Synthetic training identities: the embedded head with a random shape, colours, expressions, poses
and cameras, rendered on the fly by our kernels (unlimited, labelled data that needs no download).

A sample is a pure function of ``(seed, split, index)``: its random numbers come from a
``torch.Generator`` seeded from those three, so it is reproducible and independent of the worker
count, the rank and the order in which samples are drawn. Rendering runs on the device asked for
(``SyntheticHeads.sample(i, device="cuda")``); ``dataset[i]`` renders on the CPU (DataLoader workers).

What varies per identity (documented ranges in :class:`SyntheticConfig`):

- **shape**: the first ``n_shape`` FLAME shape coefficients ~ N(0, shape_std^2) (the rest zero);
- **colours**: the head's vertex colours are split into soft regions: hair (incl. brows) and lips by
  projecting each colour onto the segment from the base skin colour to the base hair / lip colour
  (the blend weight the colour map used), the iris (eyeball vertices with the iris colour), skin
  (everything else on the skin surface); sclera, pupil, oral cavity and teeth keep their colours.
  Each region gets a tint drawn from a palette (skin tones from light to dark, hair from black to
  blond / red / grey, iris brown / blue / green / hazel), skin keeping its local shading
  (blush, neck) as a ratio;
- **per view** (k conditioning + M target views, each its own): expression coefficients (the first
  ``n_expr``, uniform in +-expr_scale), jaw opening, eye gaze (both eyes alike), neck rotation, and
  the camera: the head's rotation in the camera frame (pitch, yaw, roll), a small translation and a
  vertical field of view. Cameras follow the FLAME estimator's convention
  (:func:`camera_matrices`): with zero rotation the camera sits ``distance`` metres in front of the
  face looking at it, so the ground truth supervises the estimator directly. The global FLAME pose
  is zero (the head's rotation is the camera's).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ffavatar.avatar import Avatar
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.flame.synthetic import synthetic_layout
from ffavatar.geometry import intrinsics
from ffavatar_kernels.reference.flame_lbs import batch_rodrigues

__all__ = ["SyntheticConfig", "SyntheticSample", "SyntheticHeads", "camera_matrices", "flame_pose",
           "sample_seed", "VIEW_KEYS"]

VIEW_KEYS = ("expr", "jaw_pose", "eyes_pose", "neck_pose", "rotation", "translation", "focal",
             "viewmats", "Ks")

# base colours of the head's colour map (ffavatar/flame/synthetic/colors.py)
_SKIN = (0.86, 0.66, 0.55)
_HAIR = (0.20, 0.13, 0.08)
_LIP = (0.70, 0.30, 0.32)
_IRIS = (0.28, 0.42, 0.55)
_SKIN_TONES = ((0.95, 0.80, 0.70), (0.86, 0.66, 0.55), (0.74, 0.54, 0.40), (0.58, 0.40, 0.28),
               (0.40, 0.27, 0.19))
_HAIR_TONES = ((0.04, 0.035, 0.03), (0.20, 0.13, 0.08), (0.38, 0.25, 0.14), (0.72, 0.60, 0.38),
               (0.52, 0.22, 0.10), (0.62, 0.62, 0.62))
_IRIS_TONES = ((0.33, 0.20, 0.10), (0.28, 0.42, 0.55), (0.30, 0.45, 0.30), (0.45, 0.35, 0.20),
               (0.10, 0.07, 0.05))


@dataclass
class SyntheticConfig:
    """How synthetic samples are drawn and rendered.

    image_size: square images (pixels); min_views / max_views: k conditioning views, uniform in
    [min_views, max_views]; num_targets: M target views; subdiv_levels: the head's subdivisions for
    the ground-truth Gaussians (0: 5,023); n_shape / shape_std: shape coefficients drawn;
    n_expr / expr_scale: expression coefficients drawn (uniform in +-expr_scale); jaw_max (rad):
    jaw opening in [0, jaw_max]; gaze_deg / neck_deg: eye and neck rotations (uniform +-);
    yaw_deg / pitch_deg / roll_deg: head rotation in the camera frame (uniform +-);
    translation_std (m); fov_deg: vertical field of view range; distance (m): the estimator's
    camera distance; color_jitter: per-channel multiplicative jitter of every tint (+-);
    background: RGB."""
    image_size: int = 64
    min_views: int = 1
    max_views: int = 4
    num_targets: int = 8
    subdiv_levels: int = 0
    n_shape: int = 16
    shape_std: float = 0.6
    n_expr: int = 10
    expr_scale: float = 1.0
    jaw_max: float = 0.3
    gaze_deg: float = 15.0
    neck_deg: float = 10.0
    yaw_deg: float = 50.0
    pitch_deg: float = 20.0
    roll_deg: float = 8.0
    translation_std: float = 0.01
    fov_deg: tuple = (16.0, 24.0)
    distance: float = 0.75
    color_jitter: float = 0.08
    background: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if not 1 <= self.min_views <= self.max_views:
            raise ValueError(f"SyntheticConfig: need 1 <= min_views <= max_views, got {self.min_views}, "
                             f"{self.max_views}")
        if self.num_targets < 1 or self.image_size < 1:
            raise ValueError(f"SyntheticConfig: num_targets and image_size must be >= 1, got "
                             f"{self.num_targets}, {self.image_size}")
        self.fov_deg = tuple(float(f) for f in self.fov_deg)
        self.background = tuple(float(c) for c in self.background)


@dataclass
class SyntheticSample:
    """One identity: ``images`` [k,3,H,W] conditioning views and ``target_images`` [M,3,H,W] in
    [0,1]; ``shape`` [300] ground-truth FLAME shape; ``colors`` [N,3] its Gaussians' colours;
    ``cond`` / ``target``: per-view ground truth, dicts of :data:`VIEW_KEYS`: expr [V,n_expr],
    jaw_pose / neck_pose / rotation / translation [V,3], eyes_pose [V,6], focal [V] (pixels at
    image_size), viewmats [V,4,4] world-to-camera, Ks [V,3,3]."""
    index: int
    images: torch.Tensor
    target_images: torch.Tensor
    shape: torch.Tensor
    colors: torch.Tensor
    cond: dict
    target: dict

    def to(self, device) -> "SyntheticSample":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return dataclasses.replace(self, images=self.images.to(device), target_images=self.target_images.to(device),
                                   shape=self.shape.to(device), colors=self.colors.to(device),
                                   cond=mv(self.cond), target=mv(self.target))


def sample_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of ``split`` (splitmix64 of the three)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + sum(ord(c) << (8 * (i % 7)) for i, c in enumerate(split)) * 0xBF58476D1CE4E5B9
         + int(index) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    for m in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
        x = ((x ^ (x >> 31)) * m) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 29)) & 0x7FFFFFFFFFFFFFFF


def camera_matrices(rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor, image_size: int,
                    distance: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """The FLAME estimator's camera convention (``FlameEstimator.cameras``): rotation [V,3]
    axis-angle of the head in the camera frame, translation [V,3], focal [V] pixels ->
    (viewmats [V,4,4] = [diag(1,-1,-1) R | translation + (0,0,distance)], Ks [V,3,3])."""
    v = rotation.shape[0]
    flip = torch.diag(rotation.new_tensor([1.0, -1.0, -1.0]))
    vm = torch.zeros(v, 4, 4, dtype=rotation.dtype, device=rotation.device)
    vm[:, :3, :3] = flip @ batch_rodrigues(rotation)
    vm[:, :3, 3] = translation + rotation.new_tensor([0.0, 0.0, distance])
    vm[:, 3, 3] = 1.0
    c = image_size / 2.0
    K = torch.zeros(v, 3, 3, dtype=focal.dtype, device=focal.device)
    K[:, 0, 0], K[:, 1, 1] = focal, focal
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = c, c, 1.0
    return vm, K


def flame_pose(views: dict) -> torch.Tensor:
    """[V,15] FLAME pose (global zero, neck, jaw, left eye, right eye) of per-view parameters."""
    z = torch.zeros_like(views["neck_pose"])
    return torch.cat([z, views["neck_pose"], views["jaw_pose"], views["eyes_pose"]], -1)


@functools.lru_cache(maxsize=4)
def _color_regions(levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-Gaussian soft region weights of the head's colour map: (hair [N], lips [N], iris [N],
    skin surface [N]) for the ``levels``-times subdivided head (CPU, float32)."""
    head = synthetic_head()
    lay = synthetic_layout()
    g = canonical_gaussians(head, levels)
    vc = head.vertex_colors
    skin, hair, lip, iris = (torch.tensor(c) for c in (_SKIN, _HAIR, _LIP, _IRIS))
    part = torch.as_tensor(lay.part)
    surface = (part <= 3).float()

    def along(target):          # blend weight on the segment skin -> target (shading below 0.2 ignored)
        d = target - skin
        t = ((vc - skin) @ d) / (d @ d)
        return ((t - 0.2) / 0.6).clamp(0, 1) * surface

    w_hair, w_lip = along(hair), along(lip)
    w_iris = ((part >= 4) & (part <= 5) & ((vc - iris).norm(dim=-1) < 1e-3)).float()
    to_g = lambda w: (w[g.anchor_idx] * g.anchor_weights).sum(-1)  # noqa: E731
    return to_g(w_hair), to_g(w_lip), to_g(w_iris), to_g(surface)


class SyntheticHeads(torch.utils.data.Dataset):
    """Synthetic identities (see the module docstring): ``sample(i, device)`` or ``dataset[i]`` (CPU).

    ``length`` only bounds iteration (``len(dataset)``); any index >= 0 is a valid sample."""

    def __init__(self, config: Optional[SyntheticConfig] = None, seed: int = 0, split: str = "train",
                 length: int = 1 << 30):
        self.config = config or SyntheticConfig()
        self.seed, self.split, self.length = int(seed), str(split), int(length)
        self._heads: dict = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> SyntheticSample:
        return self.sample(index)

    def head(self, device) -> tuple:
        """(FlameModel, CanonicalGaussians) of the synthetic head on ``device`` (cached)."""
        key = str(torch.device(device))
        if key not in self._heads:
            m = synthetic_head(device=device)
            self._heads[key] = (m, canonical_gaussians(m, self.config.subdiv_levels))
        return self._heads[key]

    # ------------------------------------------------------------------------------ drawing
    def _colors(self, base: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.config
        hair_w, lip_w, iris_w, surf = (w.to(base.device) for w in _color_regions(c.subdiv_levels))

        def pick(palette, mix=True):
            p = torch.tensor(palette)
            i = torch.randint(len(p) - (1 if mix else 0), (), generator=g)
            t = torch.rand((), generator=g) if mix else torch.zeros(())
            tone = p[i] * (1 - t) + p[(i + 1) % len(p)] * t
            return (tone * (1 + c.color_jitter * (2 * torch.rand(3, generator=g) - 1))).clamp(0, 1)

        skin_t, hair_t, iris_t = pick(_SKIN_TONES), pick(_HAIR_TONES, False), pick(_IRIS_TONES, False)
        lip_t = (torch.tensor(_LIP) * skin_t / torch.tensor(_SKIN) * (0.8 + 0.4 * torch.rand((), generator=g))).clamp(0, 1)
        skin_t, hair_t, iris_t, lip_t = (t.to(base.device) for t in (skin_t, hair_t, iris_t, lip_t))
        skin0, hair0, lip0 = (torch.tensor(x, device=base.device) for x in (_SKIN, _HAIR, _LIP))
        # on the skin surface: colour = rest + hair_w * hair0 + lip_w * lip0, rest = (1 - hair_w -
        # lip_w) x the local skin colour; the skin part is rescaled by the tone's ratio (keeping the
        # local shading), hair and lips take their new tints with the same weights
        rest = base - hair_w[:, None] * hair0 - lip_w[:, None] * lip0
        recol = rest * (skin_t / skin0) + hair_w[:, None] * hair_t + lip_w[:, None] * lip_t
        out = torch.where(surf[:, None] > 0.5, recol, base)
        out = out * (1 - iris_w[:, None]) + iris_w[:, None] * iris_t
        return out.clamp(0, 1)

    def _views(self, n: int, g: torch.Generator) -> dict:
        c = self.config
        u = lambda *s: 2 * torch.rand(*s, generator=g) - 1  # noqa: E731
        rad = math.radians
        expr = c.expr_scale * u(n, c.n_expr)
        jaw = torch.zeros(n, 3)
        jaw[:, 0] = c.jaw_max * torch.rand(n, generator=g)
        gaze = rad(c.gaze_deg) * u(n, 2)
        eyes = torch.stack([gaze[:, 0], gaze[:, 1], torch.zeros(n)], -1).repeat(1, 2)
        neck = rad(c.neck_deg) * u(n, 3)
        rot = torch.stack([rad(c.pitch_deg) * u(n), rad(c.yaw_deg) * u(n), rad(c.roll_deg) * u(n)], -1)
        trans = c.translation_std * torch.randn(n, 3, generator=g)
        lo, hi = (math.radians(f) for f in c.fov_deg)
        fov = lo + (hi - lo) * torch.rand(n, generator=g)
        focal = 0.5 * c.image_size / torch.tan(fov / 2)
        vm, K = camera_matrices(rot, trans, focal, c.image_size, c.distance)
        return {"expr": expr, "jaw_pose": jaw, "eyes_pose": eyes, "neck_pose": neck, "rotation": rot,
                "translation": trans, "focal": focal, "viewmats": vm, "Ks": K}

    def identity(self, shape: torch.Tensor, colors: torch.Tensor, device) -> Avatar:
        """The ground-truth avatar: the mean head's Gaussians with ``colors`` and ``shape``."""
        m, cg = self.head(device)
        a = Avatar.from_canonical(m, cg)
        a.colors = colors.to(device)
        a.betas_shape = shape.to(device=device, dtype=a.offsets.dtype)
        return a

    def render(self, avatar: Avatar, views: dict, device) -> torch.Tensor:
        """[V,3,H,W] images of ``avatar`` with per-view parameters ``views`` (on ``device``)."""
        m, _ = self.head(device)
        s = self.config.image_size
        v = {k: t.to(device) for k, t in views.items()}
        with torch.no_grad():
            img = avatar.render(m, v["viewmats"], v["Ks"], s, s, expression=v["expr"], pose=flame_pose(v),
                                background=self.config.background)
        return img.permute(0, 3, 1, 2).contiguous()

    def sample(self, index: int, device="cpu", num_views: Optional[int] = None) -> SyntheticSample:
        """Sample ``index`` rendered on ``device``; ``num_views`` fixes k (evaluation)."""
        if index < 0:
            raise ValueError(f"SyntheticHeads.sample: index must be >= 0, got {index}")
        c = self.config
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.split, index))
        k = int(torch.randint(c.min_views, c.max_views + 1, (), generator=g))
        k = k if num_views is None else int(num_views)
        m, cg = self.head(device)
        shape = torch.zeros(m.n_shape)
        shape[:c.n_shape] = c.shape_std * torch.randn(c.n_shape, generator=g)
        colors = self._colors(cg.colors.cpu(), g)
        views = self._views(k + c.num_targets, g)
        avatar = self.identity(shape, colors, device)
        images = self.render(avatar, views, device)
        cond = {key: t[:k].to(device) for key, t in views.items()}
        target = {key: t[k:].to(device) for key, t in views.items()}
        return SyntheticSample(index=int(index), images=images[:k], target_images=images[k:],
                               shape=shape.to(device), colors=colors.to(device), cond=cond, target=target)

