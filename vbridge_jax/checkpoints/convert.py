"""Detects which components a PyTorch checkpoint path holds and converts all of them.

Each component module (`dit`, `vae`) provides a `Converter`: `find(path)` returns the places
under `path` that hold that component (in any layout it knows), `convert(found, dtype)`
returns `(config_dict, params)`. `convert_path` runs every converter, writes the results
to a staging folder and moves them into `OUT/<name>/` only when all of them succeeded.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ml_dtypes

from vbridge_jax.checkpoints.io import CheckpointError, write_component

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class Found:
  """A component located on disk: its name, layout (e.g. 'wan', 'diffusers') and files."""

  name: str
  layout: str
  path: Path
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Converter:
  name: str
  find: Callable[[Path], Found | None]
  convert: Callable[[Found, Any], tuple[dict, dict]]


def converters() -> list[Converter]:
  from vbridge_jax.checkpoints import dit  # pylint: disable=import-outside-toplevel
  out = [dit.CONVERTER]
  try:
    from vbridge_jax.checkpoints import vae  # pylint: disable=import-outside-toplevel
  except ImportError:
    pass
  else:
    out.append(vae.CONVERTER)
  return out


def find_components(src: Path) -> list[Found]:
  src = Path(src)
  if not src.exists():
    raise CheckpointError(f"{src}: no such file or folder")
  found = [f for c in converters() if (f := c.find(src)) is not None]
  if not found:
    raise CheckpointError(f"{src}: holds no Wan2.2 component this converter knows "
                          f"(a DiT in the original or diffusers layout, or the VAE)")
  return found


def convert_path(src: Path, out: Path, dtype: str = "float32",
                 log: Callable[[str], None] = print) -> list[Path]:
  """Converts every component under `src` into `out/<name>/`; all or nothing."""
  if dtype not in DTYPES:
    raise CheckpointError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
  found = find_components(src)
  out = Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".convert.", dir=out))
  by_name = {c.name: c for c in converters()}
  try:
    for f in found:
      log(f"{f.name}: {f.layout} layout at {f.path}")
      config, params = by_name[f.name].convert(f, DTYPES[dtype])
      write_component(staging, f.name, config, params, source=f"{f.layout}:{f.path}")
      del params
    written = []
    for f in found:
      final = out / f.name
      if final.exists():
        shutil.rmtree(final)
      os.replace(staging / f.name, final)
      written.append(final)
      log(f"{f.name}: wrote {final}")
    return written
  finally:
    shutil.rmtree(staging, ignore_errors=True)
