"""The Wan2.2 VAE from PyTorch: layout detection and key maps for both official layouts.

- `wan`: the original release, `Wan2.2_VAE.pth` (read only with torch's `weights_only=True`
  loader; a `.safetensors` file with the same keys works too): `encoder.conv1`,
  `encoder.downsamples.I.downsamples.J.residual.{0,2,3,6}` / `.shortcut`, the resampler as
  the last `downsamples.J` (`resample.1`, `time_conv`), `encoder.middle.{0,1,2}`,
  `encoder.head.{0,2}`, the decoder's `upsamples.I.upsamples.J`, and the quant convs as
  top-level `conv1` / `conv2`. It holds no config: the architecture is read off the shapes.
- `diffusers`: an `AutoencoderKLWan` `vae/` folder (`config.json` + safetensors).

Both map onto the parameter tree of `vbridge_jax.models.WanVAE`, whose names follow
diffusers (`encoder.down_blocks.I.resnets.J.conv1.kernel`, ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from vbridge_jax.checkpoints.components import Converter, Found
from vbridge_jax.checkpoints.io import (
  CheckpointError,
  DictSource,
  Rule,
  SafetensorsSource,
  TensorSource,
  TorchPickleSource,
  apply_plan,
  safetensors_files,
)
from vbridge_jax.checkpoints.loading import abstract_params
from vbridge_jax.models.configs import VAEConfig
from vbridge_jax.models.wan_vae import WanVAE

WAN_FILE = "Wan2.2_VAE.pth"
DIFFUSERS_CLASS = "AutoencoderKLWan"
LAYOUTS = ("wan", "diffusers")

_LEAF = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}


# ---------------------------------------------------------------------------------------------
# Key maps
# ---------------------------------------------------------------------------------------------


def _param_shapes(cfg: VAEConfig) -> dict[tuple[str, ...], tuple[int, ...]]:

  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  flat = jax.tree_util.tree_flatten_with_path(abstract_params(abstract))[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def diffusers_key(path: tuple[str, ...]) -> str:
  """`('encoder', 'down_blocks', '0', 'downsampler', 'resample', 'kernel')` ->
  `encoder.down_blocks.0.downsampler.resample.1.weight`."""
  parts = ["resample.1" if p == "resample" else p for p in path[:-1]]
  return ".".join(parts + [_LEAF[path[-1]]])


def wan_key(dkey: str, cfg: VAEConfig) -> str:
  """The original-layout key of a diffusers key (the inverse of diffusers' convert_vae_22)."""
  n = cfg.num_res_blocks
  k = re.sub(r"(resnets\.\d+\.)(norm1|conv1|norm2|conv2|conv_shortcut)\.",
             lambda m: m.group(1) + _RESNET[m.group(2)] + ".", dkey)
  k = re.sub(r"^(en|de)coder\.conv_in\.", r"\1coder.conv1.", k)
  k = re.sub(r"^quant_conv\.", "conv1.", k)
  k = re.sub(r"^post_quant_conv\.", "conv2.", k)
  k = re.sub(r"^(en|de)coder\.norm_out\.", r"\1coder.head.0.", k)
  k = re.sub(r"^(en|de)coder\.conv_out\.", r"\1coder.head.2.", k)
  k = re.sub(r"\.mid_block\.resnets\.0\.", ".middle.0.", k)
  k = re.sub(r"\.mid_block\.attentions\.0\.", ".middle.1.", k)
  k = re.sub(r"\.mid_block\.resnets\.1\.", ".middle.2.", k)
  k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2.", k)
  k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsampler\.", rf"encoder.downsamples.\1.downsamples.{n}.", k)
  k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2.", k)
  k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsampler\.", rf"decoder.upsamples.\1.upsamples.{n + 1}.", k)
  return k


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], Callable | None]:
  """The PyTorch shape of a parameter and the function from it to ours."""
  leaf = path[-1]
  if leaf == "kernel" and len(shape) == 5:  # (kt, kh, kw, I, O) <- (O, I, kt, kh, kw)
    return (shape[4], shape[3]) + shape[:3], lambda a: a.transpose(2, 3, 4, 1, 0)
  if leaf == "kernel" and len(shape) == 4:  # (kh, kw, I, O) <- (O, I, kh, kw)
    return (shape[3], shape[2]) + shape[:2], lambda a: a.transpose(2, 3, 1, 0)
  if leaf == "gamma":  # (C,) <- (C, 1, 1) in attention, (C, 1, 1, 1) elsewhere
    return ((shape[0], 1, 1) if "attentions" in path else (shape[0], 1, 1, 1)), lambda a: a.reshape(-1)
  return shape, None


def key_map(cfg: VAEConfig) -> Iterator[tuple[tuple[str, ...], str, str, tuple[int, ...], Callable | None]]:
  """(our path, diffusers key, original key, PyTorch shape, transform) for every parameter."""
  for path, shape in _param_shapes(cfg).items():
    dkey = diffusers_key(path)
    tshape, fn = _torch_shape(path, shape)
    yield path, dkey, wan_key(dkey, cfg), tshape, fn


