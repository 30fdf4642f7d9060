"""The Wan2.2 DiT from PyTorch: layout detection and key maps for both official layouts.

- `wan`: the original Wan2.2 release (also the released V-Bridge checkpoint): `config.json`
  with `dim`, `ffn_dim`, `num_heads`, ... and `blocks.N.self_attn.q.weight`-style keys.
- `diffusers`: `WanTransformer3DModel` (`transformer/` folder): `blocks.N.attn1.to_q.weight`.

Both map onto the parameter tree of `vbridge_jax.models.WanDiT` (blocks stacked on a
leading layer axis); `inverse_key_map` gives the reverse renaming, used by tests to build an
original-layout file from a diffusers state dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vbridge_jax.checkpoints.convert import Converter, Found
from vbridge_jax.checkpoints.io import (CheckpointError, Rule, SafetensorsSource, apply_plan,
                                        safetensors_files)
from vbridge_jax.models.configs import DiTConfig

# (target path in WanDiT, original Wan prefix, diffusers prefix, kind). `{i}` marks a block.
_TOP = [
    (("patch_embedding",), "patch_embedding", "patch_embedding", "patch"),
    (("time_embedder", "linear_1"), "time_embedding.0", "condition_embedder.time_embedder.linear_1", "linear"),
    (("time_embedder", "linear_2"), "time_embedding.2", "condition_embedder.time_embedder.linear_2", "linear"),
    (("time_proj",), "time_projection.1", "condition_embedder.time_proj", "linear"),
    (("text_embedder", "linear_1"), "text_embedding.0", "condition_embedder.text_embedder.linear_1", "linear"),
    (("text_embedder", "linear_2"), "text_embedding.2", "condition_embedder.text_embedder.linear_2", "linear"),
    (("proj_out",), "head.head", "proj_out", "linear"),
    (("scale_shift_table",), "head.modulation", "scale_shift_table", "table"),
]
_BLOCK = [(("attn1",), "self_attn", "attn1"), (("attn2",), "cross_attn", "attn2")]
_ATTN = [("to_q", "q", "to_q", "linear"), ("to_k", "k", "to_k", "linear"), ("to_v", "v", "to_v", "linear"),
         ("to_out", "o", "to_out.0", "linear"), ("norm_q", "norm_q", "norm_q", "rms"),
         ("norm_k", "norm_k", "norm_k", "rms")]
_BLOCK_REST = [
    (("norm2",), "norm3", "norm2", "layernorm"),
    (("ffn", "fc1"), "ffn.0", "ffn.net.0.proj", "linear"),
    (("ffn", "fc2"), "ffn.2", "ffn.net.2", "linear"),
    (("scale_shift_table",), "modulation", "scale_shift_table", "table"),
]
LAYOUTS = ("wan", "diffusers")


def _entries():
  """Yields (target path, wan prefix, diffusers prefix, kind, per_block)."""
  for path, wan, dif, kind in _TOP:
    yield path, wan, dif, kind, False
  for sub, wan_a, dif_a in _BLOCK:
    for name, wan_n, dif_n, kind in _ATTN:
      yield ("blocks",) + sub + (name,), f"blocks.{{i}}.{wan_a}.{wan_n}", f"blocks.{{i}}.{dif_a}.{dif_n}", kind, True
  for path, wan, dif, kind in _BLOCK_REST:
    yield ("blocks",) + path, f"blocks.{{i}}.{wan}", f"blocks.{{i}}.{dif}", kind, True


def _params_of(kind: str, cfg: DiTConfig, path: tuple[str, ...]) -> list[tuple[str, str, tuple, Any]]:
  """(target leaf, source suffix, source shape, transform) for one entry."""
  d = cfg.dim
  patch = math.prod(cfg.patch_size)
  if kind == "table":
    rows = 6 if path[0] == "blocks" else 2
    return [("", "", (1, rows, d), lambda a: a[0])]
  if kind == "rms":
    return [("scale", ".weight", (d,), None)]
  if kind == "layernorm":
    return [("scale", ".weight", (d,), None), ("bias", ".bias", (d,), None)]
  if kind == "patch":
    shape = (d, cfg.in_channels) + cfg.patch_size
    return [("kernel", ".weight", shape, lambda a: a.transpose(2, 3, 4, 1, 0).reshape(-1, a.shape[0])),
            ("bias", ".bias", (d,), None)]
  din, dout = _linear_dims(cfg, path, patch)
  return [("kernel", ".weight", (dout, din), lambda a: a.T), ("bias", ".bias", (dout,), None)]


def _linear_dims(cfg: DiTConfig, path: tuple[str, ...], patch: int) -> tuple[int, int]:
  d = cfg.dim
  dims = {
      ("time_embedder", "linear_1"): (cfg.freq_dim, d), ("time_proj",): (d, 6 * d),
      ("text_embedder", "linear_1"): (cfg.text_dim, d), ("proj_out",): (d, patch * cfg.out_channels),
      ("blocks", "ffn", "fc1"): (d, cfg.ffn_dim), ("blocks", "ffn", "fc2"): (cfg.ffn_dim, d),
  }
  return dims.get(path, (d, d))


def conversion_plan(cfg: DiTConfig, layout: str) -> dict[tuple[str, ...], Rule]:
  """Target parameter path -> `Rule` for a checkpoint in `layout` ('wan' or 'diffusers')."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
  plan = {}
  for path, wan, dif, kind, per_block in _entries():
    prefix = wan if layout == "wan" else dif
    for leaf, suffix, shape, fn in _params_of(kind, cfg, path):
      target = path + ((leaf,) if leaf else ())
      if per_block:
        keys = tuple(prefix.format(i=i) + suffix for i in range(cfg.num_layers))
        plan[target] = Rule(keys, shape, fn, stacked=True)
      else:
        plan[target] = Rule((prefix + suffix,), shape, fn)
  return plan


