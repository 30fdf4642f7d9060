"""Key maps and loaders from the PyTorch formats; orbax storage of converted models."""

from vbridge_jax.checkpoints.io import CheckpointError
from vbridge_jax.checkpoints.convert import convert_path, find_components

__all__ = ["CheckpointError", "convert_path", "find_components"]
