"""Model configurations: dataclasses with named presets.

`DiTConfig.ti2v_5b()` is exactly Wan2.2-TI2V-5B; `tiny()` is a random-weight toy for tests
and the default demo. `from_diffusers(dict)` reads a diffusers `config.json`;
`from_wan(dict)` reads the original Wan2.2 `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
DTYPES = ("float32", "bfloat16")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


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

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim={self.dim} is not a multiple of num_heads={self.num_heads}")
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention", self.attention, ATTENTION_IMPLS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
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
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown DiTConfig keys: {', '.join(unknown)}")
    return cls(**(dict(d) | kw))

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