def inverse_key_map(num_layers: int) -> dict[str, str]:
  """diffusers key -> original Wan key, for every parameter of the DiT."""
  out = {}
  suffixes = {"linear": (".weight", ".bias"), "patch": (".weight", ".bias"), "rms": (".weight",),
              "layernorm": (".weight", ".bias"), "table": ("",)}
  for _, wan, dif, kind, per_block in _entries():
    for i in range(num_layers if per_block else 1):
      for s in suffixes[kind]:
        out[dif.format(i=i) + s] = wan.format(i=i) + s
  return out


# -------------------------------------------------------------------------------------------
# Detection and conversion
# -------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read JSON ({e})") from None
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


def _layout_of(folder: Path) -> str | None:
  cfg = folder / "config.json"
  if not cfg.is_file():
    return None
  data = _read_json(cfg)
  if data.get("_class_name") == "WanTransformer3DModel":
    return "diffusers"
  if "dim" in data and "num_heads" in data:
    return "wan"
  return None


def find(src: Path) -> Found | None:
  """A DiT at `src` itself (either layout) or in `src/transformer/` (diffusers)."""
  src = Path(src)
  if src.is_file():
    src = src.parent
  for folder in (src, src / "transformer"):
    layout = _layout_of(folder) if folder.is_dir() else None
    if layout:
      return Found("dit", layout, folder)
  return None


def read_config(found: Found) -> DiTConfig:
  path = found.path / "config.json"
  data = _read_json(path)
  try:
    return DiTConfig.from_wan(data) if found.layout == "wan" else DiTConfig.from_diffusers(data)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def convert(found: Found, dtype: Any, progress=None) -> tuple[dict, dict]:
  cfg = read_config(found)
  files = safetensors_files(found.path)
  if not files:
    raise CheckpointError(f"{found.path}: no *.safetensors weights next to config.json")
  source = SafetensorsSource(files, name=str(found.path))
  if progress is None:
    progress = _tqdm_progress
  params = apply_plan(source, conversion_plan(cfg, found.layout), dtype, progress=progress)
  return cfg.arch_dict() | {"param_dtype": np.dtype(dtype).name}, params


def _tqdm_progress(items):
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return items
  return tqdm(items, desc="dit", unit="tensor", leave=False)


CONVERTER = Converter("dit", find, convert)
