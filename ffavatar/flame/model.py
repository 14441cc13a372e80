"""The :class:`FlameModel` container: FLAME's tensors in the smplx ``lbs`` layout.

FLAME (Li et al. 2017) is licensed and may not be redistributed, so the library loads a user's own
``generic_model.pkl`` (FLAME 2020 / 2023) or an ``.npz`` export (:mod:`ffavatar.flame.io`), and
ships a procedural stand-in with the same structure (:func:`ffavatar.flame.synthetic_head`).
"""
from __future__ import annotations

import dataclasses
import numbers

import torch

__all__ = ["FlameModel", "FlameFileError"]


class FlameFileError(ValueError):
    """A FLAME model file is missing, unreadable or malformed (names the file and the key)."""


@dataclasses.dataclass
class FlameModel:
    """FLAME-structured head model: every array the LBS kernels take, as torch tensors.

    Attributes (V vertices, J joints, S = n_shape + n_expr blendshapes, P = (J-1)*9, F faces):
        v_template:    [V,3] float, template mesh.
        shapedirs:     [V,3,S] float, shape components first, then expression components.
        posedirs:      [P,V*3] float, pose correctives in the smplx layout
                       (``pose_offsets = (pose_feature [B,P] @ posedirs).view(B,V,3)``).
        J_regressor:   [J,V] float, dense joint regressor.
        parents:       [J] int64, parent joint of each joint, -1 for the root.
        lbs_weights:   [V,J] float, skinning weights (rows sum to 1).
        faces:         [F,3] int64, triangles.
        vertex_colors: optional [V,3] float in [0,1].
        n_shape:       number of shape components (the first ``n_shape`` of S).
        n_expr:        number of expression components (the last ``n_expr`` of S).

    Validation (``TypeError``/``ValueError`` naming the field): types, shapes, dtypes, one device for
    every tensor (``vertex_colors`` included); ``parents`` must be a tree listed in order
    (``parents[0] == -1`` and ``0 <= parents[j] < j`` for ``j > 0``) and ``faces`` must index
    vertices in ``[0, V)``. These two *value* checks run only for CPU tensors: on an accelerator
    they would need a host sync (DESIGN section 3). Models are normally built on the CPU
    (:func:`load_flame`, :func:`ffavatar.flame.synthetic_head`) and moved with :meth:`to`, so
    their values are checked once, before the move.
    """

    v_template: torch.Tensor
    shapedirs: torch.Tensor
    posedirs: torch.Tensor
    J_regressor: torch.Tensor
    parents: torch.Tensor
    lbs_weights: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    n_shape: int = 300
    n_expr: int = 100

    def __post_init__(self) -> None:
        self._validate()
        # expression_lbs_args caches (not dataclass fields): (shapedirs, its version, expression slice)
        # and (v_template, shapedirs, their versions, betas_shape clone, shaped template)
        self._expr_cache: tuple | None = None
        self._shaped_cache: tuple | None = None

    # --- validation --------------------------------------------------------------------------
    def _validate(self) -> None:
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights", "faces"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"FlameModel.{name}: expected a torch.Tensor, got {type(getattr(self, name)).__name__}")
        vt = self.v_template
        if vt.dim() != 2 or vt.shape[1] != 3:
            raise ValueError(f"FlameModel.v_template: expected shape [V,3], got {list(vt.shape)}")
        if not vt.is_floating_point():
            raise TypeError(f"FlameModel.v_template: expected a floating dtype, got {vt.dtype}")
        V = vt.shape[0]
        dt = vt.dtype
        par = self.parents
        if par.dim() != 1 or par.numel() == 0:
            raise ValueError(f"FlameModel.parents: expected shape [J] with J >= 1, got {list(par.shape)}")
        if par.dtype != torch.int64:
            raise TypeError(f"FlameModel.parents: expected dtype int64, got {par.dtype}")
        J = par.shape[0]
        if par.device.type == "cpu" and J > 0:
            bad = (par[1:] < 0) | (par[1:] >= torch.arange(1, J))
            if int(par[0]) != -1 or bool(bad.any()):
                raise ValueError("FlameModel.parents: expected a kinematic tree in order (parents[0] == -1, "
                                 f"0 <= parents[j] < j for j > 0), got {par.tolist()}")
        S = self.shapedirs.shape[-1] if self.shapedirs.dim() == 3 else -1
        P = (J - 1) * 9
        expect = {
            "shapedirs": (V, 3, S),
            "posedirs": (P, V * 3),
            "J_regressor": (J, V),
            "lbs_weights": (V, J),
        }
        for name, shape in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or S < 0:
                want = "[V,3,S]" if name == "shapedirs" else str(list(shape))
                raise ValueError(f"FlameModel.{name}: expected shape {want} (V={V}, J={J}), got {list(t.shape)}")
            if t.dtype != dt:
                raise TypeError(f"FlameModel.{name}: expected dtype {dt} (that of v_template), got {t.dtype}")
        f = self.faces
        if f.dim() != 2 or f.shape[1] != 3:
            raise ValueError(f"FlameModel.faces: expected shape [F,3], got {list(f.shape)}")
        if f.dtype != torch.int64:
            raise TypeError(f"FlameModel.faces: expected dtype int64, got {f.dtype}")
        if f.device.type == "cpu" and f.numel() > 0:
            fmin, fmax = int(f.min()), int(f.max())
            if fmin < 0 or fmax >= V:
                raise ValueError(f"FlameModel.faces: expected vertex indices in [0, {V}), "
                                 f"got min {fmin}, max {fmax}")
        if self.vertex_colors is not None:
            vc = self.vertex_colors
            if not isinstance(vc, torch.Tensor):
                raise TypeError(f"FlameModel.vertex_colors: expected a torch.Tensor or None, got {type(vc).__name__}")
            if tuple(vc.shape) != (V, 3):
                raise ValueError(f"FlameModel.vertex_colors: expected shape [{V},3], got {list(vc.shape)}")
            if vc.dtype != dt:
                raise TypeError(f"FlameModel.vertex_colors: expected dtype {dt}, got {vc.dtype}")
        for name in ("n_shape", "n_expr"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, numbers.Integral):
                raise TypeError(f"FlameModel.{name}: expected an int, got {type(n).__name__}")
        if int(self.n_shape) < 0 or int(self.n_expr) < 0 or int(self.n_shape) + int(self.n_expr) != S:
            raise ValueError(
                f"FlameModel: n_shape + n_expr must equal the number of blendshapes S={S}, "
                f"got n_shape={self.n_shape}, n_expr={self.n_expr}")
        devs = {name: getattr(self, name).device for name in
                ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights", "faces")}
        if self.vertex_colors is not None:
            devs["vertex_colors"] = self.vertex_colors.device
        if len(set(devs.values())) != 1:
            raise ValueError("FlameModel: all tensors must be on one device, got "
                             + ", ".join(f"{k} on {v}" for k, v in devs.items()))

    # --- properties / conversion -------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return self.parents.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    @property
    def dtype(self) -> torch.dtype:
        return self.v_template.dtype

    def to(self, device: "torch.device | str | None" = None, dtype: "torch.dtype | None" = None) -> "FlameModel":
        """Return a copy on ``device`` with floating tensors cast to ``dtype`` (integers stay int64)."""
        def mv(t: torch.Tensor | None, floating: bool) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if floating else None)
        return FlameModel(
            v_template=mv(self.v_template, True), shapedirs=mv(self.shapedirs, True),
            posedirs=mv(self.posedirs, True), J_regressor=mv(self.J_regressor, True),
            parents=mv(self.parents, False), lbs_weights=mv(self.lbs_weights, True),
            faces=mv(self.faces, False), vertex_colors=mv(self.vertex_colors, True),
            n_shape=self.n_shape, n_expr=self.n_expr)

    def lbs_args(self) -> tuple:
        """(v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights), in kernel order."""
        return (self.v_template, self.shapedirs, self.posedirs, self.J_regressor, self.parents,
                self.lbs_weights)

    def expression_lbs_args(self, betas_shape: torch.Tensor) -> tuple:
        """:meth:`lbs_args` for a fixed shape: the kernels' expression-only fast path.

        Returns ``(v_shaped, shapedirs_expr, posedirs, J_regressor, parents, lbs_weights)`` with
        ``v_shaped`` [V,3] = ``shape_template(v_template, shapedirs, betas_shape)`` and
        ``shapedirs_expr`` [V,3,n_expr] = ``shapedirs[..., n_shape:]`` (contiguous); call the kernels
        with betas = the expression coefficients [B,n_expr]. Same result as :meth:`lbs_args` with
        betas = [betas_shape, expression] (up to round-off), but the kernels read n_expr directions.

        Without grad both are cached on the model: the expression slice once (the kernels cache joint
        products per tensor object, so every call returns the same object) and ``v_shaped`` for the
        last ``betas_shape`` (compared by value, a host sync on CUDA: get the arguments once per
        shape, as the Animator does; a model tensor changed in place or replaced also
        recomputes). When grad is enabled and ``betas_shape``, ``v_template`` or ``shapedirs``
        requires it (fitting), both are computed fresh so autograd reaches them; nothing is stored.
        Inference tensors (a model made under ``torch.inference_mode()``) are also computed fresh.

        Args:
            betas_shape: [n_shape] or [1,n_shape] shape coefficients (model dtype and device).
        """
        from ffavatar_kernels.flame_lbs import shape_template
        if not isinstance(betas_shape, torch.Tensor):
            raise TypeError("expression_lbs_args: betas_shape expected a torch.Tensor, "
                            f"got {type(betas_shape).__name__}")
        if tuple(betas_shape.shape) not in ((self.n_shape,), (1, self.n_shape)):
            raise ValueError(f"expression_lbs_args: betas_shape expected shape [{self.n_shape}] or "
                             f"[1,{self.n_shape}] (n_shape), got {list(betas_shape.shape)}")
        vt, sd = self.v_template, self.shapedirs
        rest = (self.posedirs, self.J_regressor, self.parents, self.lbs_weights)
        fresh = (torch.is_grad_enabled() and any(t.requires_grad for t in (betas_shape, vt, sd))) or \
            vt.is_inference() or sd.is_inference()  # (inference tensors have no version counter)
        if fresh:
            return (shape_template(vt, sd, betas_shape), sd[..., self.n_shape:].contiguous(), *rest)
        # computed as normal tensors even under torch.inference_mode(): later calls may need autograd.
        # Read and written through locals: another thread may replace a cache in between.
        with torch.no_grad(), torch.inference_mode(False):
            e = self._expr_cache
            if not _same_tensors(e, (sd,)):
                e = self._expr_cache = (sd, sd._version, sd[..., self.n_shape:].contiguous())  # [V,3,n_expr]
            c = self._shaped_cache
            bs = betas_shape.reshape(-1)                                                  # [n_shape]
            if not (_same_tensors(c, (vt, sd)) and _same_values(c[-2], bs)):
                c = self._shaped_cache = (vt, sd, vt._version, sd._version, bs.clone(),
                                          shape_template(vt, sd, bs))                     # v_shaped [V,3]
        return (c[-1], e[-1], *rest)


def _same_tensors(cache: tuple | None, tensors: tuple) -> bool:
    """Whether ``cache`` (k tensors, their k versions, then values) was made from ``tensors`` as they are now."""
    k = len(tensors)
    return cache is not None and all(a is t for a, t in zip(cache[:k], tensors)) and \
        cache[k:2 * k] == tuple(t._version for t in tensors)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
