"""Detects which components a PyTorch checkpoint path holds and converts all of them.

Each component module (`dit`, `vae`) provides a `Converter`: `find(path)` returns the places
under `path` that hold that component (in any layout it knows), `convert(found, dtype)`
returns `(config_dict, params)`. `convert_path` runs every converter, writes the results
to a staging folder and moves them into `OUT/<name>/` only when all of them succeeded, then
writes `OUT/model.json` (`vbridge_jax.checkpoints.model_info`; kept as it is when only a VAE was
converted into a folder that has one): the frame count the DiT samples
with and the codec. The frame count is `frames` when given, else the source's own
`model.json` (a folder written by `python -m vbridge_jax.export --format wan|diffusers`),
else 5, the length the authors' eval.sh samples the released checkpoint with.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from vbridge_jax.checkpoints import dit, vae
from vbridge_jax.checkpoints.components import Converter, Found
from vbridge_jax.checkpoints.io import write_component
from vbridge_jax.checkpoints.model_info import FILENAME, ModelInfo, read_model_info, write_model_info
from vbridge_jax.models.configs import DTYPES  # name -> numpy dtype (the one map)
from vbridge_jax.utils import atomic, lock
from vbridge_jax.utils.errors import CheckpointError, ModelInfoError, VBridgeError

# One conversion per --out at a time (`utils.lock`); its staging folders, which a conversion
# killed before it finished leaves behind, are removed by the next one.
LOCK_NAME = ".convert.lock"
STAGING_PATTERN = r"\.convert\.[A-Za-z0-9_]{8}"


def converters() -> list[Converter]:
  return [dit.CONVERTER, vae.CONVERTER]


def find_components(src: Path) -> list[Found]:
  src = Path(src)
  if not src.exists():
    raise CheckpointError(f"{src}: no such file or folder")
  found = [f for c in converters() if (f := c.find(src)) is not None]
  if not found:
    raise CheckpointError(f"{src}: holds no Wan2.2 component this converter knows "
                          f"(a DiT in the original or diffusers layout, or the VAE)")
  return found


def _source_info(src: Path, frames: int | None):
  """The ModelInfo to record: the source's model.json (beside or above its DiT), `frames` wins."""
  src = Path(src)
  info = ModelInfo()
  for folder in (src, src.parent) if src.is_dir() else (src.parent,):
    if (folder / FILENAME).is_file():
      try:
        info = read_model_info(folder)
      except ModelInfoError as e:
        raise CheckpointError(str(e)) from None
      break
  if frames is not None:
    if frames < 1 or (frames - 1) % 4:
      raise CheckpointError(f"--frames {frames}: must be 1 + 4k")
    info = dataclasses.replace(info, frames=int(frames))
  return info


def _make_out(out: Path) -> list[Path]:
  """Creates `out` (and missing parents); returns the folders created. One-line errors for
  an existing file or a place that cannot be written, before anything is converted."""
  if out.exists() and not out.is_dir():
    raise CheckpointError(f"--out {out} is an existing file, not a folder")
  created = [p for p in [out, *out.parents] if not p.exists()][::-1]
  try:
    out.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=out).close()  # writable? (also for root on a read-only mount)
  except OSError as e:
    _remove_empty(created)
    raise CheckpointError(f"--out {out}: cannot write there ({e.strerror or e})") from None
  return created


def _remove_empty(created: list[Path]) -> None:
  for p in reversed(created):
    try:
      p.rmdir()  # only when empty
    except OSError:
      break


def convert_path(src: Path, out: Path, dtype: str = "float32",
                 log: Callable[[str], None] = print, frames: int | None = None) -> list[Path]:
  """Converts every component under `src` into `out/<name>/`, then writes `out/model.json`;
  all or nothing. `frames`: the clip length to record (see the module docstring).

  A failed conversion (bad input, a full disk) leaves `out` as it was: earlier components
  untouched, and no empty `out` folder that the call created. A second conversion into the
  same `out` while one runs is refused (`utils.lock.LockedError`); a killed one's staging
  folder is removed by the next."""
  if dtype not in DTYPES:
    raise CheckpointError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
  found = find_components(src)
  info = _source_info(Path(src), frames)
  out = Path(out).resolve()
  if atomic.overlaps(out, src):  # writing out/<component> could replace the source's own
    raise CheckpointError(f"--out {out} overlaps --src {Path(src).resolve()}; choose a folder "
                          "outside it")
  created = _make_out(out)
  by_name = {c.name: c for c in converters()}
  try:
    with lock.exclusive(out / LOCK_NAME, what=f"convert --out {out}"):
      for stale in lock.remove_stale(out, STAGING_PATTERN):  # a killed conversion's
        log(f"removed {stale}, left by a conversion that did not finish")
      staging = atomic.temp_dir(out, prefix=".convert.")
      try:
        return _convert_into(found, by_name, staging, out, dtype, info, log)
      finally:
        shutil.rmtree(staging, ignore_errors=True)
  except VBridgeError:
    raise
  except (OSError, ValueError) as e:  # a full disk, a folder that went read-only (orbax: ValueError)
    if (reason := atomic.write_failure(e)) is None:
      raise
    raise CheckpointError(f"--out {out}: writing failed ({reason})") from None
  finally:
    _remove_empty(created)


def _convert_into(found, by_name, staging: Path, out: Path, dtype: str, info: ModelInfo,
                  log: Callable[[str], None]) -> list[Path]:
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
  if any(f.name == "dit" for f in found) or not (out / "model.json").is_file():
    # A VAE converted on its own keeps the frame count recorded with the DiT beside it.
    write_model_info(out, info)
    log(f"model.json: {info.frames} frames, codec {info.codec}")
  return written
