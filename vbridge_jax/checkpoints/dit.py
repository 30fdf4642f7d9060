"""The Wan2.2 DiT from PyTorch: layout detection and key maps for both official layouts.

- `wan`: the original Wan2.2 release (also the released V-Bridge checkpoint): `config.json`
  with `dim`, `ffn_dim`, `num_heads`, ... and `blocks.N.self_attn.q.weight`-style keys.
- `diffusers`: `WanTransformer3DModel` (`transformer/` folder): `blocks.N.attn1.to_q.weight`.

Both map onto the parameter tree of `vbridge_jax.models.WanDiT` (blocks stacked on a
leading layer axis); `inverse_key_map` gives the reverse renaming, used by tests to build an
original-layout file from a diffusers state dict. `export_tensors` runs each plan backwards
(a JAX parameter tree -> the PyTorch tensors of either layout), and `wan_config` /
`diffusers_config` write the matching `config.json`: this is how `vbridge_jax.export` hands a
trained model back to the PyTorch code.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from vbridge_jax.checkpoints.components import Converter, Found
from vbridge_jax.checkpoints.io import Rule, SafetensorsSource, apply_plan, safetensors_files
from vbridge_jax.models.configs import DiTConfig
from vbridge_jax.utils.errors import CheckpointError

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


def _params_of(kind: str, cfg: DiTConfig, path: tuple[str, ...]) -> list[tuple[str, str, tuple, Any, Any]]:
  """(target leaf, source suffix, source shape, transform, inverse transform) for one entry."""
  d = cfg.dim
  patch = math.prod(cfg.patch_size)
  if kind == "table":
    rows = 6 if path[0] == "blocks" else 2
    return [("", "", (1, rows, d), lambda a: a[0], lambda a: a[None])]
  if kind == "rms":
    return [("scale", ".weight", (d,), None, None)]
  if kind == "layernorm":
    return [("scale", ".weight", (d,), None, None), ("bias", ".bias", (d,), None, None)]
  if kind == "patch":
    shape = (d, cfg.in_channels) + cfg.patch_size
    # torch Conv3d (out, in, t, h, w) <-> our (t * h * w * in, out) patch matmul.
    return [("kernel", ".weight", shape, lambda a: a.transpose(2, 3, 4, 1, 0).reshape(-1, a.shape[0]),
             lambda a: a.reshape(cfg.patch_size + (cfg.in_channels, d)).transpose(4, 3, 0, 1, 2)),
            ("bias", ".bias", (d,), None, None)]
  din, dout = _linear_dims(cfg, path, patch)
  return [("kernel", ".weight", (dout, din), lambda a: a.T, lambda a: a.T),
          ("bias", ".bias", (dout,), None, None)]


def _linear_dims(cfg: DiTConfig, path: tuple[str, ...], patch: int) -> tuple[int, int]:
  d = cfg.dim
  dims = {
      ("time_embedder", "linear_1"): (cfg.freq_dim, d), ("time_proj",): (d, 6 * d),
      ("text_embedder", "linear_1"): (cfg.text_dim, d), ("proj_out",): (d, patch * cfg.out_channels),
      ("blocks", "ffn", "fc1"): (d, cfg.ffn_dim), ("blocks", "ffn", "fc2"): (cfg.ffn_dim, d),
  }
  return dims.get(path, (d, d))


def _plan(cfg: DiTConfig, layout: str):
  """Yields (target path, source keys, source shape, transform, inverse, stacked)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
  for path, wan, dif, kind, per_block in _entries():
    prefix = wan if layout == "wan" else dif
    for leaf, suffix, shape, fn, inv in _params_of(kind, cfg, path):
      target = path + ((leaf,) if leaf else ())
      if per_block:
        keys = tuple(prefix.format(i=i) + suffix for i in range(cfg.num_layers))
      else:
        keys = (prefix + suffix,)
      yield target, keys, shape, fn, inv, per_block


