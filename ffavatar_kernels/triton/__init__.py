"""Triton kernels (imported lazily by the public ops; Triton is optional on CPU-only installs)."""