def plan(cfg: VAEConfig, layout: str) -> dict[tuple[str, ...], Rule]:
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
  out = {}
  for path, dkey, wkey, tshape, fn in key_map(cfg):
    out[path] = Rule(keys=(wkey if layout == "wan" else dkey,), shape=tshape, fn=fn)
  return out


# ---------------------------------------------------------------------------------------------
# The original layout holds no config: read the architecture off the tensor shapes
# ---------------------------------------------------------------------------------------------


def config_from_wan(src: TensorSource) -> VAEConfig:
  keys = set(src.keys())

  def shape(k: str) -> tuple[int, ...]:
    if k not in keys:
      raise CheckpointError(f"{src.name}: missing tensor {k!r}; not a Wan2.2 VAE in the original layout")
    return src.shape(k)

  base, cin = shape("encoder.conv1.weight")[:2]
  z_dim = shape("conv2.weight")[0]
  stages = sorted({int(m.group(1)) for k in keys if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
  if not stages:
    raise CheckpointError(f"{src.name}: no encoder.downsamples.*; not a Wan2.2 VAE in the original layout")
  n_res = len({int(m.group(1)) for k in keys
               if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.", k))})
  mult = [shape(f"encoder.downsamples.{i}.downsamples.0.residual.2.weight")[0] // base for i in stages]
  temporal = [f"encoder.downsamples.{i}.downsamples.{n_res}.time_conv.weight" in keys for i in stages[:-1]]
  dec_out = shape("decoder.head.2.weight")
  dec_base = dec_out[1] // mult[0]
  patch = int(round((cin / 3) ** 0.5))
  try:
    return VAEConfig(base_dim=base, decoder_base_dim=dec_base, z_dim=z_dim, dim_mult=tuple(mult),
                     num_res_blocks=n_res, temporal_downsample=tuple(temporal), in_channels=cin,
                     out_channels=dec_out[0], patch_size=patch)
  except ValueError as e:
    raise CheckpointError(f"{src.name}: not a Wan2.2 VAE ({e})") from None


# ---------------------------------------------------------------------------------------------
# Detection and conversion
# ---------------------------------------------------------------------------------------------


def _diffusers_config(folder: Path) -> dict[str, Any] | None:
  f = folder / "config.json"
  if not f.is_file():
    return None
  try:
    d = json.loads(f.read_text())
  except (OSError, json.JSONDecodeError):
    return None
  return d if isinstance(d, dict) and d.get("_class_name") == DIFFUSERS_CLASS else None


def _has_wan_keys(path: Path) -> bool:
  try:
    return "decoder.middle.0.residual.0.gamma" in SafetensorsSource([path]).keys()
  except CheckpointError:
    return False


def find(path: Path) -> Found | None:
  """A `Wan2.2_VAE.pth` (or an original-layout VAE file), a folder or repository holding one,
  a diffusers `vae/` folder or a repository holding `vae/`; None when there is no VAE."""
  path = Path(path)
  if path.is_file():
    if path.suffix in (".pth", ".pt") and "vae" in path.name.lower():
      return Found("vae", "wan", path)
    if path.suffix == ".safetensors" and _has_wan_keys(path):
      return Found("vae", "wan", path)
    return None
  if not path.is_dir():
    return None
  for folder in (path, path / "vae"):
    if _diffusers_config(folder) is not None:
      return Found("vae", "diffusers", folder)
  if (path / WAN_FILE).is_file():
    return Found("vae", "wan", path / WAN_FILE)
  return None


def open_source(found: Found) -> tuple[TensorSource, VAEConfig]:
  if found.layout == "wan":
    if found.path.suffix == ".safetensors":
      src: TensorSource = SafetensorsSource([found.path])
    else:
      src = TorchPickleSource(found.path)
    return src, config_from_wan(src)
  if found.layout == "diffusers":
    d = _diffusers_config(found.path)
    if d is None:
      raise CheckpointError(f"{found.path}/config.json: not an {DIFFUSERS_CLASS} config")
    try:
      cfg = VAEConfig.from_diffusers(d)
    except ValueError as e:
      raise CheckpointError(f"{found.path}/config.json: {e}") from None
    files = safetensors_files(found.path)
    if not files:
      raise CheckpointError(f"{found.path}: no .safetensors weights next to config.json")
    return SafetensorsSource(files, name=str(found.path)), cfg
  raise CheckpointError(f"{found.path}: unknown VAE layout {found.layout!r}")


def convert(found: Found, dtype: Any) -> tuple[dict, dict]:
  src, cfg = open_source(found)
  params = apply_plan(src, plan(cfg, found.layout), dtype)
  return cfg.arch_dict(), params


def convert_state_dict(state_dict: dict[str, Any], cfg: VAEConfig, layout: str = "diffusers",
                       dtype: Any = np.float32) -> dict:
  """Params from an in-memory state dict (numpy arrays or torch tensors), e.g. in tests."""
  return apply_plan(DictSource(state_dict), plan(cfg, layout), dtype)


CONVERTER = Converter("vae", find, convert)
