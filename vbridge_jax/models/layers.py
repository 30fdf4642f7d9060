"""Building blocks shared by the Wan2.2 ports: dense layers with logical axes, norms, RoPE,
and attention (XLA, cuDNN, TPU splash).

Parameters carry logical axis names (`out_sharding` metadata, `sharding.PARAM_AXES`);
activations are constrained with `sharding.constrain(x, names)` (`sharding.ACTIVATION_AXES`).
Both resolve in `vbridge_jax.parallel.sharding`, through the logical-axis rules that the caller sets
with `nnx.logical_axis_rules(rules)` and the mesh set with `jax.set_mesh`; no mesh axis name
appears in model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vbridge_jax.parallel.sharding import current_spec

Names = Sequence[str | None]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Names, dtype) -> nnx.Param:
  """A parameter annotated with logical axis names.

  Sharding is not applied at creation (`eager_sharding=False`): callers that want sharded
  parameters create the model under `jax.jit` with `out_shardings` from
  `nnx.get_partition_spec` resolved by their rules.
  """
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(names),
                   eager_sharding=False)


class Dense(nnx.Module):
  """y = x @ kernel + bias, computed in `dtype` (float32 accumulation for bfloat16 inputs)."""

  def __init__(self, din: int, dout: int, names: Names, *, rngs: nnx.Rngs,
               param_dtype=jnp.float32, dtype=jnp.float32, use_bias: bool = True):
    self.kernel = param(rngs, nnx.initializers.xavier_uniform(), (din, dout), names, param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros_init(), (dout,), names[-1:], param_dtype) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                preferred_element_type=jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Parameter-free LayerNorm in float32 (biased variance, as torch)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
  """Affine LayerNorm, computed in float32."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), ("embed",), param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros_init(), (dim,), ("embed",), param_dtype)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_norm(x, self.eps) * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale, computed in float32."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
               names: Names = ("embed",)):
    self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), names, param_dtype)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return x * self.scale[...].astype(jnp.float32)


