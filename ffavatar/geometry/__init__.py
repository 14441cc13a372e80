"""Geometry without a head model: cameras (OpenCV / gsplat convention), loop subdivision into
anchors, rotations (the one quaternion <-> matrix implementation)."""
from .cameras import intrinsics, look_at, orbit
from .rotations import matrix_to_quat, quat_mul, quat_normal_axis, quat_to_matrix, tangent_frames
from .subdivide import mesh_edges, subdivide, subdivision_counts

__all__ = ["intrinsics", "look_at", "orbit", "quat_to_matrix", "matrix_to_quat", "quat_mul", "quat_normal_axis",
           "tangent_frames", "subdivide", "mesh_edges", "subdivision_counts"]
