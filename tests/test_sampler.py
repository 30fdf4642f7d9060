"""The flow samplers against diffusers' schedulers, stepped by hand with a stand-in velocity model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vbridge_jax.diffusion import sampler as S

B, F, H, W, C = 2, 3, 4, 6, 5
TOL = 1e-5


def standin(x, t, ctx):
  """A deterministic nonlinear velocity that depends on x, on t (per sample, frame or token), on ctx."""
  b, f, h, w, c = x.shape
  if t.ndim == 1:
    s = t[:, None, None, None, None] / 1000.0
  elif t.shape[1] == f:  # per frame (this sampler)
    s = t[:, :, None, None, None] / 1000.0
  else:  # per token (diffusers' expand_timesteps)
    s = t.reshape(b, f, h // 2, 1, w // 2, 1)
    s = jnp.broadcast_to(s, (b, f, h // 2, 2, w // 2, 2)).reshape(b, f, h, w)[..., None] / 1000.0
  chan = jnp.linspace(-1.0, 1.0, c)
  bias = jnp.mean(ctx, axis=(1, 2))[:, None, None, None, None]
  return jnp.sin(1.3 * x + chan) * (1.0 - s) + 0.4 * x * s + bias - 0.2 * chan * s


_standin_jit = jax.jit(standin)


def _call(x_t, t, ctx):
  out = _standin_jit(jnp.asarray(x_t.numpy()), jnp.asarray(np.asarray(t, np.float32)), ctx)
  return torch.from_numpy(np.array(out))


def _reference(sched, noise, pos, neg=None, first=None, guidance=1.0, cfg_skip=0.0):
  """diffusers' scheduler, stepped as the Wan2.2 TI2V pipelines do; returns every latent."""
  x = torch.from_numpy(np.asarray(noise))
  n = len(sched.timesteps)
  if first is not None:
    first_t = torch.from_numpy(np.asarray(first))
    x[:, :1] = first_t
  out = []
  for i, t in enumerate(sched.timesteps):
    tb = np.full((B,), float(t), np.float32)
    if first is not None:
      mask = np.ones((F, H // 2 * (W // 2)), np.float32)
      mask[0] = 0
      tb = tb[:, None] * mask.reshape(1, -1)
    v = _call(x, tb, pos)
    if neg is not None and not i >= n * (1 - cfg_skip):
      vn = _call(x, tb, neg)
      v = vn + guidance * (v - vn)
    x = sched.step(v, t, x, return_dict=False)[0]
    if first is not None:
      x[:, :1] = first_t
    out.append(x.numpy().copy())
  return np.stack(out)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((B, F, H, W, C)).astype(np.float32)
  pos = jnp.asarray(rng.standard_normal((B, 7, 3)).astype(np.float32))
  neg = jnp.asarray(rng.standard_normal((B, 7, 3)).astype(np.float32) + 0.5)
  first = rng.standard_normal((B, 1, H, W, C)).astype(np.float32)
  return noise, pos, neg, first


def _unipc(steps):
  sched = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                  flow_shift=5.0)
  return sched


def test_schedule_matches_diffusers_50_steps():
  for steps in (50, 7, 1, 2):
    sched = _unipc(steps)
    sched.set_timesteps(steps)
    ours = S.flow_schedule(steps, 5.0, "diffusers")
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy().astype(np.float32))
    assert np.isfinite(S.unipc_coefficients(ours.sigmas)).all()
  # The Wan schedule is diffusers' with custom (unshifted) sigmas linspace(0.999, 0).
  wan = S.flow_schedule(50, 5.0, "wan")
  sched = _unipc(50)
  sched.set_timesteps(sigmas=np.linspace(np.float32(0.999).item(), 0.0, 51)[:-1])
  np.testing.assert_array_equal(wan.sigmas, sched.sigmas.numpy())
  np.testing.assert_array_equal(wan.timesteps, sched.timesteps.numpy().astype(np.float32))
  assert wan.timesteps[0] == 999 and wan.sigmas[0] < 1


def test_cfg_skip_steps():
  g = S.guided_steps(50, 0.15)
  assert g[:43].all() and not g[43:].any()  # 50 * 0.85 = 42.5: the last 7 steps unguided
  assert S.guided_steps(10, 0.0).all()
  assert not S.guided_steps(10, 1.0).any()


