"""What a model folder records for restoring: the clip length the DiT was trained with, and its codec.

A model folder (written by `convert/wan_to_jax.py` or `python -m vbridge_jax.export`) holds
`dit/`, `vae/` (the Wan2.2 VAE, or the pixel codec's config) and `model.json`:

    {"frames": 5, "codec": "wan22"}

`frames` is the pseudo-video length (1 + 4k) the DiT learned: sampling with another length
puts the last frame elsewhere on the LQ -> HQ path, so restore uses it unless told otherwise.
A folder without `model.json` (converted before it existed, or the released checkpoint) reads
as 5 frames, the length the authors' evaluation script samples with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

FILENAME = "model.json"
DEFAULT_FRAMES = 5  # the authors' released evaluation samples 5 frames
COMPONENTS = ("dit", "vae")


class ModelInfoError(ValueError):
  """A model.json that cannot be read or holds bad values (one-line message naming the file)."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  frames: int = DEFAULT_FRAMES
  codec: str = "wan22"  # wan22 | pixel

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def model_root(path: str | os.PathLike) -> Path:
  """The model folder of `path`: itself, or its parent when `path` is its `dit/` or `vae/`."""
  path = Path(path)
  if path.name in COMPONENTS and not (path / FILENAME).is_file():
    return path.parent
  return path


def read_model_info(path: str | os.PathLike) -> ModelInfo:
  """The `ModelInfo` of a model folder (or of its `dit/`/`vae/`); defaults when none is stored."""
  file = model_root(path) / FILENAME
  if not file.is_file():
    return ModelInfo()
  try:
    data = json.loads(file.read_text())
    info = ModelInfo(frames=int(data.get("frames", DEFAULT_FRAMES)),
                     codec=str(data.get("codec", "wan22")))
  except (OSError, ValueError, TypeError, AttributeError) as e:
    raise ModelInfoError(f"{file}: not a model info file ({' '.join(str(e).split())})") from None
  if info.frames < 1:
    raise ModelInfoError(f"{file}: frames={info.frames} must be >= 1")
  return info


def write_model_info(path: str | os.PathLike, info: ModelInfo) -> Path:
  """Writes `path/model.json` atomically; returns its path."""
  file = Path(path) / FILENAME
  tmp = file.with_name(f".{FILENAME}.tmp")
  tmp.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
  os.replace(tmp, file)
  return file
