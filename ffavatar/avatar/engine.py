"""The animation engine: one avatar's per-frame work (skin, optional shading, rasterize) recorded once
in a CUDA graph with static input buffers and replayed for every batch of frames.

Driving an avatar live means rendering the same avatar thousands of times with new FLAME parameters.
Launched eagerly, each frame costs a few dozen kernel launches and the Python around them; replayed
from a graph it costs the copies of the parameters into the static buffers and one graph launch. The
rasterizer's bin normally waits for the intersection count on the host; under capture it takes its
capture way (buffers 1.5x the last count, the count stays on the device). A frame whose count exceeds
that capacity is detected after the replay (one host read per call), rendered again eagerly (the
exact way) and the graph is captured again with the larger count. On the CPU, or with
``graph=False``, the same steps run eagerly.

    engine = AnimationEngine(avatar, model, 512, 512, batch=8)
    frames = engine.render(expression, pose)            # [T,H,W,3], T frames of FLAME parameters
    for frame in engine.stream(tracker_frames()):       # live: parameters in, frame out
        show(frame)
"""
from __future__ import annotations

import numbers
import warnings
from typing import Iterable, Iterator, Optional

import torch

from ..flame import FlameModel
from ..geometry.cameras import intrinsics, look_at
from ..render import Backend, select_backend
from ..render.shading import shade

__all__ = ["AnimationEngine", "front_camera", "FRONT_EYE", "FRONT_TARGET", "FRONT_FOV_Y_DEG"]

FRONT_EYE = (0.0, -0.02, 0.75)      # the default camera: 0.75 m in front of the face, looking at it
FRONT_TARGET = (0.0, -0.02, 0.0)
FRONT_FOV_Y_DEG = 22.0
_MAX_SIDE = 32768                   # ffavatar_kernels.rasterize.MAX_IMAGE_SIDE


