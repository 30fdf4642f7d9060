"""The Wan2.2 DiT (TI2V-5B and its smaller siblings) in Flax NNX.

`WanDiT(config, rngs=...)(x, t, context)`: `x (B, F, H, W, C)` channels-last latents, `t`
in [0, 1000] one of `(B,)`, per latent frame `(B, F/pt)` or per token `(B, L)` (L = F/pt *
H/ph * W/pw, tokens ordered f, h, w), `context (B, L_text, text_dim)` zero-padded to
`config.text_len` here. Returns the velocity, `(B, F, H, W, C)`, in float32.

Per-frame timesteps (what TI2V uses: `flow.token_timesteps`) compute the time embedding
and the AdaLN modulation once per frame, `(B, F, 6, D)`, and broadcast it over the frame's
tokens inside each block; per-token timesteps take the general path, `(B, L, 6, D)`. Both
give the same numbers for frame-constant timesteps (a (B, L, 6, D) float32 tensor is 2 GB
for 27k tokens, and its time MLP runs on every token).

Numerics follow the reference: the residual stream, AdaLN modulation
(`scale_shift_table + time embedding`), norms and the time embedding run in float32;
`config.dtype` applies inside matmuls and attention only. The blocks' parameters are
stacked on a leading 'layers' axis; `config.scan_layers` runs them under `lax.scan` (one
compiled block) or unrolled, with the same parameters either way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vbridge_jax.models.configs import DTYPES, DiTConfig
from vbridge_jax.models.layers import Dense, LayerNorm, RMSNorm, apply_rope, attention, layer_norm, param, rope_tables
from vbridge_jax.parallel.sharding import constrain

# Logical names of the activations (`sharding.ACTIVATION_AXES`); the rules map them to mesh
# axes, apart from the parameters' names (`sharding.PARAM_AXES`).
BATCH, LENGTH, EMBED, MOD = "activation_batch", "activation_length", "activation_embed", "activation_mod"
HEADS, KV, MLP = "activation_heads", "activation_kv", "activation_mlp"
TEXT_LENGTH, TEXT_EMBED = "activation_text_length", "activation_text_embed"
STREAM = (BATCH, LENGTH, EMBED)  # the residual stream (B, L, D)

# Names of the block's main activations (`checkpoint_name`), so that a remat policy can
# save tensors by name, e.g. `jax.checkpoint_policies.save_only_these_names("attn_q", "attn_k", "attn_v")`:
#   attn_q / attn_k / attn_v   queries, keys, values after norm and RoPE (self and cross)
#   attn_out                   attention output before the out projection (self and cross)
#   self_attn / cross_attn     each attention sub-block's output (before the gate/residual)
#   ffn_hidden / ffn_out       the FFN's activated hidden layer and its output
BLOCK_ACTIVATIONS = ("attn_q", "attn_k", "attn_v", "attn_out", "self_attn", "cross_attn",
                     "ffn_hidden", "ffn_out")

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding of `t (...)` -> `(..., dim)` in float32, cosine half first."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  ang = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(ang), jnp.sin(ang)], axis=-1)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU, tanh approximation (a named function: graph definitions of equal models compare equal)."""
  return jax.nn.gelu(x, approximate=True)