def conversion_plan(cfg: DiTConfig, layout: str) -> dict[tuple[str, ...], Rule]:
  """Target parameter path -> `Rule` for a checkpoint in `layout` ('wan' or 'diffusers')."""
  return {target: Rule(keys, shape, fn, stacked=stacked)
          for target, keys, shape, fn, _, stacked in _plan(cfg, layout)}


def export_tensors(cfg: DiTConfig, layout: str, params: dict, dtype: Any = np.float32
                   ) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
  """The PyTorch tensors of `layout` for a JAX parameter tree: `conversion_plan` backwards.

  `params` is the nested dict the converter writes (blocks stacked on a leading axis).
  Returns `(key, shape, get)` per tensor in key order (blocks in numeric order); `get()`
  makes that one tensor (cast to `dtype`, C-contiguous), so a writer holds one at a time.
  Every leaf of `params` must be used by the plan, and with the shape it implies.
  """
  out = []
  used = set()
  for target, keys, shape, fn, inv, stacked in _plan(cfg, layout):
    node = params
    for p in target:
      if not isinstance(node, dict) or p not in node:
        raise CheckpointError(f"parameter {'/'.join(target)} is missing from the model")
      node = node[p]
    used.add(target)
    probe = np.broadcast_to(np.zeros((), np.float32), shape)
    want = ((len(keys),) if stacked else ()) + tuple((fn(probe) if fn else probe).shape)
    if tuple(node.shape) != want:
      raise CheckpointError(f"parameter {'/'.join(target)} has shape {tuple(node.shape)}, "
                            f"the config implies {want}")
    for i, key in enumerate(keys):
      def get(v=node, i=i, inv=inv, stacked=stacked):
        a = np.asarray(v[i] if stacked else v)
        return np.ascontiguousarray((inv(a) if inv else a).astype(dtype))
      out.append((key, tuple(shape), get))
  extra = sorted("/".join(k) for k in _leaf_paths(params) if k not in used)
  if extra:
    raise CheckpointError(f"parameter(s) {', '.join(extra[:4])} have no PyTorch name in the "
                          f"{layout} layout")
  return sorted(out, key=lambda item: _natural(item[0]))


def _leaf_paths(tree: dict, prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaf_paths(v, prefix + (str(k),))
    else:
      yield prefix + (str(k),)


def _natural(key: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


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


def wan_config(cfg: DiTConfig) -> dict[str, Any]:
  """The original Wan2.2 `config.json` of `cfg` (the keys of Wan2.2-TI2V-5B's, which the
  authors' `WanModel.from_pretrained` reads; `DiTConfig.from_wan` reads them back)."""
  return {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "ti2v",
          "patch_size": list(cfg.patch_size), "text_len": cfg.text_len, "in_dim": cfg.in_channels,
          "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim,
          "out_dim": cfg.out_channels, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
          "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": cfg.eps}


def diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
  """A diffusers `WanTransformer3DModel` `config.json` for `cfg` (diffusers has no
  `text_len`: its pipeline pads prompts to 512 tokens, and so does `from_diffusers`)."""
  return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0",
          "patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads,
          "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_channels,
          "out_channels": cfg.out_channels, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
          "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "cross_attn_norm": True,
          "qk_norm": "rms_norm_across_heads", "eps": cfg.eps, "image_dim": None,
          "added_kv_proj_dim": None, "rope_max_seq_len": cfg.rope_max_seq_len,
          "pos_embed_seq_len": None}


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
  """A DiT at `src` itself (either layout) or in `src/transformer/` (diffusers); `src` may be
  one of its files (a shard, its index or config), never another component's file (a
  `Wan2.2_VAE.pth` beside the DiT names the VAE alone)."""
  src = Path(src)
  if src.is_file():
    if src.suffix not in (".safetensors", ".json"):
      return None
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
  return tqdm(items, desc="dit", unit="tensor", leave=False)


CONVERTER = Converter("dit", find, convert)
