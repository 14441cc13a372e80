"""The trained default model shipped in the package: the ``small`` preset trained on synthetic
identities of the embedded head (``configs/default_small.toml``; README "The default model").

It knows the synthetic head's identity space (shape, skin / hair / lip / iris tints, expressions,
poses, the training cameras) and nothing about real faces: photos of real people give an avatar
of the synthetic head's kind, not of them.
"""
from __future__ import annotations

import os

__all__ = ["DEFAULT_WEIGHTS", "default_weights_path", "has_default_weights"]

# the weights file beside this module (fp16 safetensors, FFAvatarModel.save_pretrained's format)
DEFAULT_WEIGHTS = "default_small.safetensors"


def default_weights_path() -> str:
    """Path of the shipped default weights (which may be missing from a source checkout that has
    not fetched them; see :func:`has_default_weights`)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), DEFAULT_WEIGHTS)


def has_default_weights() -> bool:
    """Whether this installation has the shipped default weights."""
    return os.path.isfile(default_weights_path())
