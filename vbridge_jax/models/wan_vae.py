"""The Wan2.2 VAE in Flax NNX (channels-last), as `diffusers.AutoencoderKLWan(is_residual=True)`.

  vae = WanVAE(VAEConfig.wan22(), rngs=nnx.Rngs(0))    # or load_vae("OUT")
  z = vae.encode(video)          # (B, 1+4k, H, W, 3) in [-1, 1] -> (B, 1+k, H/16, W/16, 48)
  video = vae.decode(z)          # -> (B, 1+4k, H, W, 3), clipped to [-1, 1]
  z_n = vae.normalize(z)         # (z - mean) / std, what the DiT sees

Time runs in chunks as in the reference: the encoder sees the first frame alone, then 4
frames at a time; the decoder one latent frame at a time. The first chunk is its own call,
the remaining chunks are one `jax.lax.scan` whose carry is the list of causal-conv caches,
so one chunk is compiled whatever the clip length.

Large images: `encode(video, tile=256, overlap=64)` (pixels) and `decode(z, tile=16,
overlap=4)` (latents) cut the picture into equal, overlapping tiles, run them one after
the other through one compiled function, and blend neighbours linearly over the overlap;
working memory is that of one tile. Called on concrete arrays, `encode`/`decode` run
through `jax.jit`; inside a trace they are plain functions.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vbridge_jax.models.configs import VAEConfig
from vbridge_jax.models.vae_blocks import Caches, Conv, Decoder, Encoder, Runtime


def patchify(x: jax.Array, p: int) -> jax.Array:
  """(B, T, H, W, C) -> (B, T, H/p, W/p, C*p*p); channel = c*p*p + pw*p + ph (reference order)."""
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
  return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `patchify`."""
  if p == 1:
    return x
  b, t, h, w, cp = x.shape
  c = cp // (p * p)
  x = x.reshape(b, t, h, w, c, p, p).transpose(0, 1, 2, 6, 3, 5, 4)
  return x.reshape(b, t, h * p, w * p, c)


