"""The FFAvatar network: DINOv2-layout encoder, Query-Former, Gaussian decoder, FLAME estimator,
presets and the model that turns photos into an :class:`~ffavatar.avatar.Avatar`."""
from .attention import attention, use_sdpa
from .encoder import ViTConfig, ViTEncoder
from .flame_estimator import FlameEstimate, FlameEstimator
from .gaussian_decoder import GaussianAttributes, GaussianDecoder
from .model import FFAvatarModel, preprocess
from .presets import PRESETS, Preset, count_parameters, get_preset, parameter_table
from .query_former import QueryFormer
from .weights import EncoderWeightsError, load_encoder_weights

__all__ = ["FFAvatarModel", "Preset", "PRESETS", "get_preset", "count_parameters", "parameter_table",
           "ViTConfig", "ViTEncoder", "QueryFormer", "GaussianDecoder", "GaussianAttributes",
           "FlameEstimator", "FlameEstimate", "EncoderWeightsError", "load_encoder_weights",
           "attention", "use_sdpa", "preprocess"]
