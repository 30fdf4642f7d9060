"""Flax NNX ports of the Wan2.2 models, and the parameter-free pixel codec for tiny models."""

from vbridge_jax.models.configs import DiTConfig, VAEConfig
from vbridge_jax.models.model_info import ModelInfo, read_model_info, write_model_info
from vbridge_jax.models.pixel_codec import PixelCodec, PixelCodecConfig
from vbridge_jax.models.wan_dit import WanDiT, load_dit
from vbridge_jax.models.wan_vae import WanVAE, load_vae

__all__ = ["DiTConfig", "ModelInfo", "PixelCodec", "PixelCodecConfig", "VAEConfig", "WanDiT",
           "WanVAE", "load_dit", "load_vae", "read_model_info", "write_model_info"]
