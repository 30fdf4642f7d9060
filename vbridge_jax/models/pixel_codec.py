"""A lossless pixel codec for tiny models: the WanVAE interface without a network.

  codec = PixelCodec(PixelCodecConfig())      # or load_vae(folder holding vae/config.json)
  z = codec.encode(video)     # (B, 1+4k, H, W, 3) in [-1, 1] -> (B, 1+k, H/4, W/4, 48)
  video = codec.decode(z)     # -> (B, 1+4k, H, W, 3), clipped to [-1, 1]
  z_n = codec.normalize(z)    # what the DiT sees: z * scale

Spatial: a `patch x patch` space-to-depth of the RGB pixels (4 x 4 x 3 = 48 channels, the
Wan2.2 latent width), channel `(py * patch + px) * 3 + c`. Temporal: pixel frames
0, t, 2t, ... are kept (`t = temporal`, 4). Decode puts the pixels back and fills the frames
in between by linear interpolation in time. A V-Bridge pseudo-video is a linear blend from
the LQ image (frame 0) to the GT image (data/clips.py), so every one of its frames lies on
that line and the codec reproduces the whole clip exactly (up to float rounding): a tiny
DiT can then be trained and judged without a learned, or random, autoencoder in the way.

`normalize`/`denormalize` multiply/divide by a fixed `scale` (default 2): pixels in [-1, 1]
of natural images have a standard deviation of about 0.5, so the DiT sees latents of about
unit variance, like the Wan2.2 VAE's normalised latents and the flow's Gaussian noise.

The module has no parameters: `nnx.split`/`nnx.merge` and `jax.jit` treat it as they treat
`WanVAE`. In a model folder it is stored as `vae/config.json` =
`{"_class_name": "PixelCodec", "patch": 4, "temporal": 4, "scale": 2.0}` with no `params/`;
`vbridge_jax.checkpoints.load_vae` returns it for such a folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vbridge_jax.utils import atomic

CLASS_NAME = "PixelCodec"


@dataclasses.dataclass(frozen=True)
class PixelCodecConfig:
  """Geometry of the pixel codec; `z_dim = 3 * patch**2`."""

  patch: int = 4
  temporal: int = 4
  scale: float = 2.0  # normalize: z * scale (about unit variance for [-1, 1] pixels)

  def __post_init__(self):
    if self.patch < 1 or self.temporal < 1:
      raise ValueError(f"PixelCodec patch={self.patch} and temporal={self.temporal} must be >= 1")
    if not self.scale > 0:
      raise ValueError(f"PixelCodec scale={self.scale} must be > 0")

  @property
  def scale_factor_spatial(self) -> int:
    return self.patch

  @property
  def scale_factor_temporal(self) -> int:
    return self.temporal

  @property
  def z_dim(self) -> int:
    return 3 * self.patch * self.patch

  def to_dict(self) -> dict[str, Any]:
    return {"_class_name": CLASS_NAME, "patch": self.patch, "temporal": self.temporal,
            "scale": self.scale}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PixelCodecConfig":
    name = d.get("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
      raise ValueError(f"_class_name={name!r} is not {CLASS_NAME!r}")
    return cls(patch=int(d.get("patch", 4)), temporal=int(d.get("temporal", 4)),
               scale=float(d.get("scale", 2.0)))


class PixelCodec(nnx.Module):
  """Space-to-depth + temporal subsampling; decode interpolates linearly between kept frames."""

  def __init__(self, config: PixelCodecConfig = PixelCodecConfig(), **_runtime: Any):
    # Run-time switches of WanVAE (dtype, precision, ...) are accepted and mean nothing here.
    self.config = config

  def normalize(self, z: jax.Array) -> jax.Array:
    return (z.astype(jnp.float32) * self.config.scale).astype(z.dtype)

  def denormalize(self, z: jax.Array) -> jax.Array:
    return (z.astype(jnp.float32) / self.config.scale).astype(z.dtype)

  def encode(self, video: jax.Array, tile: int | None = None, overlap: int = 64) -> jax.Array:
    """`(B, 1+tk, H, W, 3)` in [-1, 1] -> `(B, 1+k, H/p, W/p, 3p^2)` float32.

    `tile`/`overlap` are accepted for WanVAE's interface; the codec is per pixel, so tiling
    would change nothing.
    """
    del tile, overlap
    p, st = self.config.patch, self.config.temporal
    b, f, h, w, c = video.shape
    if (f - 1) % st or h % p or w % p or c != 3:
      raise ValueError(f"PixelCodec.encode needs (B, 1 + {st}k, H, W, 3) with H, W multiples "
                       f"of {p}; got {tuple(video.shape)}")
    x = jnp.asarray(video, jnp.float32)[:, ::st]
    n = x.shape[1]
    x = x.reshape(b, n, h // p, p, w // p, p, 3).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, n, h // p, w // p, p * p * 3)

  def decode(self, z: jax.Array, tile: int | None = None, overlap: int = 4) -> jax.Array:
    """`(B, 1+k, h, w, 3p^2)` -> `(B, 1+tk, ph, pw, 3)` clipped to [-1, 1]."""
    del tile, overlap
    p, st = self.config.patch, self.config.temporal
    b, n, h, w, c = z.shape
    if c != p * p * 3:
      raise ValueError(f"PixelCodec.decode needs {p * p * 3} channels, got {tuple(z.shape)}")
    x = jnp.asarray(z, jnp.float32).reshape(b, n, h, w, p, p, 3).transpose(0, 1, 2, 4, 3, 5, 6)
    x = x.reshape(b, n, h * p, w * p, 3)
    if n > 1 and st > 1:
      # Frame j*st + r = (1 - r/st) key_j + (r/st) key_{j+1}, r = 0..st-1; then the last key.
      r = jnp.arange(st, dtype=jnp.float32).reshape(1, 1, st, 1, 1, 1) / st
      mid = (1.0 - r) * x[:, :-1, None] + r * x[:, 1:, None]  # (B, n-1, st, H, W, 3)
      x = jnp.concatenate([mid.reshape((b, (n - 1) * st) + x.shape[2:]), x[:, -1:]], axis=1)
    return jnp.clip(x, -1.0, 1.0)


def read_config(path: str | Path) -> PixelCodecConfig | None:
  """The codec config of a model folder (`path/vae/config.json` or `path/config.json`), or
  None when that folder holds something else (a converted WanVAE)."""
  path = Path(path)
  for cand in (path / "vae" / "config.json", path / "config.json"):
    if cand.is_file():
      try:
        d = json.loads(cand.read_text())
      except (OSError, ValueError) as e:
        raise ValueError(f"{cand}: not a JSON config ({e})") from None
      if isinstance(d, dict) and d.get("_class_name") == CLASS_NAME:
        try:
          return PixelCodecConfig.from_dict(d)
        except (TypeError, ValueError) as e:
          raise ValueError(f"{cand}: bad PixelCodec config ({e})") from None
      if isinstance(d, dict) and (d.get("component") == "vae" or "_class_name" in d):
        return None
  return None


def write_config(folder: str | Path, config: PixelCodecConfig) -> Path:
  """Writes `folder/config.json` (atomic); the codec has no parameters to store."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  return atomic.write_text(folder / "config.json", config.to_json() + "\n")