class Attention(nnx.Module):
  """Self- or cross-attention with RMSNorm over the full width on q and k."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    pd, dt = DTYPES[cfg.param_dtype], DTYPES[cfg.dtype]
    dense = lambda names: Dense(cfg.dim, cfg.dim, names, rngs=rngs, param_dtype=pd, dtype=dt)
    self.to_q = dense(("embed", "heads"))
    self.to_k = dense(("embed", "heads"))
    self.to_v = dense(("embed", "heads"))
    self.to_out = dense(("heads", "embed"))
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, rngs=rngs, param_dtype=pd, names=("heads",))
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, rngs=rngs, param_dtype=pd, names=("heads",))
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention
    self.splash_block = cfg.splash_block
    self.xla_block = cfg.xla_attention_block
    self.dtype = dt

  def __call__(self, x: jax.Array, ctx: jax.Array | None = None, rope=None) -> jax.Array:
    kv_in = x if ctx is None else ctx
    split = lambda y: y.reshape(y.shape[:2] + (self.num_heads, -1))
    q = split(self.norm_q(self.to_q(x)))
    k = split(self.norm_k(self.to_k(kv_in)))
    v = split(self.to_v(kv_in))
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    kv_len = LENGTH if ctx is None else TEXT_LENGTH
    q = checkpoint_name(constrain(q.astype(self.dtype), (BATCH, LENGTH, HEADS, KV)), "attn_q")
    k = checkpoint_name(constrain(k.astype(self.dtype), (BATCH, kv_len, HEADS, KV)), "attn_k")
    v = checkpoint_name(constrain(v.astype(self.dtype), (BATCH, kv_len, HEADS, KV)), "attn_v")
    with jax.named_scope("attention"):
      out = attention(q, k, v, self.impl, self.splash_block, self.xla_block)
    out = checkpoint_name(out.reshape(out.shape[:2] + (-1,)), "attn_out")
    return self.to_out(out)


class FeedForward(nnx.Module):
  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    pd, dt = DTYPES[cfg.param_dtype], DTYPES[cfg.dtype]
    self.fc1 = Dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), rngs=rngs, param_dtype=pd, dtype=dt)
    self.fc2 = Dense(cfg.ffn_dim, cfg.dim, ("mlp", "embed"), rngs=rngs, param_dtype=pd, dtype=dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = gelu_tanh(self.fc1(x))
    h = checkpoint_name(constrain(h, (BATCH, LENGTH, MLP)), "ffn_hidden")
    return checkpoint_name(self.fc2(h), "ffn_out")


class WanBlock(nnx.Module):
  """Self-attention (AdaLN, RoPE), cross-attention (affine LayerNorm), FFN (AdaLN)."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    pd = DTYPES[cfg.param_dtype]
    self.attn1 = Attention(cfg, rngs=rngs)
    self.attn2 = Attention(cfg, rngs=rngs)
    self.norm2 = LayerNorm(cfg.dim, cfg.eps, rngs=rngs, param_dtype=pd)
    self.ffn = FeedForward(cfg, rngs=rngs)
    init = nnx.initializers.normal(stddev=cfg.dim ** -0.5)
    self.scale_shift_table = param(rngs, init, (6, cfg.dim), ("mod", "embed"), pd)
    self.eps = cfg.eps
    self.dtype = DTYPES[cfg.dtype]

  def __call__(self, x, ctx, e, rope):
    """`x (B, L, D)` float32; `e (B, 1 or F or L, 6, D)` float32 time projection."""
    mod = self.scale_shift_table[...].astype(jnp.float32) + e
    shift, scale, gate, c_shift, c_scale, c_gate = (per_token(mod[:, :, i], x.shape[1])
                                                    for i in range(6))
    with jax.named_scope("self_attention"):
      h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(self.dtype)
      a = checkpoint_name(self.attn1(h, rope=rope), "self_attn")
      x = constrain(x + a.astype(jnp.float32) * gate, STREAM)
    with jax.named_scope("cross_attention"):
      h = self.norm2(x).astype(self.dtype)
      a = checkpoint_name(self.attn2(h, ctx), "cross_attn")
      x = constrain(x + a.astype(jnp.float32), STREAM)
    with jax.named_scope("ffn"):
      h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(self.dtype)
      x = x + self.ffn(h).astype(jnp.float32) * c_gate
    return constrain(x, STREAM)


