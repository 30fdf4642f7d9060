"""Spatial tiling of the VAE: the blending is exact for local maps; tiled vs untiled model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vbridge_jax.checkpoints.loading import abstract_params, from_params
from vbridge_jax.models.configs import VAEConfig
from vbridge_jax.models.wan_vae import WanVAE, _starts, _tiled


@pytest.mark.parametrize("scale", [2, 0.5])
def test_blending_is_exact_for_a_pointwise_map(scale):
  x = np.random.default_rng(0).normal(size=(1, 2, 24, 40, 3)).astype(np.float32)
  if scale == 2:
    fn = lambda t: jnp.repeat(jnp.repeat(3 * t + 1, 2, axis=2), 2, axis=3)  # noqa: E731
  else:
    fn = lambda t: t.reshape(t.shape[:2] + (t.shape[2] // 2, 2, t.shape[3] // 2, 2, 3)).mean((3, 5))  # noqa: E731
  want = np.asarray(fn(jnp.asarray(x)))
  got = np.asarray(_tiled(fn, x, tile=8, overlap=4, scale=scale))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tiles_are_equal_and_cover():
  assert _starts(10, 16, 4) == [0]
  assert _starts(40, 16, 4) == [0, 12, 24]
  assert _starts(41, 16, 4) == [0, 12, 24, 25]
  for n in (17, 40, 100):
    s = _starts(n, 16, 4)
    assert s[-1] + 16 == n and all(b - a <= 12 for a, b in zip(s, s[1:]))


def local_tiny_vae(seed=0):
  """The tiny VAE with random weights made local, as trained image models are: the mid-block
  attention adds nothing (its output projection is zero) and 3x3 kernels are centre-heavy.
  A tiled result can only match an untiled one for a model whose receptive field is local."""
  cfg = VAEConfig.tiny()
  rng = np.random.default_rng(seed)
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  shapes = jax.tree.map(lambda s: s.shape, abstract_params(abstract))

  def fill(path, shape):
    name = path[-1].key
    if name == "gamma":
      return (1 + 0.2 * rng.normal(size=shape)).astype(np.float32)
    if name == "bias":
      return (0.05 * rng.normal(size=shape)).astype(np.float32)
    k = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    if any(getattr(p, "key", None) == "proj" for p in path):
      return np.zeros(shape, np.float32)
    if len(shape) >= 4 and shape[-3] == 3:  # spatial 3x3: damp the off-centre taps
      mask = np.full((3, 3), 0.05)
      mask[1, 1] = 1.0
      k = k * mask[:, :, None, None]
    return k.astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, shapes, is_leaf=lambda s: isinstance(s, tuple))
  return from_params(cfg, params)


def test_tiled_matches_untiled_on_a_local_model():
  model = local_tiny_vae()
  rng = np.random.default_rng(1)
  img = np.cumsum(np.cumsum(rng.normal(size=(1, 1, 128, 128, 3)), 2), 3)  # a smooth picture
  img = (img / np.abs(img).max()).astype(np.float32)
  z = np.asarray(model.encode(img))
  zt = np.asarray(model.encode(img, tile=96, overlap=32))
  enc_err = np.abs(zt - z).max() / np.abs(z).max()
  y = np.asarray(model.decode(z))
  yt = np.asarray(model.decode(z, tile=6, overlap=2))
  dec_err = np.abs(yt - y).max() / np.abs(y).max()
  enc_mean = np.abs(zt - z).mean() / np.abs(z).mean()
  dec_mean = np.abs(yt - y).mean() / np.abs(y).mean()
  msg = (f"tiled vs untiled: encode max {enc_err:.3g} mean {enc_mean:.3g}, "
         f"decode max {dec_err:.3g} mean {dec_mean:.3g} (relative)")
  print(msg)
  assert zt.shape == z.shape and yt.shape == y.shape
  assert enc_err < 0.1 and dec_err < 0.1 and enc_mean < 0.02 and dec_mean < 0.02, msg
  assert np.abs(yt).max() <= 1.0