class WanVAE(nnx.Module):
  """The Wan2.2 VAE: `encode` (posterior mean), `decode`, `normalize`, `denormalize`."""

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    rt = Runtime.of(config)
    self.encoder = Encoder(config, rt, rngs=rngs)
    self.quant_conv = Conv(2 * config.z_dim, 2 * config.z_dim, (1, 1, 1), rt, rngs=rngs)
    self.post_quant_conv = Conv(config.z_dim, config.z_dim, (1, 1, 1), rt, rngs=rngs)
    self.decoder = Decoder(config, rt, rngs=rngs)

  # -- latent statistics -----------------------------------------------------------------------
  def normalize(self, z: jax.Array) -> jax.Array:
    mean = jnp.asarray(self.config.latents_mean, jnp.float32)
    std = jnp.asarray(self.config.latents_std, jnp.float32)
    return ((z.astype(jnp.float32) - mean) / std).astype(z.dtype)

  def denormalize(self, z: jax.Array) -> jax.Array:
    mean = jnp.asarray(self.config.latents_mean, jnp.float32)
    std = jnp.asarray(self.config.latents_std, jnp.float32)
    return (z.astype(jnp.float32) * std + mean).astype(z.dtype)

  # -- untiled, traceable ----------------------------------------------------------------------
  def _encode(self, video: jax.Array, posterior: bool = False) -> jax.Array:
    cfg = self.config
    b, f, h, w, _ = video.shape
    s, st = cfg.scale_factor_spatial, cfg.scale_factor_temporal
    if (f - 1) % st or h % s or w % s:
      raise ValueError(f"encode needs F = 1 + {st}k frames and H, W multiples of {s}; got {video.shape}")
    x = patchify(video.astype(jnp.float32), cfg.patch_size)
    caches = Caches(None)
    out = self.encoder(x[:, :1], caches)
    if f > 1:
      k = (f - 1) // st
      chunks = x[:, 1:].reshape((b, k, st) + x.shape[2:]).swapaxes(0, 1)

      def body(carry, xc):
        cs = Caches(carry)
        y = self.encoder(xc, cs)
        return cs.outgoing, y

      _, rest = jax.lax.scan(body, caches.outgoing, chunks)  # (k, B, 1, h, w, 2z)
      out = jnp.concatenate([out, rest.swapaxes(0, 1).reshape((b, k) + rest.shape[3:])], axis=1)
    if posterior:  # both halves of the quant conv: mean and log-variance
      return _mean_half(self.quant_conv, out, 2 * cfg.z_dim)  # all 2 z_dim channels
    mean = _mean_half(self.quant_conv, out, cfg.z_dim)
    return mean.astype(jnp.float32)

  def _decode_raw(self, z: jax.Array) -> jax.Array:
    """Decoded video before clipping (tiles are blended before the clip)."""
    cfg = self.config
    b, f = z.shape[:2]
    x = self.post_quant_conv(z.astype(jnp.float32))
    caches = Caches(None)
    out = self.decoder(x[:, :1], caches)
    if f > 1:
      chunks = x[:, 1:].swapaxes(0, 1)[:, :, None]  # (F-1, B, 1, h, w, C)

      def body(carry, xc):
        cs = Caches(carry)
        y = self.decoder(xc, cs)
        return cs.outgoing, y

      _, rest = jax.lax.scan(body, caches.outgoing, chunks)  # (F-1, B, 4, H, W, C)
      out = jnp.concatenate([out, rest.swapaxes(0, 1).reshape((b, -1) + rest.shape[3:])], axis=1)
    return unpatchify(out, cfg.patch_size).astype(jnp.float32)

  def _decode(self, z: jax.Array) -> jax.Array:
    return jnp.clip(self._decode_raw(z), -1.0, 1.0)

  # -- public ----------------------------------------------------------------------------------
  def encode(self, video: jax.Array, tile: int | None = None, overlap: int = 64) -> jax.Array:
    """`video (B, 1+4k, H, W, 3)` in [-1, 1] -> posterior mean `(B, 1+k, H/16, W/16, z_dim)`.

    `tile`/`overlap` (pixels, multiples of 16) turn on spatial tiling when the image is
    larger than one tile.
    """
    s = self.config.scale_factor_spatial
    if tile is not None and max(video.shape[2:4]) > tile:
      _check_tiles(tile, overlap, s, "pixels")
      return _tiled(self._jitted("_encode"), np.asarray(video, np.float32), tile, overlap, 1 / s)
    if isinstance(video, jax.core.Tracer):
      return self._encode(video)
    return self._jitted("_encode")(video)

  def encode_posterior(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(mean, logvar)` of the posterior, each `(B, 1+k, H/16, W/16, z_dim)` float32, untiled.

    The log-variance is clipped to [-30, 20] as diffusers' `DiagonalGaussianDistribution`
    does; `sample_posterior` draws from it (the authors' training encodes with `.sample()`).
    """
    moments = self._encode(video, posterior=True) if isinstance(video, jax.core.Tracer) else \
        _run_jit_posterior(nnx.graphdef(self), nnx.state(self), video)
    z = self.config.z_dim
    return moments[..., :z], jnp.clip(moments[..., z:], -30.0, 20.0)

  def decode(self, z: jax.Array, tile: int | None = None, overlap: int = 4) -> jax.Array:
    """`z (B, 1+k, h, w, z_dim)` -> video `(B, 1+4k, 16h, 16w, 3)` clipped to [-1, 1].

    `tile`/`overlap` (latents) turn on spatial tiling when the latent is larger than one tile.
    """
    s = self.config.scale_factor_spatial
    if tile is not None and max(z.shape[2:4]) > tile:
      _check_tiles(tile, overlap, 1, "latents")
      out = _tiled(self._jitted("_decode_raw"), np.asarray(z, np.float32), tile, overlap, s)
      return jnp.clip(out, -1.0, 1.0)
    if isinstance(z, jax.core.Tracer):
      return self._decode(z)
    return self._jitted("_decode")(z)

  def _jitted(self, method: str) -> Callable[[jax.Array], jax.Array]:
    graphdef, state = nnx.split(self)
    return lambda x: _run_jit(graphdef, method, state, x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_jit(graphdef, method: str, state, x):
  return getattr(nnx.merge(graphdef, state), method)(x)


@functools.partial(jax.jit, static_argnums=(0,))
def _run_jit_posterior(graphdef, state, x):
  return nnx.merge(graphdef, state)._encode(x, posterior=True)


POSTERIOR_UNITS = ("normalized", "raw")


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array, *,
                     normalize: Callable[[jax.Array], jax.Array] | None = None,
                     units: str = "raw") -> jax.Array:
  """A draw from the VAE posterior, eps ~ N(0, 1) (float32).

  Without `normalize`: `mean + exp(logvar / 2) * eps`, in the VAE's raw units. With
  `normalize` (the VAE's `normalize`) the draw comes back normalised, taken in `units`:

  - `normalized` (VideoX-Fun's Wan2.2 VAE, the authors' training): `normalize(mean) +
    exp(logvar / 2) * eps`; their `encode` normalises the posterior mean with the latent
    statistics but not the log-variance (wan_vae3_8.py:811-817 at d9caf3f), so the noise is
    not divided by the channel's std;
  - `raw` (diffusers' convention): `normalize(mean + exp(logvar / 2) * eps)`, the noise
    divided by the channel's std (0.59 to 2.84 for the Wan2.2 statistics).
  """
  if units not in POSTERIOR_UNITS:
    raise ValueError(f"posterior units={units!r} is not one of {', '.join(POSTERIOR_UNITS)}")
  eps = jax.random.normal(rng, mean.shape, jnp.float32)
  noise = jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps
  mean = mean.astype(jnp.float32)
  if normalize is None:
    return mean + noise
  if units == "normalized":
    return normalize(mean).astype(jnp.float32) + noise
  return normalize(mean + noise).astype(jnp.float32)


def _mean_half(conv: Conv, x: jax.Array, z_dim: int) -> jax.Array:
  """The quant conv (1x1x1) applied for the mean channels only (`latent_dist.mode()`)."""
  k = conv.kernel[...].reshape(conv.kernel.shape[-2:])[:, :z_dim].astype(jnp.float32)
  b = conv.bias[...][:z_dim].astype(jnp.float32)
  return jnp.einsum("...c,cz->...z", x.astype(jnp.float32), k, precision=conv.rt.precision) + b


# ---------------------------------------------------------------------------------------------
# Spatial tiling
# ---------------------------------------------------------------------------------------------


def _check_tiles(tile: int, overlap: int, unit: int, what: str) -> None:
  if tile % unit or overlap % unit:
    raise ValueError(f"tile={tile} and overlap={overlap} ({what}) must be multiples of {unit}")
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap={overlap} must be in [0, tile={tile})")


def _starts(n: int, tile: int, overlap: int) -> list[int]:
  """Tile starts along one axis; the last tile is moved back to end at `n` (equal tiles)."""
  if n <= tile:
    return [0]
  out = list(range(0, n - tile, tile - overlap))
  out.append(n - tile)
  return sorted(set(out))


def _ramps(starts: list[int], tile: int, scale: float) -> list[np.ndarray]:
  """Per-tile weights along one axis (output units): 1 inside, linear over the actual overlap
  with each neighbour, so that two overlapping tiles' weights sum to 1 there."""
  size = int(round(tile * scale))
  out = []
  for i, s in enumerate(starts):
    w = np.ones(size, np.float32)
    if i > 0:
      lo = int(round((starts[i - 1] + tile - s) * scale))
      w[:lo] = np.minimum(w[:lo], (np.arange(lo, dtype=np.float32) + 0.5) / lo)
    if i + 1 < len(starts):
      hi = int(round((s + tile - starts[i + 1]) * scale))
      w[size - hi:] = np.minimum(w[size - hi:], (np.arange(hi, dtype=np.float32)[::-1] + 0.5) / hi)
    out.append(w)
  return out


def _tiled(fn: Callable[[jax.Array], jax.Array], x: np.ndarray, tile: int, overlap: int,
           scale: float) -> jax.Array:
  """Runs `fn` on equal overlapping spatial tiles of `x (B, T, H, W, C)`, one at a time.

  `fn` maps a tile of size `tile` to one of size `tile * scale`; neighbouring outputs are
  blended linearly over their overlap (at least `overlap`; the last tile along an axis is
  moved back to end at the border, so it may overlap more) and accumulated on the host.
  """
  _, _, h, w, _ = x.shape
  th, tw = min(tile, h), min(tile, w)
  ys, xs = _starts(h, th, overlap), _starts(w, tw, overlap)
  wy, wx = _ramps(ys, th, scale), _ramps(xs, tw, scale)
  acc = norm = None
  for i, y0 in enumerate(ys):
    for j, x0 in enumerate(xs):
      out = np.asarray(fn(jnp.asarray(x[:, :, y0:y0 + th, x0:x0 + tw])))
      oh, ow = out.shape[2:4]
      oy, ox = int(round(y0 * scale)), int(round(x0 * scale))
      if acc is None:
        acc = np.zeros(out.shape[:2] + (int(round(h * scale)), int(round(w * scale))) + out.shape[4:], np.float32)
        norm = np.zeros(acc.shape[2:4], np.float32)
      wgt = np.outer(wy[i], wx[j])
      acc[:, :, oy:oy + oh, ox:ox + ow] += out * wgt[None, None, :, :, None]
      norm[oy:oy + oh, ox:ox + ow] += wgt
      del out
  return jnp.asarray(acc / norm[None, None, :, :, None])
