"""Key maps and loaders from the PyTorch formats; orbax storage of converted models; the
model folder's `model.json`."""

from vbridge_jax.checkpoints.convert import convert_path, find_components
from vbridge_jax.checkpoints.loading import load_dit, load_vae
from vbridge_jax.checkpoints.model_info import ModelInfo, read_model_info, write_model_info
from vbridge_jax.utils.errors import CheckpointError

__all__ = ["CheckpointError", "ModelInfo", "convert_path", "find_components", "load_dit", "load_vae",
           "read_model_info", "write_model_info"]