@pytest.mark.parametrize("steps", [12])
def test_unipc_plain_matches_diffusers(steps):
  noise, pos, _, _ = _inputs(1)
  sched = _unipc(steps)
  sched.set_timesteps(steps)
  ref = _reference(sched, noise, pos)
  cfg = S.SamplerConfig(steps=steps, schedule="diffusers", guidance=1.0, cfg_skip=0.0)
  final, traj = S.Sampler(standin, cfg)(noise, pos, trajectory=True)
  assert traj.shape == (steps, B, F, H, W, C)
  err = np.abs(np.asarray(traj) - ref).max()
  assert err < TOL, err
  np.testing.assert_array_equal(np.asarray(final), np.asarray(traj[-1]))
  # A real mismatch is far above the tolerance: plain Euler on the same schedule differs.
  euler = S.Sampler(standin, cfg.__class__(**{**cfg.__dict__, "solver": "euler"}))(noise, pos)
  assert np.abs(np.asarray(euler) - ref[-1]).max() > 1e-3


@pytest.mark.parametrize("batched_cfg", [False, True], ids=["cfg_two_passes", "cfg_one_batch"])
def test_unipc_ti2v_cfg_wan_schedule_matches_diffusers(batched_cfg):
  steps = 10
  noise, pos, neg, first = _inputs(2)
  sched = _unipc(steps)
  sched.set_timesteps(sigmas=np.linspace(np.float32(0.999).item(), 0.0, steps + 1)[:-1])
  ref = _reference(sched, noise, pos, neg, first, guidance=4.0, cfg_skip=0.25)
  cfg = S.SamplerConfig(steps=steps, schedule="wan", guidance=4.0, cfg_skip=0.25,
                        batched_cfg=batched_cfg)
  smp = S.Sampler(standin, cfg)
  final, traj = smp(noise, pos, neg, first, trajectory=True)
  err = np.abs(np.asarray(traj) - ref).max()
  assert err < TOL, err
  np.testing.assert_array_equal(np.asarray(final)[:, 0], first[:, 0])
  # Deterministic: the same inputs give the same bytes, through the cached compilation.
  again = smp(noise, pos, neg, first)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(final))
  # Guidance matters (a sampler that ignored it would pass the tolerance check by luck only).
  no_cfg = S.Sampler(standin, S.SamplerConfig(steps=steps, schedule="wan", guidance=1.0))
  assert np.abs(np.asarray(no_cfg(noise, pos, neg, first)) - ref[-1]).max() > 1e-2


def test_euler_matches_diffusers():
  steps = 8
  noise, pos, _, first = _inputs(3)
  ours = S.flow_schedule(steps, 5.0, "diffusers")
  sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
  sched.set_timesteps(sigmas=list(ours.sigmas[:-1].astype(np.float64)))
  sched.timesteps = torch.from_numpy(ours.timesteps)
  np.testing.assert_array_equal(sched.sigmas.numpy(), ours.sigmas)
  ref = _reference(sched, noise, pos, first=first)
  cfg = S.SamplerConfig(solver="euler", steps=steps, schedule="diffusers", guidance=1.0)
  _, traj = S.Sampler(standin, cfg)(noise, pos, None, first, trajectory=True)
  err = np.abs(np.asarray(traj) - ref).max()
  assert err < TOL, err


def test_step_compiled_once():
  traces = []

  def counting(x, t, ctx):
    traces.append(1)
    return standin(x, t, ctx)

  noise, pos, neg, first = _inputs(4)
  smp = S.Sampler(counting, S.SamplerConfig(steps=6, schedule="wan", guidance=3.0, cfg_skip=0.5))
  smp(noise, pos, neg, first)
  n = len(traces)
  assert n == 2  # one trace of the conditional and one of the unconditional branch, for 6 steps
  smp(noise + 1, pos, neg, first)
  assert len(traces) == n


def test_equal_models_share_one_compilation():
  """Separately built DiTs of one config (as load_dit builds them) give the sampling loop one
  static key, so they share its compilation."""
  from flax import nnx

  from vbridge_jax.models import DiTConfig, WanDiT

  def build(cfg):
    return nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))

  cfg = DiTConfig.tiny(num_layers=1, dtype="float32")
  key_a, key_b = S._pure(build(cfg))[0], S._pure(build(cfg))[0]
  assert key_a == key_b and hash(key_a) == hash(key_b)  # what jax.jit compares static args by
  key_c = S._pure(build(DiTConfig.tiny(num_layers=2, dtype="float32")))[0]
  assert key_c != key_a
