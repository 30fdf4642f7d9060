"""Model configurations: dataclasses with named presets.

`DiTConfig.ti2v_5b()` is exactly Wan2.2-TI2V-5B; `tiny()` is a random-weight toy for tests
and the default demo. `from_diffusers(dict)` reads a diffusers `config.json`;
`from_wan(dict)` reads the original Wan2.2 `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_dtypes
import numpy as np

REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
# The one map of dtype names (configs, flags, converters) to dtypes. ml_dtypes' bfloat16 is
# the type JAX uses for jnp.bfloat16.
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _from_dict(cls, d: dict[str, Any], overrides: dict[str, Any]):
  """`cls(**d, **overrides)`, naming any key that is not a field of `cls`."""
  unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
  return cls(**(dict(d) | overrides))


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The Wan2.2 DiT. Architecture fields first, then run-time switches."""

  dim: int = 3072
  ffn_dim: int = 14336
  num_heads: int = 24
  num_layers: int = 30
  in_channels: int = 48
  out_channels: int = 48
  text_dim: int = 4096
  text_len: int = 512
  freq_dim: int = 256
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_max_seq_len: int = 1024
  # Run-time switches (not part of the architecture).
  param_dtype: str = "float32"
  dtype: str = "float32"  # matmul / attention compute dtype
  scan_layers: bool = True
  remat: str = "none"  # none | full | save_dots
  attention: str = "xla"  # xla | cudnn | splash
  splash_block: int = 512  # splash kernel block size (TPU)
  xla_attention_block: int = 128  # query rows per block of the xla attention (0: unblocked)

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim={self.dim} is not a multiple of num_heads={self.num_heads}")
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention", self.attention, ATTENTION_IMPLS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    if self.attention == "cudnn" and self.dtype != "bfloat16":
      raise ValueError("attention='cudnn' needs dtype='bfloat16' (cuDNN flash attention has no float32 kernel)")
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def rope_split(self) -> tuple[int, int, int]:
    """head_dim split over (t, h, w): 44/42/42 at 128, as the reference."""
    hw = 2 * (self.head_dim // 6)
    return (self.head_dim - 2 * hw, hw, hw)

  def replace(self, **kw: Any) -> "DiTConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def ti2v_5b(cls, **kw: Any) -> "DiTConfig":
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw: Any) -> "DiTConfig":
    base = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_channels=8, out_channels=8,
                text_dim=32, text_len=16, freq_dim=32)
    base.update(kw)
    return cls(**base)

  # -- (de)serialisation ---------------------------------------------------------------------
  ARCH_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels",
                 "text_dim", "text_len", "freq_dim", "patch_size", "eps", "rope_theta",
                 "rope_max_seq_len")

  def arch_dict(self) -> dict[str, Any]:
    out = {k: getattr(self, k) for k in self.ARCH_FIELDS}
    out["patch_size"] = list(self.patch_size)
    return out

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self) | {"patch_size": list(self.patch_size)}, indent=2)

  @classmethod
  def from_dict(cls, d: dict[str, Any], **kw: Any) -> "DiTConfig":
    return _from_dict(cls, d, kw)

  @classmethod
  def from_diffusers(cls, d: dict[str, Any], **kw: Any) -> "DiTConfig":
    """From a diffusers `WanTransformer3DModel` config.json (the TI2V/T2V variants)."""
    if d.get("image_dim") or d.get("added_kv_proj_dim"):
      raise ValueError("image-conditioned Wan (image_dim / added_kv_proj_dim) is not supported")
    if d.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
      raise ValueError(f"qk_norm={d.get('qk_norm')!r} is not supported (rms_norm_across_heads only)")
    if not d.get("cross_attn_norm", True):
      raise ValueError("cross_attn_norm=false is not supported")
    heads = int(d.get("num_attention_heads", 40))
    args = dict(
        dim=heads * int(d.get("attention_head_dim", 128)),
        ffn_dim=int(d.get("ffn_dim", 13824)),
        num_heads=heads,
        num_layers=int(d.get("num_layers", 40)),
        in_channels=int(d.get("in_channels", 16)),
        out_channels=int(d.get("out_channels") or d.get("in_channels", 16)),
        text_dim=int(d.get("text_dim", 4096)),
        freq_dim=int(d.get("freq_dim", 256)),
        patch_size=tuple(d.get("patch_size", (1, 2, 2))),
        eps=float(d.get("eps", 1e-6)),
        rope_max_seq_len=int(d.get("rope_max_seq_len", 1024)),
    )
    return cls(**(args | kw))

  @classmethod
  def from_wan(cls, d: dict[str, Any], **kw: Any) -> "DiTConfig":
    """From the original Wan2.2 `config.json` (`dim`, `ffn_dim`, `num_heads`, ...)."""
    required = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                "text_len", "eps")
    missing = [k for k in required if k not in d]
    if missing:
      raise ValueError(f"Wan config.json lacks {', '.join(missing)}")
    if d.get("model_type", "ti2v") not in ("ti2v", "t2v"):
      raise ValueError(f"model_type={d['model_type']!r} is not supported (ti2v or t2v)")
    args = dict(
        dim=int(d["dim"]), ffn_dim=int(d["ffn_dim"]), num_heads=int(d["num_heads"]),
        num_layers=int(d["num_layers"]), in_channels=int(d["in_dim"]),
        out_channels=int(d["out_dim"]), freq_dim=int(d["freq_dim"]),
        text_len=int(d["text_len"]), eps=float(d["eps"]),
        text_dim=int(d.get("text_dim", 4096)),
        patch_size=tuple(d.get("patch_size", (1, 2, 2))),
    )
    return cls(**(args | kw))


