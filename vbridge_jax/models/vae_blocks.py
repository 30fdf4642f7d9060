"""Building blocks of the Wan2.2 VAE, channels-last: `(B, T, H, W, C)`.

Every causal convolution with a temporal kernel carries a cache of its last input frames
from one time chunk into the next. Caches travel through a `Caches` object: on the first
chunk it has no incoming caches (`first` is true) and the convolutions see zero frames in
front, exactly as the reference pads; every layer then appends the cache it leaves for the
next chunk, in a fixed order, so that the list of caches is a pytree with the same shapes
after every chunk and can be the carry of `jax.lax.scan`.

Two layers behave differently on the first chunk, as in the reference: the temporal
downsampler passes the first frame through without its time convolution, and the temporal
upsampler likewise keeps one frame (and the duplicate-up shortcut drops its first copy).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vbridge_jax.models.configs import DTYPES, VAEConfig

CACHE_T = 2  # frames a temporal-kernel-3 causal convolution carries into the next chunk

_PRECISION = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


class Caches:
  """The per-layer time caches of one chunk: read in order, written in the same order."""

  def __init__(self, incoming: list[jax.Array] | None):
    self.incoming = incoming
    self.outgoing: list[jax.Array] = []
    self._i = 0

  @property
  def first(self) -> bool:
    return self.incoming is None

  def take(self) -> jax.Array | None:
    if self.incoming is None:
      return None
    c = self.incoming[self._i]
    self._i += 1
    return c

  def put(self, c: jax.Array) -> None:
    self.outgoing.append(c)


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Compute dtype, parameter dtype and precision, shared by every layer of one model."""

  dtype: Any
  param_dtype: Any
  precision: Any

  @classmethod
  def of(cls, cfg: VAEConfig) -> "Runtime":
    return cls(DTYPES[cfg.dtype], DTYPES[cfg.param_dtype], _PRECISION[cfg.precision])


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, dtype: Any) -> jax.Array:
  return (jax.random.normal(rngs.params(), shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)


class Conv(nnx.Module):
  """A convolution, channels-last. `kernel` is (kt, kh, kw, in, out) or (kh, kw, in, out).

  3D kernels are causal in time: `kt - 1` cached (or zero) frames go in front. Spatial
  padding is symmetric `k // 2` unless `pad` is given (per spatial side: (lo, hi)).
  """

  def __init__(self, cin: int, cout: int, kernel: tuple[int, ...], rt: Runtime, *,
               rngs: nnx.Rngs, stride: tuple[int, ...] | None = None,
               pad: tuple[tuple[int, int], ...] | None = None):
    self.rt = rt
    self.ksize = tuple(kernel)
    self.stride = tuple(stride) if stride is not None else (1,) * len(kernel)
    self.pad = pad
    fan_in = cin * math.prod(kernel)
    self.kernel = nnx.Param(_normal(rngs, self.ksize + (cin, cout), fan_in, rt.param_dtype))
    self.bias = nnx.Param(jnp.zeros((cout,), rt.param_dtype))

  def _spatial_pad(self) -> list[tuple[int, int]]:
    if self.pad is not None:
      return list(self.pad)
    return [(k // 2, k // 2) for k in self.ksize[-2:]]

  def __call__(self, x: jax.Array, front: int = 0) -> jax.Array:
    """`x` (B, T, H, W, C) for 3D kernels (already holding its cached frames) or (N, H, W, C).

    `front` zero frames precede `x` in time (the first chunk's causal padding): their terms
    are left out instead of multiplied (a third of the work of a 3-frame kernel on 1 frame).
    """
    dt = self.rt.dtype
    if len(self.ksize) == 3:
      y = self._taps(x.astype(dt), front)
    else:
      y = self._conv2d(x.astype(dt), self.kernel[...])
    return (y + self.bias[...].astype(y.dtype)).astype(dt)

  def _conv2d(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    dt = self.rt.dtype
    return jax.lax.conv_general_dilated(
        x, kernel.astype(dt), window_strides=self.stride[-2:], padding=self._spatial_pad(),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.rt.precision,
        preferred_element_type=jnp.float32)

  def _taps(self, x: jax.Array, front: int) -> jax.Array:
    """A 3D convolution as a sum over its time taps of 2D convolutions of whole frames.

    XLA:CPU runs a channels-last 3D convolution about 1.3x slower than the same work as
    2D convolutions (benchmarks/vae_speed.py); the sum is accumulated in float32.
    """
    kt, st = self.ksize[0], self.stride[0]
    b, t = x.shape[:2]
    n_out = (front + t - kt) // st + 1
    kernel = self.kernel[...]
    out = None
    for k in range(kt):
      i0 = max(0, -(-(front - k) // st))  # first output frame whose tap k reads a real frame
      n = n_out - i0
      if n <= 0:
        continue
      j0 = i0 * st + k - front
      frames = x[:, j0:j0 + st * (n - 1) + 1:st]
      y = self._conv2d(frames.reshape((b * n,) + x.shape[2:]), kernel[k])
      y = y.reshape((b, n) + y.shape[1:])
      if i0:
        y = jnp.pad(y, ((0, 0), (i0, 0)) + ((0, 0),) * 3)
      out = y if out is None else out + y
    return out


def causal_conv(conv: Conv, x: jax.Array, caches: Caches) -> jax.Array:
  """A temporal-kernel-3 causal convolution through the chunk caches."""
  prev = caches.take()
  if prev is None:  # the first chunk: zero frames in front, skipped by the convolution
    xin = jnp.concatenate([jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype), x], axis=1)
    caches.put(xin[:, -CACHE_T:])
    return conv(x, front=CACHE_T)
  xin = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
  caches.put(xin[:, -CACHE_T:])
  return conv(xin)


class RMSNorm(nnx.Module):
  """`x / max(|x|, 1e-12) * sqrt(C) * gamma` over the channel axis, in float32."""

  def __init__(self, dim: int, rt: Runtime):
    self.rt = rt
    self.scale = math.sqrt(dim)
    self.gamma = nnx.Param(jnp.ones((dim,), rt.param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    ss = jnp.sum(x32 * x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.maximum(ss, 1e-24)) * self.scale * self.gamma[...].astype(jnp.float32)
    return y.astype(self.rt.dtype)


class ResidualBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, rt: Runtime, *, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cin, rt)
    self.conv1 = Conv(cin, cout, (3, 3, 3), rt, rngs=rngs)
    self.norm2 = RMSNorm(cout, rt)
    self.conv2 = Conv(cout, cout, (3, 3, 3), rt, rngs=rngs)
    self.conv_shortcut = Conv(cin, cout, (1, 1, 1), rt, rngs=rngs) if cin != cout else None

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    h = self.conv_shortcut(x) if self.conv_shortcut is not None else x
    x = causal_conv(self.conv1, jax.nn.silu(self.norm1(x)), caches)
    x = causal_conv(self.conv2, jax.nn.silu(self.norm2(x)), caches)
    return x + h


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, precision: Any) -> jax.Array:
  s = jnp.einsum("bqc,bkc->bqk", q, k, precision=precision) / math.sqrt(q.shape[-1])
  p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bqk,bkc->bqc", p, v, precision=precision)


class AttentionBlock(nnx.Module):
  """Single-head self-attention within each frame, with a residual connection."""

  def __init__(self, dim: int, rt: Runtime, block: int, *, rngs: nnx.Rngs):
    self.rt = rt
    self.block = block
    self.norm = RMSNorm(dim, rt)
    self.to_qkv = Conv(dim, 3 * dim, (1, 1), rt, rngs=rngs)
    self.proj = Conv(dim, dim, (1, 1), rt, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    with jax.named_scope("attention"):
      return self._attend_frames(x)

  def _attend_frames(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    y = self.norm(x.reshape(b * t, h, w, c))
    qkv = self.to_qkv(y).reshape(b * t, h * w, 3 * c)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    n = h * w
    if n <= self.block:
      o = _attend(q, k, v, self.rt.precision)
    else:  # queries in blocks: memory O(block * n), not O(n * n)
      nb = -(-n // self.block)
      qb = jnp.pad(q, ((0, 0), (0, nb * self.block - n), (0, 0)))
      qb = qb.reshape(b * t, nb, self.block, c).swapaxes(0, 1)
      o = jax.lax.map(lambda qq: _attend(qq, k, v, self.rt.precision), qb)
      o = o.swapaxes(0, 1).reshape(b * t, nb * self.block, c)[:, :n]
    o = self.proj(o.reshape(b * t, h, w, c))
    return o.reshape(b, t, h, w, c) + x


class MidBlock(nnx.Module):
  def __init__(self, dim: int, rt: Runtime, block: int, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, rt, rngs=rngs), ResidualBlock(dim, dim, rt, rngs=rngs)])
    self.attentions = nnx.List([AttentionBlock(dim, rt, block, rngs=rngs)])

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    x = self.resnets[0](x, caches)
    x = self.attentions[0](x)
    return self.resnets[1](x, caches)


def _per_frame(fn, x: jax.Array) -> jax.Array:
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


class Resample(nnx.Module):
  """Spatial 2x down/up sampling (conv 3x3), with a causal temporal 2x down/up (`time_conv`)."""

  def __init__(self, dim: int, mode: str, rt: Runtime, *, rngs: nnx.Rngs):
    self.mode = mode
    if mode.startswith("down"):
      self.resample = Conv(dim, dim, (3, 3), rt, rngs=rngs, stride=(2, 2), pad=((0, 1), (0, 1)))
      self.time_conv = (Conv(dim, dim, (3, 1, 1), rt, rngs=rngs, stride=(2, 1, 1))
                        if mode == "downsample3d" else None)
    else:
      self.resample = Conv(dim, dim, (3, 3), rt, rngs=rngs)
      self.time_conv = Conv(dim, 2 * dim, (3, 1, 1), rt, rngs=rngs) if mode == "upsample3d" else None

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    if self.mode == "upsample3d":
      if caches.first:  # the reference keeps the first frame as is and starts a zero cache
        caches.put(jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype))
      else:
        y = causal_conv(self.time_conv, x, caches)  # (B, T, H, W, 2C): two frames per frame
        b, t, h, w, c = x.shape
        x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    if self.mode.startswith("up"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest, scale 2
    x = _per_frame(self.resample, x)
    if self.mode == "downsample3d":
      prev = caches.take()
      caches.put(x[:, -1:])
      if prev is not None:  # the first chunk's single frame passes without a time conv
        x = self.time_conv(jnp.concatenate([prev.astype(x.dtype), x], axis=1))
    return x


def avg_down(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
  """The parameter-free shortcut of a down block: space/time to channels, group means."""
  b, t, h, w, c = x.shape
  pad_t = (-t) % ft
  if pad_t:
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    t += pad_t
  x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # (b, t', h', w', c, ft, fs, fs)
  group = c * ft * fs * fs // cout
  x = x.reshape(b, t // ft, h // fs, w // fs, cout, group)
  return jnp.mean(x.astype(jnp.float32), axis=-1).astype(x.dtype)


def dup_up(x: jax.Array, cout: int, ft: int, fs: int, first: bool) -> jax.Array:
  """The parameter-free shortcut of an up block: channels to space/time by repetition."""
  b, t, h, w, c = x.shape
  x = jnp.repeat(x, cout * ft * fs * fs // c, axis=-1)
  x = x.reshape(b, t, h, w, cout, ft, fs, fs)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, cout)
  return x[:, ft - 1:] if first else x


class DownBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, n: int, temporal: bool, down: bool, rt: Runtime, *,
               rngs: nnx.Rngs):
    self.cout = cout
    self.ft = 2 if temporal else 1
    self.fs = 2 if down else 1
    dims = [cin] + [cout] * n
    self.resnets = nnx.List([ResidualBlock(a, o, rt, rngs=rngs) for a, o in zip(dims[:-1], dims[1:])])
    mode = "downsample3d" if temporal else "downsample2d"
    self.downsampler = Resample(cout, mode, rt, rngs=rngs) if down else None

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    short = avg_down(x, self.cout, self.ft, self.fs)
    for r in self.resnets:
      x = r(x, caches)
    if self.downsampler is not None:
      x = self.downsampler(x, caches)
    return x + short


class UpBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, n: int, temporal: bool, up: bool, rt: Runtime, *,
               rngs: nnx.Rngs):
    self.cout = cout
    self.up = up
    self.ft = 2 if temporal else 1
    dims = [cin] + [cout] * (n + 1)
    self.resnets = nnx.List([ResidualBlock(a, o, rt, rngs=rngs) for a, o in zip(dims[:-1], dims[1:])])
    mode = "upsample3d" if temporal else "upsample2d"
    self.upsampler = Resample(cout, mode, rt, rngs=rngs) if up else None

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    short = dup_up(x, self.cout, self.ft, 2, caches.first) if self.up else None
    for r in self.resnets:
      x = r(x, caches)
    if self.upsampler is not None:
      x = self.upsampler(x, caches)
    return x + short if short is not None else x


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, rt: Runtime, *, rngs: nnx.Rngs):
    dims = [cfg.base_dim * m for m in (1,) + cfg.dim_mult]
    last = len(cfg.dim_mult) - 1
    self.conv_in = Conv(cfg.in_channels, dims[0], (3, 3, 3), rt, rngs=rngs)
    self.down_blocks = nnx.List([
        DownBlock(dims[i], dims[i + 1], cfg.num_res_blocks,
                  temporal=cfg.temporal_downsample[i] if i != last else False, down=i != last,
                  rt=rt, rngs=rngs)
        for i in range(len(cfg.dim_mult))])
    self.mid_block = MidBlock(dims[-1], rt, cfg.attn_block, rngs=rngs)
    self.norm_out = RMSNorm(dims[-1], rt)
    self.conv_out = Conv(dims[-1], 2 * cfg.z_dim, (3, 3, 3), rt, rngs=rngs)

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    with jax.named_scope("encoder_in"):
      x = causal_conv(self.conv_in, x, caches)
    for i, blk in enumerate(self.down_blocks):
      with jax.named_scope(f"encoder_down_{i}"):
        x = blk(x, caches)
    with jax.named_scope("encoder_mid"):
      x = self.mid_block(x, caches)
    with jax.named_scope("encoder_out"):
      return causal_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), caches)


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, rt: Runtime, *, rngs: nnx.Rngs):
    mult = cfg.dim_mult
    dims = [cfg.decoder_base_dim * m for m in (mult[-1],) + mult[::-1]]
    temporal_up = cfg.temporal_downsample[::-1]
    last = len(mult) - 1
    self.conv_in = Conv(cfg.z_dim, dims[0], (3, 3, 3), rt, rngs=rngs)
    self.mid_block = MidBlock(dims[0], rt, cfg.attn_block, rngs=rngs)
    self.up_blocks = nnx.List([
        UpBlock(dims[i], dims[i + 1], cfg.num_res_blocks,
                temporal=temporal_up[i] if i != last else False, up=i != last, rt=rt, rngs=rngs)
        for i in range(len(mult))])
    self.norm_out = RMSNorm(dims[-1], rt)
    self.conv_out = Conv(dims[-1], cfg.out_channels, (3, 3, 3), rt, rngs=rngs)

  def __call__(self, x: jax.Array, caches: Caches) -> jax.Array:
    with jax.named_scope("decoder_in"):
      x = causal_conv(self.conv_in, x, caches)
    with jax.named_scope("decoder_mid"):
      x = self.mid_block(x, caches)
    for i, blk in enumerate(self.up_blocks):
      with jax.named_scope(f"decoder_up_{i}"):
        x = blk(x, caches)
    with jax.named_scope("decoder_out"):
      return causal_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), caches)