def front_camera(width: int, height: int, device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The default front camera: viewmat [4,4] (world-to-camera) and K [3,3] for width x height pixels."""
    vm = look_at(torch.tensor(FRONT_EYE, dtype=torch.float64), torch.tensor(FRONT_TARGET, dtype=torch.float64))
    return vm.to(device, dtype), intrinsics(width, height, FRONT_FOV_Y_DEG, dtype=dtype, device=device)


def _size(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"AnimationEngine: {name} expected an int in [{lo}, {hi}], got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"AnimationEngine: {name} expected an int in [{lo}, {hi}], got {value}")
    return int(value)


class AnimationEngine:
    """Renders frames of one avatar from FLAME parameters; on CUDA replayed from a CUDA graph.

    Args:
        avatar: the :class:`~ffavatar.avatar.Avatar` (its residuals are applied; later changes to the
            avatar are not seen: build a new engine).
        model: the FLAME model the avatar is bound to (fingerprint checked), on the rendering device.
        width, height: frame size in pixels.
        viewmat: [4,4] world-to-camera of the default camera (default: :func:`front_camera`).
        K: [3,3] intrinsics (default: :func:`front_camera`'s, 22 degrees vertical field of view).
        batch: frames per replay (the static buffers hold this many; calls with more are chunked,
            fewer render the rest of the batch too, from the previous parameters).
        background: RGB in [0,1].
        lit: shade with the camera-attached lights (default: the avatar's colours as they are).
        backend: from :func:`ffavatar.render.select_backend` (default: chosen for the device).
        graph: ``"auto"`` (capture on CUDA when the compiled kernels render; if capturing fails, warn
            and run eagerly), ``True`` (capture or raise) or ``False`` (always eager).
        verify: after each capture, check the first replay against the same batch rendered eagerly
            (one eager batch per capture); a mismatch turns the graph off with a warning
            (``graph=True``: raises).
    """

    def __init__(self, avatar, model: FlameModel, width: int, height: int, *, viewmat=None, K=None, batch: int = 1,
                 background=(0.0, 0.0, 0.0), lit: bool = False, backend: Optional[Backend] = None,
                 graph="auto", verify: bool = True):
        # duck-typed: avatar.py sits above this module (Avatar.engine builds engines)
        if not all(hasattr(avatar, n) for n in ("effective", "check_model", "_frames", "betas_shape")):
            raise TypeError(f"AnimationEngine: avatar expected an Avatar, got {type(avatar).__name__}")
        if not isinstance(model, FlameModel):
            raise TypeError(f"AnimationEngine: model expected a FlameModel, got {type(model).__name__}")
        if graph not in ("auto", True, False):
            raise ValueError(f"AnimationEngine: graph expected 'auto', True or False, got {graph!r}")
        avatar.check_model(model)
        if avatar.device != model.device:
            raise ValueError(f"AnimationEngine: the avatar is on {avatar.device} but the model on {model.device}; "
                             f"use avatar.to(model.device)")
        self.width = _size("width", width, 1, _MAX_SIDE)
        self.height = _size("height", height, 1, _MAX_SIDE)
        self.batch = _size("batch", batch, 1, 4096)
        self.avatar, self.model, self.lit = avatar, model, bool(lit)
        self.device, dt = model.device, model.dtype
        self.backend = backend or select_backend(self.device)
        dvm, dK = front_camera(self.width, self.height, self.device, dt)
        self._default_vm = self._matrix("viewmat", viewmat, (4, 4), dvm)
        K = self._matrix("K", K, (3, 3), dK)
        bg = torch.as_tensor(background, dtype=dt).to(self.device)
        if bg.numel() != 3 or not bool(torch.isfinite(bg).all()):
            raise ValueError(f"AnimationEngine: background expected 3 finite values (RGB), got {background!r}")
        B, J = self.batch, model.num_joints
        with torch.no_grad():
            g = avatar.effective()
            bs = avatar.betas_shape.to(dt)
            if bs.shape[0] < model.n_shape:
                bs = torch.nn.functional.pad(bs, (0, model.n_shape - bs.shape[0]))
            self._args = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in model.expression_lbs_args(bs))
            self._anchor_idx = g.anchor_idx.detach().clone()
            self._anchor_weights = g.anchor_weights.detach().to(dt).clone()
            self._offsets = g.offsets.detach().to(dt).clone()
            self._quats = g.quats.detach().to(dt).clone()
            N = self._offsets.shape[0]
            self._albedo = g.colors.detach().to(dt).clone()                         # [N,3]
            self._colors = self._albedo.expand(B, N, 3).clone()                       # [B,N,3]
            self._scales = g.scales.detach().to(dt).expand(B, N, 3).clone()           # [B,N,3]
            self._opacities = g.opacities.detach().to(dt).expand(B, N).clone()        # [B,N]
            self._bg = bg.reshape(1, 1, 3).expand(B, 1, 3).clone()                    # [B,1,3]
        # the static input buffers (the graph reads them) and the output it writes
        self._expr = torch.zeros(B, model.n_expr, dtype=dt, device=self.device)           # [B,n_expr]
        self._pose = torch.zeros(B, J * 3, dtype=dt, device=self.device)                  # [B,J*3]
        self._transl = torch.zeros(B, 3, dtype=dt, device=self.device)                    # [B,3]
        self._vm = self._default_vm.expand(B, 4, 4).clone()                            # [B,4,4]
        self._K = K.expand(B, 3, 3).clone()                                            # [B,3,3]
        self._out = torch.zeros(B, self.height, self.width, 3, dtype=dt, device=self.device)
        self._overflow = torch.zeros((), dtype=torch.bool, device=self.device)
        # graph: on CUDA, with the compiled rasterizer (the reference twins are not worth capturing)
        self._want_graph = graph is not False and self.device.type == "cuda" and not self.backend.tiled_reference
        if graph is True and not self._want_graph:
            raise ValueError("AnimationEngine: graph=True needs a CUDA model and the compiled kernels "
                             f"({self.backend.description})")
        self._strict = graph is True
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self.verify = bool(verify)
        self._verify_next = False
        self.captures = 0          # graphs captured (a capacity overflow captures again)
        self.replays = 0

    # ------------------------------------------------------------------------------ inputs
    def _matrix(self, name: str, value, shape: tuple, default: torch.Tensor) -> torch.Tensor:
        if value is None:
            return default
        t = torch.as_tensor(value)
        if tuple(t.shape) != shape:
            raise ValueError(f"AnimationEngine: {name} expected shape {list(shape)}, got {list(t.shape)}")
        t = t.to(self.device, self.model.dtype)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"AnimationEngine: {name} has non-finite values")
        return t

    @property
    def uses_graph(self) -> bool:
        """Whether frames are replayed from a CUDA graph (after the first call)."""
        return self._want_graph

    def set_camera(self, viewmat=None, K=None) -> None:
        """Change the default camera ([4,4] world-to-camera) and / or the intrinsics ([3,3]); the graph
        reads them from its buffers, so nothing is captured again."""
        if viewmat is not None:
            self._default_vm = self._matrix("viewmat", viewmat, (4, 4), self._default_vm)
        if K is not None:
            self._K.copy_(self._matrix("K", K, (3, 3), self._K[0]).expand_as(self._K))

    def _inputs(self, expression, pose, translation, viewmats):
        """-> expression [T,n_expr], pose [T,J*3], translation [T,3], viewmats [T,4,4] (finite, on device)."""
        m, dt, dev, J = self.model, self.model.dtype, self.device, self.model.num_joints
        if pose is not None:
            p = torch.as_tensor(pose)
            if p.dim() >= 3 and p.shape[-2:] == (3, 3):
                raise ValueError("AnimationEngine: pose expected axis-angle ([T,J*3], [J*3] or [T,J,3]); for "
                                 "rotation matrices use Avatar.render")
        expr, pose = self.avatar._frames(expression, pose, m)
        T = expr.shape[0]
        if translation is None:
            tr = torch.zeros(T, 3, dtype=dt, device=dev)
        else:
            tr = torch.as_tensor(translation).to(dev, dt)
            tr = tr[None] if tr.dim() == 1 else tr
            if tr.dim() != 2 or tr.shape[1] != 3 or tr.shape[0] not in (1, T):
                raise ValueError(f"AnimationEngine: translation expected shape [3] or [{T},3], "
                                 f"got {list(torch.as_tensor(translation).shape)}")
            tr = tr.expand(T, 3)
        if viewmats is None:
            vm = self._default_vm.expand(T, 4, 4)
        else:
            vm = torch.as_tensor(viewmats).to(dev, dt)
            vm = vm[None] if vm.dim() == 2 else vm
            if vm.dim() != 3 or vm.shape[1:] != (4, 4) or vm.shape[0] not in (1, T):
                raise ValueError(f"AnimationEngine: viewmats expected shape [4,4] or [{T},4,4], "
                                 f"got {list(torch.as_tensor(viewmats).shape)}")
            vm = vm.expand(T, 4, 4)
        # one host read for all four (NaN / Inf would render garbage or nothing, silently)
        bad = torch.stack([~torch.isfinite(x).all() for x in (expr, pose, tr, vm)]).tolist()
        if any(bad):
            names = [n for n, b in zip(("expression", "pose", "translation", "viewmats"), bad) if b]
            raise ValueError(f"AnimationEngine: {', '.join(names)} has non-finite values (NaN or Inf)")
        return expr, pose, tr, vm

    # ------------------------------------------------------------------------------ the frame work
    def _compute(self) -> None:
        """Skin, shade and rasterize the static inputs into ``_out`` (what the graph records)."""
        be = self.backend
        means, quats = be.skin_gaussians(self._expr, self._pose, *self._args, self._anchor_idx, self._anchor_weights,
                                         self._offsets, self._quats)
        means = means + self._transl[:, None, :]
        colors = shade(self._albedo, quats, self._vm) if self.lit else self._colors
        if be.tiled_reference:
            self._out.copy_(be.render_scenes(means, quats, self._scales, self._opacities, colors, self._vm, self._K,
                                             self.width, self.height, self._bg))
            return
        img, _, meta = be.rasterize(means, quats, self._scales, self._opacities, colors, self._vm[:, None],
                                    self._K[:, None], self.width, self.height, backgrounds=self._bg)
        self._out.copy_(img[:, 0].clamp(0.0, 1.0))
        # under capture flatten_ids hold the bin's capacity; more tile intersections than that were cut
        self._overflow.copy_(meta["tiles_per_gauss"].sum(dtype=torch.int64) > meta["flatten_ids"].shape[0])

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):     # warm-up: caches, autotuning, and the bin's guess of the count
                self._compute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            self._compute()
        self._graph = g
        self.captures += 1
        self._verify_next = self.verify

    def _run_batch(self) -> None:
        if self._want_graph and self._graph is None:
            try:
                self._capture()
            except Exception as exc:                   # noqa: BLE001 - reported, then the eager way
                if self._strict:
                    raise RuntimeError(f"AnimationEngine: capturing the CUDA graph failed: {exc}") from exc
                warnings.warn(f"AnimationEngine: capturing the CUDA graph failed, rendering eagerly: "
                              f"{str(exc).splitlines()[0]}", RuntimeWarning, stacklevel=3)
                self._want_graph = False
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
        if self._graph is None:
            self._compute()
            return
        self._graph.replay()
        self.replays += 1
        if bool(self._overflow):                       # more intersections than the captured capacity:
            self._compute()                            # this batch again, the exact way (raises the guess)
            self._graph = None                         # and a new capture at the next call
        elif self._verify_next:
            self._verify_next = False
            self._check_replay()

    def _check_replay(self) -> None:
        """After a capture: the replayed frames against the same batch rendered eagerly; a mismatch
        (a defect) turns the graph off, with a warning, rather than passing wrong frames on."""
        replayed = self._out.clone()
        self._compute()
        err = (replayed - self._out).abs().max().item()
        if err > 1e-3:
            msg = (f"AnimationEngine: the CUDA graph's frames differ from the eager render by {err:.3g}; "
                   f"rendering eagerly from now on (please report this)")
            if self._strict:
                raise RuntimeError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            self._want_graph, self._graph = False, None

    # ------------------------------------------------------------------------------ public
    @torch.no_grad()
    def render(self, expression=None, pose=None, *, translation=None, viewmats=None, copy: bool = True) -> torch.Tensor:
        """Render T frames.

        Args:
            expression: [T,n] or [n] expression coefficients (n <= model.n_expr), or None (zeros).
            pose: [T,J*3], [J*3] or [T,J,3] axis-angle in FLAME's joint order (global, neck, jaw,
                left eye, right eye), or None (zeros).
            translation: [T,3] or [3] added to every Gaussian, or None.
            viewmats: [T,4,4] or [4,4] world-to-camera per frame, or None (the engine's camera).
            copy: False returns the engine's output buffer itself when T <= batch (no copy; the next
                call overwrites it).

        Returns:
            [T,H,W,3] images in [0,1] on the engine's device.
        """
        expr, pose, tr, vm = self._inputs(expression, pose, translation, viewmats)
        T, B = expr.shape[0], self.batch
        outs = []
        for s in range(0, T, B):
            e = min(T, s + B)
            n = e - s
            self._expr[:n].copy_(expr[s:e])
            self._pose[:n].copy_(pose[s:e])
            self._transl[:n].copy_(tr[s:e])
            self._vm[:n].copy_(vm[s:e])
            self._run_batch()
            if not copy and T <= B:
                return self._out[:n]
            outs.append(self._out[:n].clone())
        if not outs:
            return torch.empty(0, self.height, self.width, 3, dtype=self.model.dtype, device=self.device)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def stream(self, frames: Iterable) -> Iterator[torch.Tensor]:
        """Live driving: one frame of parameters in, one image [H,W,3] out, as they come.

        Each item is a dict with any of ``expression``, ``pose``, ``translation``, ``viewmat`` (the
        keys of :meth:`render` for one frame) or a tuple ``(expression, pose)``. The image is a copy.
        """
        for i, item in enumerate(frames):
            if isinstance(item, dict):
                unknown = set(item) - {"expression", "pose", "translation", "viewmat"}
                if unknown:
                    raise ValueError(f"AnimationEngine.stream: frame {i} has unknown keys {sorted(unknown)} "
                                     f"(expected expression, pose, translation, viewmat)")
                img = self.render(item.get("expression"), item.get("pose"), translation=item.get("translation"),
                                  viewmats=item.get("viewmat"))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                img = self.render(item[0], item[1])
            else:
                raise TypeError(f"AnimationEngine.stream: frame {i} expected a dict or an (expression, pose) "
                                f"pair, got {type(item).__name__}")
            if img.shape[0] != 1:
                raise ValueError(f"AnimationEngine.stream: frame {i} holds {img.shape[0]} frames of parameters; "
                                 f"stream takes one per item (use render for batches)")
            yield img[0]

    def __repr__(self) -> str:
        way = "CUDA graph" if self._want_graph else "eager"
        return (f"AnimationEngine({self.avatar.num_gaussians} Gaussians, {self.width}x{self.height}, batch "
                f"{self.batch}, {way} on {self.device})")