def per_token(a: jax.Array, num_tokens: int) -> jax.Array:
  """`(B, T, D)` rows, one per timestep group (T = 1, frames or tokens) -> per token.

  T = 1 broadcasts as it is; T = frames repeats each frame's row over its tokens (tokens
  are ordered f, h, w), constrained to the token sharding so each device expands its own
  tokens only.
  """
  groups = a.shape[1]
  if groups in (1, num_tokens):
    return a
  a = jnp.repeat(a, num_tokens // groups, axis=1, total_repeat_length=num_tokens)
  return constrain(a, STREAM)


class MLP2(nnx.Module):
  """linear_1 -> activation -> linear_2 (time and text embedders)."""

  def __init__(self, din: int, dim: int, names_in: str, act, *, rngs, param_dtype, dtype):
    self.linear_1 = Dense(din, dim, (names_in, "mlp"), rngs=rngs, param_dtype=param_dtype, dtype=dtype)
    self.linear_2 = Dense(dim, dim, ("mlp", "embed"), rngs=rngs, param_dtype=param_dtype, dtype=dtype)
    self.act = act

  def __call__(self, x):
    return self.linear_2(self.act(self.linear_1(x)))


class WanDiT(nnx.Module):
  """Wan2.2 diffusion transformer; see the module docstring for the call convention."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    pd, dt = DTYPES[cfg.param_dtype], DTYPES[cfg.dtype]
    patch = math.prod(cfg.patch_size)
    self.patch_embedding = Dense(patch * cfg.in_channels, cfg.dim, ("patch_in", "embed"), rngs=rngs,
                                 param_dtype=pd, dtype=dt)
    # The time embedding stays in float32 whatever the compute dtype (it drives modulation).
    self.time_embedder = MLP2(cfg.freq_dim, cfg.dim, "freq", nnx.silu, rngs=rngs, param_dtype=pd,
                              dtype=jnp.float32)
    self.time_proj = Dense(cfg.dim, 6 * cfg.dim, ("embed", "mod_embed"), rngs=rngs, param_dtype=pd,
                           dtype=jnp.float32)
    self.text_embedder = MLP2(cfg.text_dim, cfg.dim, "text_embed", gelu_tanh, rngs=rngs, param_dtype=pd,
                              dtype=dt)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(r):
      return WanBlock(cfg, rngs=r)

    self.blocks = make_blocks(rngs)
    self.proj_out = Dense(cfg.dim, patch * cfg.out_channels, ("embed", "patch_out"), rngs=rngs,
                          param_dtype=pd, dtype=dt)
    init = nnx.initializers.normal(stddev=cfg.dim ** -0.5)
    self.scale_shift_table = param(rngs, init, (2, cfg.dim), ("mod", "embed"), pd)

  # -- pieces ---------------------------------------------------------------------------------

  def patchify(self, x: jax.Array) -> jax.Array:
    b, f, h, w, c = x.shape
    pt, ph, pw = self.config.patch_size
    if f % pt or h % ph or w % pw:
      raise ValueError(f"latent shape {x.shape[1:4]} is not a multiple of the patch {self.config.patch_size}")
    x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)

  def unpatchify(self, x: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    b = x.shape[0]
    pt, ph, pw = self.config.patch_size
    f, h, w = grid
    x = x.reshape(b, f, h, w, pt, ph, pw, -1)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, f * pt, h * ph, w * pw, -1)

  def embed_time(self, t: jax.Array, grid: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
    """`t (B,)`, `(B, F)` or `(B, L)` -> `temb (B, T, D)`, `e (B, T, 6, D)` float32, T = 1, F or L.

    `grid` is the token grid (F, H, W) after patchifying. With T = F the embedding and
    modulation are computed per frame and broadcast over each frame's tokens in the blocks.
    """
    frames, num_tokens = grid[0], math.prod(grid)
    if t.ndim == 1:
      t, rows = t[:, None], None
    elif t.ndim == 2 and t.shape[1] == num_tokens:
      rows = LENGTH  # per token (also when F == L: one token per frame)
    elif t.ndim == 2 and t.shape[1] == frames:
      rows = None  # per frame: a few rows, replicated over the token axis
    else:
      raise ValueError(f"timesteps of shape {t.shape}: expected (B,), (B, {frames}) per frame "
                       f"or (B, {num_tokens}) per token")
    # Sharded by batch (and tokens) like the stream they modulate: with per-token timesteps
    # `e` is (B, L, 6, D), which, left to propagation, XLA may compute whole on every chip.
    t = constrain(t, (BATCH, rows))
    temb = constrain(self.time_embedder(timestep_embedding(t, self.config.freq_dim)),
                     (BATCH, rows, EMBED))
    e = self.time_proj(nnx.silu(temb))
    return temb, constrain(e.reshape(e.shape[:-1] + (6, self.config.dim)),
                           (BATCH, rows, MOD, EMBED))

  def embed_text(self, context: jax.Array) -> jax.Array:
    cfg = self.config
    n = context.shape[1]
    if n > cfg.text_len:
      raise ValueError(f"context has {n} tokens; the model takes at most text_len={cfg.text_len}")
    if context.shape[-1] != cfg.text_dim:
      raise ValueError(f"context width {context.shape[-1]} != text_dim={cfg.text_dim}")
    context = jnp.pad(context, ((0, 0), (0, cfg.text_len - n), (0, 0)))
    context = constrain(context, (BATCH, TEXT_LENGTH, TEXT_EMBED))  # often a broadcast
    ctx = self.text_embedder(context.astype(DTYPES[cfg.dtype]))
    return constrain(ctx, (BATCH, TEXT_LENGTH, EMBED))

  def run_blocks(self, x, ctx, e, rope):
    cfg = self.config
    graphdef, params = nnx.split(self.blocks)

    def body(h, layer_params):
      with jax.named_scope("block"):
        return nnx.merge(graphdef, layer_params)(h, ctx, e, rope), None

    if cfg.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      x, _ = jax.lax.scan(body, x, params)
    else:
      for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], params))
    return x

  # -- forward --------------------------------------------------------------------------------

  def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"latents of shape {x.shape}: expected (B, F, H, W, {cfg.in_channels})")
    pt, ph, pw = cfg.patch_size
    grid = (x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw)
    with jax.named_scope("embed"):
      tokens = self.patchify(x)
      h = self.patch_embedding(tokens).astype(jnp.float32)
      h = constrain(h, STREAM)
      temb, e = self.embed_time(jnp.asarray(t), grid)
      ctx = self.embed_text(jnp.asarray(context))
    cos, sin = rope_tables(grid, cfg.rope_split, cfg.rope_theta, cfg.rope_max_seq_len)
    h = self.run_blocks(h, ctx, e, (jnp.asarray(cos), jnp.asarray(sin)))
    with jax.named_scope("head"):
      mod = self.scale_shift_table[...].astype(jnp.float32) + temb[:, :, None, :]
      shift, scale = (per_token(mod[:, :, i], h.shape[1]) for i in range(2))
      h = layer_norm(h, cfg.eps) * (1 + scale) + shift
      out = self.proj_out(h.astype(DTYPES[cfg.dtype])).astype(jnp.float32)
      return self.unpatchify(out, grid)
