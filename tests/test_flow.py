"""Flow-matching pieces: shift, noising, targets, TI2V masks and the masked loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vbridge_jax.diffusion import flow


def test_shift_matches_wan_formula_and_is_monotone():
  u = jnp.linspace(0.0, 1.0, 11)
  s = flow.shift_sigma(u, 5.0)
  np.testing.assert_allclose(s, 5 * u / (1 + 4 * u), rtol=1e-6)
  assert float(s[0]) == 0.0 and abs(float(s[-1]) - 1.0) < 1e-6
  assert bool(jnp.all(jnp.diff(s) > 0))
  # A shift > 1 pushes mass to the noisy end.
  assert float(jnp.mean(flow.sample_sigmas(jax.random.key(0), 4096, shift=3.0))) > 0.6
  np.testing.assert_allclose(flow.shift_sigma(u, 1.0), u, rtol=1e-6)


def test_sample_sigmas_range_and_kinds():
  for kind in flow.SAMPLING_KINDS:
    s = flow.sample_sigmas(jax.random.key(1), 1000, kind=kind, min_sigma=0.01, max_sigma=0.9)
    assert s.shape == (1000,) and s.dtype == jnp.float32
    assert float(s.min()) >= 0.01 and float(s.max()) <= 0.9
  with pytest.raises(ValueError, match="kind"):
    flow.sample_sigmas(jax.random.key(0), 2, kind="beta")


def test_add_noise_keeps_frame0_and_interpolates_the_rest():
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = jax.random.normal(k1, (2, 3, 4, 4, 5))
  eps = jax.random.normal(k2, x0.shape)
  sigma = jnp.array([0.25, 1.0])
  xt = flow.add_noise(x0, eps, sigma)
  np.testing.assert_array_equal(xt[:, 0], x0[:, 0])
  np.testing.assert_allclose(xt[0, 1:], 0.75 * x0[0, 1:] + 0.25 * eps[0, 1:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(xt[1, 1:], eps[1, 1:], rtol=1e-6)
  # The velocity target integrates x0 -> x_t: x_t = x0 + sigma * (eps - x0) on frames >= 1.
  v = flow.velocity_target(x0, eps)
  np.testing.assert_allclose(xt[0, 1:], x0[0, 1:] + 0.25 * v[0, 1:], rtol=1e-5, atol=1e-6)


def test_token_timesteps_zero_on_frame0():
  sigma = jnp.array([0.5, 0.1])
  t = flow.token_timesteps(sigma, (2, 3, 4, 6, 8), (1, 2, 2))
  assert t.shape == (2, 3)  # per latent frame; the DiT broadcasts over each frame's tokens
  np.testing.assert_array_equal(t[:, 0], 0.0)
  np.testing.assert_allclose(t[0, 1:], 500.0)
  np.testing.assert_allclose(t[1, 1:], 100.0, rtol=1e-6)
  np.testing.assert_array_equal(flow.token_timesteps(jnp.array([999.0, 3.0]), (2, 3, 4, 6, 8),
                                                     scale=1.0)[:, 1], [999.0, 3.0])
  with pytest.raises(ValueError, match="temporal patch"):
    flow.token_timesteps(sigma, (2, 3, 4, 6, 8), (2, 2, 2))
  with pytest.raises(ValueError, match="divisible"):
    flow.token_timesteps(sigma, (2, 3, 5, 6, 8), (1, 2, 2))


def test_masked_mse_ignores_frame0_and_weights_samples():
  target = jnp.zeros((2, 3, 2, 2, 1))
  pred = target.at[:, 0].set(100.0)  # frame 0 errors must not count
  assert float(flow.masked_mse(pred, target)) == 0.0
  pred = pred.at[0, 1:].set(2.0)  # sample 0: squared error 4 on frames >= 1
  assert float(flow.masked_mse(pred, target)) == pytest.approx(2.0)
  w = jnp.array([0.5, 1.0])
  assert float(flow.masked_mse(pred, target, w)) == pytest.approx(1.0)
  np.testing.assert_allclose(flow.loss_weight(jnp.array([0.5]), "cosmap"), [2 / (np.pi * 0.5)],
                             rtol=1e-6)


def test_training_inputs_are_consistent():
  x0 = jax.random.normal(jax.random.key(3), (2, 2, 4, 4, 3))
  out = flow.ti2v_training_inputs(x0, jax.random.key(4), shift=2.0)
  sigma = out["sigma"]
  eps = out["target"] + x0
  np.testing.assert_allclose(out["x_t"], flow.add_noise(x0, eps, sigma), rtol=1e-5, atol=1e-5)
  assert out["t"].shape == (2, 2)
  np.testing.assert_allclose(out["t"][:, 1], 1000.0 * sigma, rtol=1e-6)
  # Perfect prediction gives zero loss; predicting zeros gives E|eps - x0|^2 > 0.
  assert float(flow.masked_mse(out["target"], out["target"])) == 0.0
  assert float(flow.masked_mse(jnp.zeros_like(x0), out["target"])) > 0.5


def test_optimizer_schedule_and_clipping():
  from vbridge_jax.training import optim
  sched = optim.learning_rate_schedule(2e-5, 100)
  assert float(sched(0)) == 0.0 and abs(float(sched(50)) - 1e-5) < 1e-12
  assert abs(float(sched(100)) - 2e-5) < 1e-12 and abs(float(sched(10_000)) - 2e-5) < 1e-12
  # With eps = 1 Adam's first step is -g / (|g| + 1): it shows the clipped gradient.
  tx, _ = optim.make_optimizer(dict(lr=1.0, warmup_steps=0, weight_decay=0.0, eps=1.0,
                                    clip_norm=0.05))
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([300.0, 400.0, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.03 / 1.03, -0.04 / 1.04, 0.0], rtol=1e-4)
  with pytest.raises(ValueError, match="learning rate"):
    optim.learning_rate_schedule(0.0, 10)
