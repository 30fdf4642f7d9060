"""What a model folder records for restoring: the clip length the DiT was trained with, its
codec, and optionally the settings its held-out evaluation restored with.

A model folder (written by `convert/wan_to_jax.py` or `python -m vbridge_jax.export`) holds
`dit/`, `vae/` (the Wan2.2 VAE, or the pixel codec's config) and `model.json`:

    {"frames": 5, "codec": "wan22"}

`frames` is the pseudo-video length (1 + 4k) the DiT learned: sampling with another length
puts the last frame elsewhere on the LQ -> HQ path, so restore uses it unless told otherwise.
A folder without `model.json` (converted before it existed, or the released checkpoint) reads
as 5 frames, the length the authors' evaluation script samples with.

`evaluated_with` (optional; `python -m vbridge_jax.export` writes it for a run with a held-out
evaluation, `config.eval` of training/heldout.py) records how that evaluation restored:
the sampler fields (`solver`, `steps`, `shift`, `schedule`, `guidance`, `cfg_skip`), the noise
`seed`, the DiT's `dtype` / `param_dtype`, the codec's `vae_dtype` and `quantize`:

    {"frames": 5, "codec": "pixel", "evaluated_with": {"solver": "euler", "steps": 4,
     "shift": 5.0, "schedule": "diffusers", "guidance": 1.0, "cfg_skip": 0.0, "seed": 43,
     "dtype": "float32", "param_dtype": "float32", "vae_dtype": "float32",
     "quantize": "truncate"}}

Restore (vbridge_jax/inference/folder.py) uses a recorded field unless its command line sets it,
so that it scores what the training log reported. Absent (older files, converted PyTorch
checkpoints, the released weights), or a field missing from it: nothing recorded, restore's
own defaults. Values are checked on read (a one-line `ModelInfoError` naming file and field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from vbridge_jax.diffusion.sampler import SCHEDULES, SOLVERS
from vbridge_jax.inference.geometry import QUANTIZE
from vbridge_jax.models.configs import DTYPES
from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import ModelInfoError

FILENAME = "model.json"
CODECS = ("wan22", "pixel")
DEFAULT_FRAMES = 5  # the authors' released evaluation samples 5 frames
COMPONENTS = ("dit", "vae")
EVALUATED_WITH = "evaluated_with"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """The restore settings a model was evaluated with; None: not recorded."""

  solver: str | None = None  # vbridge_jax.diffusion.sampler.SOLVERS
  steps: int | None = None
  shift: float | None = None
  schedule: str | None = None  # vbridge_jax.diffusion.sampler.SCHEDULES
  guidance: float | None = None
  cfg_skip: float | None = None
  seed: int | None = None
  dtype: str | None = None  # the DiT's compute dtype (models/configs.py DTYPES)
  param_dtype: str | None = None
  vae_dtype: str | None = None  # the codec's compute dtype (a Wan VAE's; the pixel codec has none)
  quantize: str | None = None  # inference.geometry.QUANTIZE

  def recorded(self) -> dict[str, Any]:
    """The recorded fields, in declaration order."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  frames: int = DEFAULT_FRAMES
  codec: str = "wan22"  # wan22 | pixel
  evaluated_with: EvalSettings | None = None

  def to_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = dict(frames=self.frames, codec=self.codec)
    if self.evaluated_with is not None:
      out[EVALUATED_WITH] = self.evaluated_with.recorded()
    return out


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
    frames, codec = data.get("frames", DEFAULT_FRAMES), data.get("codec", "wan22")
  except (OSError, ValueError, TypeError, AttributeError) as e:
    raise ModelInfoError(f"{file}: not a model info file ({' '.join(str(e).split())})") from None
  if not _integer(frames) or frames < 1:  # 1 + tk: checked against the codec where it is read
    raise ModelInfoError(f"{file}: frames={frames!r} must be a whole number >= 1")
  if codec not in CODECS:
    raise ModelInfoError(f"{file}: codec={codec!r} is not one of {', '.join(CODECS)}")
  info = ModelInfo(frames=int(frames), codec=codec)
  if data.get(EVALUATED_WITH) is None:
    return info
  try:
    record = eval_settings(data[EVALUATED_WITH])
  except ValueError as e:
    raise ModelInfoError(f"{file}: {EVALUATED_WITH}{e}") from None
  return dataclasses.replace(info, evaluated_with=record)


def eval_settings(data: Any) -> EvalSettings:
  """A checked `EvalSettings` from a dict; ValueError(".field=value: why") on a bad value."""
  if not isinstance(data, dict):
    raise ValueError(f"={data!r}: not an object of settings")
  known = {f.name for f in dataclasses.fields(EvalSettings)}
  for key in data:
    if key not in known:
      raise ValueError(f".{key}: unknown field (known: {', '.join(sorted(known))})")
  checks = _checks()
  for key, value in data.items():
    if value is None:
      continue
    why = checks[key](value)
    if why:
      raise ValueError(f".{key}={value!r}: {why}")
  return EvalSettings(**{k: (float(v) if k in _FLOATS and v is not None else v)
                         for k, v in data.items()})


_FLOATS = ("shift", "guidance", "cfg_skip")


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _one_of(choices) -> Any:
  def check(v: Any) -> str | None:
    return None if isinstance(v, str) and v in choices else f"not one of {', '.join(choices)}"
  return check


def _checks() -> dict[str, Any]:
  """Per field: value -> None when valid, else why not (the choices from their one source)."""
  dtype = _one_of(tuple(DTYPES))
  return dict(
      solver=_one_of(SOLVERS), schedule=_one_of(SCHEDULES), quantize=_one_of(QUANTIZE),
      dtype=dtype, param_dtype=dtype, vae_dtype=dtype,
      steps=lambda v: None if _integer(v) and v >= 1 else "must be an integer >= 1",
      seed=lambda v: None if _integer(v) else "must be an integer",
      shift=lambda v: None if _number(v) and v > 0 else "must be a number > 0",
      guidance=lambda v: None if _number(v) else "must be a number",
      cfg_skip=lambda v: None if _number(v) and 0 <= v <= 1 else "must be a number in [0, 1]")


def write_model_info(path: str | os.PathLike, info: ModelInfo) -> Path:
  """Writes `path/model.json` atomically; returns its path."""
  return atomic.write_json(Path(path) / FILENAME, info.to_dict())
