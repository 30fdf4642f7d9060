"""Flax NNX ports of the Wan2.2 models, and the parameter-free pixel codec for tiny models.

Loading converted weights into them is `vbridge_jax.checkpoints` (`load_dit`, `load_vae`):
this package imports nothing of checkpoints, data or training.
"""

from vbridge_jax.models.configs import DiTConfig, VAEConfig
from vbridge_jax.models.pixel_codec import PixelCodec, PixelCodecConfig
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.models.wan_vae import WanVAE

__all__ = ["DiTConfig", "PixelCodec", "PixelCodecConfig", "VAEConfig", "WanDiT", "WanVAE"]