# ---------------------------------------------------------------------------------------------
# The Wan2.2 VAE
# ---------------------------------------------------------------------------------------------

# The 48 published per-channel latent statistics of the Wan2.2 VAE (Wan2.2-TI2V-5B).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
    0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
    0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
    -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
    0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
    0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
    0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
PRECISIONS = ("highest", "default")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The Wan2.2 VAE (residual down/up blocks, 2x2 patchify, z_dim 48). Architecture first."""

  base_dim: int = 160
  decoder_base_dim: int = 256
  z_dim: int = 48
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  in_channels: int = 12  # 3 colour channels x patch_size**2
  out_channels: int = 12
  patch_size: int = 2
  # Per-channel latent statistics; None: the published ones at z_dim 48, else 0 / 1.
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  # Run-time switches (not part of the architecture).
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype of convolutions and attention
  precision: str = "highest"  # matmul/conv precision: highest (exact fp32) | default
  attn_block: int = 4096  # mid-block attention processes queries in blocks of this many

  def __post_init__(self):
    if self.latents_mean is None:
      object.__setattr__(self, "latents_mean", WAN22_LATENTS_MEAN if self.z_dim == 48 else (0.0,) * self.z_dim)
    if self.latents_std is None:
      object.__setattr__(self, "latents_std", WAN22_LATENTS_STD if self.z_dim == 48 else (1.0,) * self.z_dim)
    object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
    object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
    object.__setattr__(self, "latents_mean", tuple(float(v) for v in self.latents_mean))
    object.__setattr__(self, "latents_std", tuple(float(v) for v in self.latents_std))
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("precision", self.precision, PRECISIONS)
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"temporal_downsample needs {len(self.dim_mult) - 1} entries, "
                       f"got {len(self.temporal_downsample)}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"latents_mean/latents_std need z_dim={self.z_dim} values each")
    if self.in_channels % (self.patch_size ** 2) or self.out_channels % (self.patch_size ** 2):
      raise ValueError("in_channels/out_channels must be multiples of patch_size**2")

  @property
  def scale_factor_spatial(self) -> int:
    return self.patch_size * 2 ** (len(self.dim_mult) - 1)

  @property
  def scale_factor_temporal(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  def replace(self, **kw: Any) -> "VAEConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def wan22(cls, **kw: Any) -> "VAEConfig":
    return cls(**kw)

  @classmethod
  def tiny(cls, **kw: Any) -> "VAEConfig":
    """Same structure as `wan22()` with small widths (encoder 8, decoder 12, z_dim 8 as the
    tiny DiT's channels; latent statistics 0 / 1)."""
    base = dict(base_dim=8, decoder_base_dim=12, z_dim=8)
    base.update(kw)
    return cls(**base)

  # -- (de)serialisation ---------------------------------------------------------------------
  ARCH_FIELDS = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks",
                 "temporal_downsample", "in_channels", "out_channels", "patch_size",
                 "latents_mean", "latents_std")

  def arch_dict(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v := getattr(self, k), tuple) else v) for k in self.ARCH_FIELDS}

  def to_json(self) -> str:
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self).items()}, indent=2)

  @classmethod
  def from_dict(cls, d: dict[str, Any], **kw: Any) -> "VAEConfig":
    return _from_dict(cls, d, kw)

  @classmethod
  def from_diffusers(cls, d: dict[str, Any], **kw: Any) -> "VAEConfig":
    """From a diffusers `AutoencoderKLWan` config.json (the Wan2.2 variant: is_residual)."""
    if not d.get("is_residual", False):
      raise ValueError("only the Wan2.2 VAE (is_residual=true) is supported, not the Wan2.1 VAE")
    if d.get("attn_scales"):
      raise ValueError(f"attn_scales={d['attn_scales']!r} is not supported (Wan2.2 has none)")
    if d.get("dropout", 0.0):
      raise ValueError("dropout > 0 is not supported")
    base_dim = int(d.get("base_dim", 96))
    args = dict(
        base_dim=base_dim,
        decoder_base_dim=int(d.get("decoder_base_dim") or base_dim),
        z_dim=int(d.get("z_dim", 16)),
        dim_mult=tuple(d.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=int(d.get("num_res_blocks", 2)),
        temporal_downsample=tuple(d.get("temperal_downsample", (False, True, True))),
        in_channels=int(d.get("in_channels", 3)),
        out_channels=int(d.get("out_channels", 3)),
        patch_size=int(d.get("patch_size") or 1),
    )
    if "latents_mean" in d:
      args["latents_mean"] = tuple(d["latents_mean"])
    if "latents_std" in d:
      args["latents_std"] = tuple(d["latents_std"])
    return cls(**(args | kw))
