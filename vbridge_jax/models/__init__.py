"""Flax NNX ports of the Wan2.2 models."""

from vbridge_jax.models.configs import DiTConfig
from vbridge_jax.models.wan_dit import WanDiT, load_dit

__all__ = ["DiTConfig", "WanDiT", "load_dit"]
