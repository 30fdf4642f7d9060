"""WanDiT parity with diffusers' WanTransformer3DModel (fp32, CPU, random weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.dit_reference import inputs, jax_from_torch, make_torch_dit, max_rel_err, torch_forward
from vbridge_jax.models import DiTConfig, WanDiT
from vbridge_jax.models.layers import attention
from vbridge_jax.parallel.sharding import PARAM_AXES, logical_specs

TOL = 1e-4

# Two tiny architectures: head_dim 32 (rope split 12/10/10) and head_dim 24 (8/8/8), different
# widths, depths, channel counts and text lengths.
CONFIGS = {
    "a": DiTConfig.tiny(),
    "b": DiTConfig.tiny(dim=96, num_heads=4, num_layers=3, ffn_dim=160, in_channels=12,
                        out_channels=12, text_dim=48, text_len=20, freq_dim=64),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
  cfg = CONFIGS[request.param]
  ref = make_torch_dit(cfg, seed=len(request.param) + ord(request.param))
  return cfg, ref


def _check(cfg, ref, dit, per_token, **shape):
  x, t, ctx = inputs(cfg, per_token=per_token, **shape)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  got = nnx.jit(lambda m, *a: m(*a))(dit, x, t, ctx)
  assert got.shape == want.shape
  err = max_rel_err(got, want)
  assert err <= TOL, f"max abs error {err:.2e} x max|ref|"
  return err


@pytest.mark.parametrize("per_token", [False, True], ids=["t_scalar", "t_per_token"])
@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_parity(pair, per_token, scan):
  cfg, ref = pair
  dit = jax_from_torch(ref, cfg.replace(scan_layers=scan))
  _check(cfg, ref, dit, per_token)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_parity_remat_under_grad(pair, remat):
  """Remat changes nothing in the forward nor in the gradient."""
  cfg, ref = pair
  x, t, ctx = inputs(cfg, per_token=True)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  base = jax_from_torch(ref, cfg)
  dit = jax_from_torch(ref, cfg.replace(remat=remat, scan_layers=False))

  def loss(m):
    return jnp.mean(jnp.square(m(x, t, ctx)))

  @nnx.jit
  def fwd_grad(m):
    return m(x, t, ctx), nnx.grad(loss)(m)

  out, g = fwd_grad(dit)
  _, g_base = fwd_grad(base)
  assert max_rel_err(out, want) <= TOL
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_base)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(b)) + 1e-30))


def test_parity_larger_grid(pair):
  """Another non-square latent grid, 5 frames, batch 1, full-length text; the xla attention
  in query blocks of 4 rows (15 tokens: 4 blocks, the last one padded)."""
  cfg, ref = pair
  dit = jax_from_torch(ref, cfg.replace(xla_attention_block=4))
  _check(cfg, ref, dit, True, batch=1, frames=5, height=6, width=2, text=cfg.text_len)


def test_splash_attention_matches_xla():
  """The TPU splash kernel (Pallas interpret mode here), padding masked, equals XLA attention."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 150, 2, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 70, 2, 32)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((2, 70, 2, 32)), jnp.float32)
  want = attention(q, k, v, "xla")
  got = attention(q, k, v, "splash", splash_block=128)
  np.testing.assert_allclose(got, want, atol=2e-5 * float(jnp.max(jnp.abs(want))))


def test_blocked_xla_attention_matches_unblocked():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((2, 300, 3, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 70, 3, 16)), jnp.float32)
  want = attention(q, k, k, "xla", xla_block=0)
  for block in (64, 128, 512):
    np.testing.assert_allclose(attention(q, k, k, "xla", xla_block=block), want, atol=1e-6)


def test_parity_splash_model():
  cfg = CONFIGS["a"]
  ref = make_torch_dit(cfg, seed=3)
  dit = jax_from_torch(ref, cfg.replace(attention="splash", splash_block=128))
  _check(cfg, ref, dit, True, batch=1)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 64, 2, 64)), jnp.bfloat16) for _ in range(3))
  np.testing.assert_allclose(np.float32(attention(q, k, v, "cudnn")), np.float32(attention(q, k, v, "xla")),
                             atol=2e-2)