# -------------------------------------------------------------------------------------------
# 3D rotary position embedding
# -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def rope_tables(grid: tuple[int, int, int], split: tuple[int, int, int], theta: float,
                max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """cos and sin tables `(F*H*W, head_dim/2)` for a token grid, one per rotated pair.

  Each of t/h/w owns `split[i]` channels of the head (`split[i]/2` frequencies); angles are
  computed in float64, as the reference, and rounded to float32 once.
  """
  if max(grid) > max_len:
    raise ValueError(f"token grid {grid} exceeds rope_max_seq_len={max_len}")
  parts = []
  for axis, (n, d) in enumerate(zip(grid, split)):
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[: d // 2] / d)
    ang = np.outer(np.arange(n, dtype=np.float64), inv_freq)  # (n, d/2)
    shape = [1, 1, 1, d // 2]
    shape[axis] = n
    parts.append(np.broadcast_to(ang.reshape(shape), grid + (d // 2,)))
  ang = np.concatenate(parts, axis=-1).reshape(-1, sum(split) // 2)
  return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved pairs (x[2i], x[2i+1]) of `x (B, L, H, D)` in float32."""
  dtype = x.dtype
  x = x.astype(jnp.float32).reshape(x.shape[:-1] + (-1, 2))
  x1, x2 = x[..., 0], x[..., 1]
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
  return out.reshape(out.shape[:-2] + (-1,)).astype(dtype)


# -------------------------------------------------------------------------------------------
# Attention
# -------------------------------------------------------------------------------------------


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla",
              splash_block: int = 512, xla_block: int = 0) -> jax.Array:
  """Unmasked multi-head attention; `q (B, Lq, H, D)`, `k, v (B, Lk, H, D)` -> `(B, Lq, H, D)`.

  `xla` is plain dot-product attention that the compiler partitions like any op; `cudnn` is
  `jax.nn.dot_product_attention`'s cuDNN kernel (GPU, bf16/fp16); `splash` the Pallas TPU
  kernel, run per shard under `shard_map` when a mesh and rules are active: batch and heads
  stay sharded, queries keep their `activation_length` sharding (sequence parallelism over `context`),
  keys and values are gathered along their length.
  """
  if impl == "xla":
    return _xla_attention(q, k, v, xla_block)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  if impl == "splash":
    return _per_shard(functools.partial(splash_attention, block=splash_block), q, k, v)
  raise ValueError(f"attention implementation {impl!r} is not one of xla, cudnn, splash")


def _per_shard(fn, q, k, v):
  q_spec = current_spec(("activation_batch", "activation_length", "activation_heads",
                         "activation_kv"), q.shape)
  if q_spec is None:
    return fn(q, k, v)
  kv_spec = current_spec(("activation_batch", None, "activation_heads", "activation_kv"), k.shape)
  return jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v)


def _xla_attention(q, k, v, block: int = 0):
  """Softmax attention in float32, head-major, over query blocks of `block` rows (0: all).

  Blocking keeps the logits at `H x block x Lk` instead of `H x Lq x Lk` (memory at long
  sequences, cache locality on the CPU: 1.8x faster there at 2048 tokens); padded query
  rows are computed and dropped. The result does not depend on the block size.
  """
  b, lq, h, d = q.shape
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (B, H, L, D)
  scale = 1.0 / np.sqrt(d)

  def attend(qc):
    logits = jnp.einsum("bhqd,bhkd->bhqk", qc, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)

  if block <= 0 or lq <= block:
    out = attend(q)
  else:
    n = -(-lq // block)
    qb = jnp.pad(q, ((0, 0), (0, 0), (0, n * block - lq), (0, 0)))
    qb = qb.reshape(b, h, n, block, d).transpose(2, 0, 1, 3, 4)  # (n, B, H, block, D)
    out = jax.lax.map(attend, qb).transpose(1, 2, 0, 3, 4).reshape(b, h, n * block, d)[:, :, :lq]
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# Whether the splash kernel runs in Pallas interpret mode; None: off TPU. Set for a scope
# with `splash_interpret(False)` (vbridge_jax.aot compiles for a TPU topology from a CPU
# host: the target is TPU, not the host's backend).
_SPLASH_INTERPRET: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "splash_interpret", default=None)


@contextlib.contextmanager
def splash_interpret(interpret: bool | None):
  """Within the `with` block, traced splash attention uses `interpret` (None: off TPU)."""
  token = _SPLASH_INTERPRET.set(interpret)
  try:
    yield
  finally:
    _SPLASH_INTERPRET.reset(token)


def splash_attention(q, k, v, *, block: int = 512, interpret: bool | None = None):
  """The Pallas TPU splash kernel, inputs padded to block multiples with the padding masked.

  Padded keys get segment id 0 and every query segment id 1, so no query sees a padded key
  (padded query rows are computed against the real keys and dropped). Off TPU the kernel
  runs in Pallas interpret mode (slow; for tests only).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  if interpret is None:
    interpret = _SPLASH_INTERPRET.get()
    if interpret is None:
      interpret = jax.default_backend() != "tpu"
  _, lq, h, d = q.shape
  lk = k.shape[1]
  bq = min(block, _round_up(lq, 128))
  bk = min(block, _round_up(lk, 128))
  lq_p, lk_p = _round_up(lq, bq), _round_up(lk, bk)
  q = jnp.pad(q * (1.0 / np.sqrt(d)).astype(q.dtype), ((0, 0), (0, lq_p - lq), (0, 0), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, lk_p - lk), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, lk_p - lk), (0, 0), (0, 0)))
  seg = sk.SegmentIds(q=jnp.ones((lq_p,), jnp.int32), kv=(jnp.arange(lk_p) < lk).astype(jnp.int32))
  mask = sm.MultiHeadMask([sm.FullMask((lq_p, lk_p)) for _ in range(h)])
  sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                        block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  to_heads = lambda x: jnp.swapaxes(x, 0, 1)  # (L, H, D) -> (H, L, D)
  out = jax.vmap(lambda q1, k1, v1: kernel(to_heads(q1), to_heads(k1), to_heads(v1), segment_ids=seg))(q, k, v)
  return jnp.swapaxes(out, 1, 2)[:, :lq].astype(q.dtype)
