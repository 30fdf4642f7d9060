"""The Wan2.2 VAE against diffusers' AutoencoderKLWan (random weights, tiny widths, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from vbridge_jax.checkpoints.loading import from_params  # noqa: E402
from vbridge_jax.checkpoints.vae import convert_state_dict  # noqa: E402
from vbridge_jax.models.configs import VAEConfig  # noqa: E402
from vbridge_jax.models.wan_vae import WanVAE  # noqa: E402

TOL = 1e-4  # max abs error <= TOL * max |reference|
MEAN = [0.1 * i - 0.4 for i in range(8)]
STD = [0.5 + 0.1 * i for i in range(8)]


def diffusers_tiny(seed: int = 0):
  """diffusers' Wan2.2 VAE with the widths of `VAEConfig.tiny()`; every parameter random."""
  torch.manual_seed(seed)
  ref = diffusers.AutoencoderKLWan(
      base_dim=8, decoder_base_dim=12, z_dim=8, is_residual=True, in_channels=12, out_channels=12,
      patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=MEAN,
      latents_std=STD).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1.0 + 0.5 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
  return ref


def to_cl(t):
  """torch (B, C, F, H, W) -> numpy (B, F, H, W, C)."""
  return t.permute(0, 2, 3, 4, 1).numpy()


def to_cf(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 4, 1, 2, 3)))


def assert_close(got, ref, what):
  err = float(np.abs(np.asarray(got) - ref).max())
  scale = float(np.abs(ref).max())
  assert err <= TOL * scale, f"{what}: max abs err {err:.3g} > {TOL} * {scale:.3g}"
  return err / scale


@pytest.fixture(scope="module")
def pair():
  ref = diffusers_tiny()
  cfg = VAEConfig.tiny(latents_mean=tuple(MEAN), latents_std=tuple(STD))
  return ref, from_params(cfg, convert_state_dict(ref.state_dict(), cfg))


def video(f, h, w, seed=0):
  g = torch.Generator().manual_seed(seed)
  return torch.rand(1, 3, f, h, w, generator=g) * 2 - 1


def reference(ref, x):
  with torch.no_grad():
    z = ref.encode(x).latent_dist.mode()
    y = ref.decode(z).sample
  return to_cl(z), to_cl(y)


