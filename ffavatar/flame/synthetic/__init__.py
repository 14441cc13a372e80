"""The embedded default head: a procedural head with FLAME's exact structure (FLAME itself may not be
redistributed). ``layout`` builds the geometry, ``rig`` the blendshapes / skinning / correctives,
``colors`` the vertex colours, ``head`` assembles them into a FlameModel."""
from .head import synthetic_head, synthetic_layout
from .layout import SYNTHETIC_NUM_VERTICES, HeadLayout, build_layout

__all__ = ["synthetic_head", "synthetic_layout", "build_layout", "HeadLayout", "SYNTHETIC_NUM_VERTICES"]