def _sharded_forward(dit, axes, rules, *args):
  mesh = jax.make_mesh((2, 2, 2), axes, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    graphdef, state = nnx.split(dit)
    shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), logical_specs(state, rules))
    state = jax.device_put(state, shardings)

    @jax.jit
    def fwd(state, *args):
      return nnx.merge(graphdef, state)(*args)

    return state, fwd(state, *args)


def test_sharded_forward_matches(pair):
  """Logical-axis rules resolve onto a 2x2x2 mesh; the sharded forward equals the reference."""
  cfg, ref = pair
  x, t, ctx = inputs(cfg, per_token=True)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  rules = (("activation_batch", "data"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
           ("activation_heads", "tensor"), ("activation_mlp", "tensor"))
  state, got = _sharded_forward(jax_from_torch(ref, cfg), ("data", "fsdp", "tensor"), rules, x, t, ctx)
  kernel = state["blocks"]["ffn"]["fc1"]["kernel"][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert max_rel_err(got, want) <= TOL


def test_time_modulation_is_sharded_by_batch():
  """Per-token timesteps give a (B, L, 6, D) modulation; it follows the batch (and token)
  sharding instead of being computed whole on every device. Per-frame timesteps give
  (B, F, 6, D), sharded by batch."""
  cfg = CONFIGS["a"]
  dit = WanDiT(cfg, rngs=nnx.Rngs(0))
  mesh = jax.make_mesh((4, 2), ("data", "context"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (("activation_batch", "data"), ("activation_length", "context"))
  t = jnp.linspace(0.0, 999.0, 4 * 16).reshape(4, 16)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    temb, e = nnx.jit(lambda m, t: m.embed_time(t, (4, 2, 2)))(dit, t)
    temb_f, e_f = nnx.jit(lambda m, t: m.embed_time(t, (4, 2, 2)))(dit, t[:, ::4])
  assert e.shape == (4, 16, 6, cfg.dim)
  assert e.sharding.spec[:2] == ("data", "context") and temb.sharding.spec[:2] == ("data", "context")
  assert e_f.shape == (4, 4, 6, cfg.dim) and tuple(e_f.sharding.spec)[:2] in (("data",), ("data", None))
  assert tuple(temb_f.sharding.spec)[:2] in (("data",), ("data", None))


def test_per_frame_timesteps_equal_per_token():
  """Frame-constant timesteps given per frame (B, F) (modulation per frame, broadcast over
  tokens) give exactly the per-token path's output, scanned and unrolled."""
  cfg = CONFIGS["b"]
  x, t_tok, ctx = inputs(cfg, per_token=True, frames=4)
  per_frame = (4 // 2) * (6 // 2)
  t_frame = t_tok[:, ::per_frame]
  assert t_frame.shape == (2, 4)
  np.testing.assert_array_equal(np.repeat(t_frame, per_frame, axis=1), t_tok)
  fwd = nnx.jit(lambda m, *a: m(*a))
  for scan in (True, False):
    dit = WanDiT(cfg.replace(scan_layers=scan), rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(fwd(dit, x, t_frame, ctx), fwd(dit, x, t_tok, ctx))


def test_parity_per_token_timesteps_not_frame_constant(pair):
  """Arbitrary per-token timesteps (not constant within a frame) keep the general path."""
  cfg, ref = pair
  x, _, ctx = inputs(cfg)
  t = np.random.default_rng(7).uniform(0, 1000, (2, 3 * 2 * 3)).astype(np.float32)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  got = nnx.jit(lambda m, *a: m(*a))(jax_from_torch(ref, cfg), x, t, ctx)
  assert max_rel_err(got, want) <= TOL


def test_sharded_splash_sequence_parallel():
  """Splash under shard_map: batch over data, tokens over context, heads over tensor."""
  cfg = CONFIGS["a"]
  ref = make_torch_dit(cfg, seed=3)
  x, t, ctx = inputs(cfg, per_token=True)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  rules = (("activation_batch", "data"), ("activation_length", "context"), ("heads", "tensor"),
           ("mlp", "tensor"), ("activation_heads", "tensor"), ("activation_mlp", "tensor"))
  dit = jax_from_torch(ref, cfg.replace(attention="splash", splash_block=128))
  _, got = _sharded_forward(dit, ("data", "context", "tensor"), rules, x, t, ctx)
  assert max_rel_err(got, want) <= TOL


def test_bf16_compute_close_to_fp32():
  cfg = CONFIGS["b"]
  ref = make_torch_dit(cfg, seed=5)
  x, t, ctx = inputs(cfg, per_token=True)
  f32 = nnx.jit(lambda m, *a: m(*a))(jax_from_torch(ref, cfg), x, t, ctx)
  bf16 = nnx.jit(lambda m, *a: m(*a))(jax_from_torch(ref, cfg.replace(dtype="bfloat16")), x, t, ctx)
  assert bf16.dtype == jnp.float32
  err = max_rel_err(bf16, np.asarray(f32))
  assert 0 < err <= 2e-2, err


def test_bad_inputs_are_named():
  cfg = CONFIGS["a"]
  dit = WanDiT(cfg, rngs=nnx.Rngs(0))
  x, t, ctx = inputs(cfg)
  with pytest.raises(ValueError, match="text_len"):
    dit(x, t, np.zeros((2, cfg.text_len + 1, cfg.text_dim), np.float32))
  with pytest.raises(ValueError, match="timesteps"):
    dit(x, np.zeros((2, 5), np.float32), ctx)
  with pytest.raises(ValueError, match="multiple of the patch"):
    dit(x[:, :, :3], t, ctx)


def test_equal_configs_share_one_graphdef():
  """Equal configs give equal graph definitions, so jitted callers compile once per config."""
  cfg = CONFIGS["a"]
  a = nnx.split(WanDiT(cfg, rngs=nnx.Rngs(0)))[0]
  b = nnx.split(WanDiT(cfg, rngs=nnx.Rngs(1)))[0]
  assert a == b and hash(a) == hash(b)


def test_every_parameter_has_known_logical_names():
  state = nnx.state(nnx.eval_shape(lambda: WanDiT(CONFIGS["a"], rngs=nnx.Rngs(0))))
  for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names = v.get_metadata()["out_sharding"]
    assert len(names) == len(v.shape) and set(names) <= set(PARAM_AXES), names


def test_block_activations_are_named_for_remat():
  """Every name in BLOCK_ACTIVATIONS is a checkpoint name in the block, so a remat policy
  that saves those names keeps exactly them (and the HLO carries the named scopes)."""
  import contextlib
  import io

  from jax.ad_checkpoint import print_saved_residuals

  from vbridge_jax.models.wan_dit import BLOCK_ACTIVATIONS
  cfg = CONFIGS["a"]
  dit = WanDiT(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0))
  x, t, ctx = inputs(cfg)
  graphdef, state = nnx.split(dit)
  policy = jax.checkpoint_policies.save_only_these_names(*BLOCK_ACTIVATIONS)
  f = jax.checkpoint(lambda s: jnp.sum(nnx.merge(graphdef, s)(x, t, ctx)), policy=policy)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    print_saved_residuals(f, state)
  saved = out.getvalue()
  for name in BLOCK_ACTIVATIONS:
    assert f"'{name}'" in saved, name
  hlo = jax.jit(lambda s: nnx.merge(graphdef, s)(x, t, ctx)).lower(state).as_text(debug_info=True)
  for scope in ("self_attention", "cross_attention", "ffn"):
    assert scope in hlo, scope