@pytest.mark.parametrize("f,h,w", [(1, 32, 48), (9, 48, 32)], ids=["image", "video"])
def test_encode_decode_match_diffusers(pair, f, h, w):
  ref, model = pair
  x = video(f, h, w)
  z_ref, y_ref = reference(ref, x)
  z = model.encode(jnp.asarray(to_cl(x)))
  assert z.shape == (1, 1 + (f - 1) // 4, h // 16, w // 16, 8) == z_ref.shape
  errs = [assert_close(z, z_ref, "encode")]
  y = model.decode(jnp.asarray(z_ref))  # decode the reference latents: errors do not compound
  assert y.shape == (1, f, h, w, 3) == y_ref.shape
  errs.append(assert_close(y, y_ref, "decode"))
  assert float(jnp.abs(y).max()) <= 1.0
  print(f"relative max errors encode/decode at {f}x{h}x{w}: {errs[0]:.2e} / {errs[1]:.2e}")


def test_a_wrong_parameter_is_caught(pair):
  """The tolerance is tight enough to see one mis-ported gamma (the decoder's last norm)."""
  ref, model = pair
  x = video(1, 32, 48, seed=1)
  z_ref, y_ref = reference(ref, x)
  gamma = model.decoder.norm_out.gamma
  saved = gamma[...]
  gamma[...] = saved[::-1]
  try:
    y = np.asarray(model.decode(jnp.asarray(z_ref)))
  finally:
    gamma[...] = saved
  assert np.abs(y - y_ref).max() > 100 * TOL * np.abs(y_ref).max()


def test_normalize_uses_the_latent_statistics(pair):
  _, model = pair
  z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 2, 3, 8)), jnp.float32)
  want = (np.asarray(z) - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(model.normalize(z), want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model.denormalize(model.normalize(z)), z, rtol=1e-5, atol=1e-5)


def test_wan22_parameter_count_equals_diffusers():
  abstract = nnx.eval_shape(lambda: WanVAE(VAEConfig.wan22(), rngs=nnx.Rngs(0)))
  ours = sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  with torch.device("meta"):
    ref = diffusers.AutoencoderKLWan(
        base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
        out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)
  theirs = sum(p.numel() for p in ref.parameters())
  assert ours == theirs == 704_688_668


def test_time_chunks_are_one_scan():
  """Longer clips add scan iterations, not compiled code: the program size is the same."""
  model = nnx.eval_shape(lambda: WanVAE(VAEConfig.tiny(), rngs=nnx.Rngs(0)))
  g, s = nnx.split(model)

  def n_eqns(fn, shape):
    jaxpr = jax.make_jaxpr(lambda s, x: getattr(nnx.merge(g, s), fn)(x))(s, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert any(e.primitive.name == "scan" for e in jaxpr.jaxpr.eqns)
    return len(jaxpr.jaxpr.eqns)

  assert n_eqns("_encode", (1, 5, 32, 32, 3)) == n_eqns("_encode", (1, 17, 32, 32, 3))
  assert n_eqns("_decode", (1, 2, 2, 2, 8)) == n_eqns("_decode", (1, 5, 2, 2, 8))


def test_config_from_diffusers_round_trip():
  d = dict(diffusers_tiny().config)
  cfg = VAEConfig.from_diffusers(d)
  assert cfg == VAEConfig.tiny(latents_mean=tuple(MEAN), latents_std=tuple(STD))
  assert VAEConfig.from_dict(cfg.arch_dict()) == cfg
  assert VAEConfig.wan22().scale_factor_spatial == 16 and VAEConfig.wan22().scale_factor_temporal == 4
  with pytest.raises(ValueError, match="is_residual"):
    VAEConfig.from_diffusers(d | {"is_residual": False})


def test_bad_shapes_are_refused(pair):
  _, model = pair
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    model.encode(jnp.zeros((1, 4, 32, 32, 3)))
  with pytest.raises(ValueError, match="multiples of 16"):
    model.encode(jnp.zeros((1, 1, 40, 32, 3)))


def test_query_blocked_attention_equals_full():
  """Large frames run the mid-block attention in query blocks; the result is the same."""
  from vbridge_jax.models.vae_blocks import AttentionBlock, Runtime
  rt = Runtime.of(VAEConfig.tiny())
  full = AttentionBlock(16, rt, block=4096, rngs=nnx.Rngs(1))
  blocked = AttentionBlock(16, rt, block=5, rngs=nnx.Rngs(1))  # 42 tokens: 9 blocks, padded
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 6, 7, 16)), jnp.float32)
  np.testing.assert_allclose(blocked(x), full(x), rtol=1e-5, atol=1e-5)


def test_posterior_matches_diffusers_and_samples_with_the_rng(pair):
  """`encode_posterior` gives diffusers' latent_dist mean and (clipped) log-variance;
  `sample_posterior` draws mean + std * eps, a different draw per key."""
  from vbridge_jax.models.wan_vae import sample_posterior
  ref, model = pair
  x = video(5, 32, 32, seed=2)
  with torch.no_grad():
    dist = ref.encode(x).latent_dist
  mean, logvar = model.encode_posterior(jnp.asarray(to_cl(x)))
  assert_close(mean, to_cl(dist.mean), "posterior mean")
  assert_close(logvar, to_cl(dist.logvar), "posterior logvar")
  np.testing.assert_array_equal(mean, model.encode(jnp.asarray(to_cl(x))))
  a = sample_posterior(mean, logvar, jax.random.key(0))
  b = sample_posterior(mean, logvar, jax.random.key(1))
  assert float(jnp.abs(a - b).max()) > 1e-3
  eps = (np.asarray(a) - np.asarray(mean)) / np.exp(0.5 * np.asarray(logvar))
  np.testing.assert_allclose(eps, jax.random.normal(jax.random.key(0), mean.shape), rtol=1e-4,
                             atol=1e-4)
