"""FLAME-structured head models: FlameModel and its files (pkl / npz), the embedded synthetic head,
the canonical Gaussians anchored to a model's subdivided surface, and motion (parameter sequences)."""
from .fingerprint import flame_fingerprint, synthetic_fingerprint
from .gaussians import CanonicalGaussians, anchor_points, canonical_gaussians, vertex_normals
from .io import load_flame, save_flame_npz
from .model import FlameFileError, FlameModel
from .motion import motion_script
from .motion_io import Motion, MotionFileError, load_motion, save_motion
from .synthetic import synthetic_head

__all__ = ["FlameModel", "FlameFileError", "load_flame", "save_flame_npz", "synthetic_head", "CanonicalGaussians",
           "canonical_gaussians", "anchor_points", "vertex_normals", "motion_script",
           "flame_fingerprint", "synthetic_fingerprint", "Motion", "MotionFileError", "load_motion", "save_motion"]
