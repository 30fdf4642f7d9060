"""Issue 22's second fidelity pass (docs/fidelity.md): the posterior's units, the conditioning
draw, bf16 flow tensors, the optimizer restarted per stage (with an exact resume across the
boundary), the first update at lr 0, and the drift corrector's paper defaults."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from tests.conftest import set_fields
from tests.test_trainer import _config as trainer_config
from vbridge_jax.configs import curriculum, drift
from vbridge_jax.diffusion import flow
from vbridge_jax.models.configs import VAEConfig
from vbridge_jax.models.wan_vae import sample_posterior
from vbridge_jax.training import optim, setup, trainer
from vbridge_jax.utils.errors import ConfigError

Z = 8
MEAN = tuple(float(v) for v in np.linspace(-0.5, 0.5, Z))
STD = tuple(float(v) for v in np.linspace(0.35, 1.7, Z))  # Wan2.2's range of channel stds


@pytest.fixture(scope="module")
def vae():
  """The tiny Wan VAE with non-trivial latent statistics (so that the units differ)."""
  cfg = VAEConfig.tiny(num_res_blocks=1, latents_mean=MEAN, latents_std=STD)
  return setup.random_vae(cfg, 3)


def _clip(frames=5, seed=0):
  return jax.random.uniform(jax.random.key(seed), (2, frames, 32, 32, 3), minval=-1.0)


# ------------------------------------------------------------------- 1. posterior units


def test_posterior_units_match_a_direct_computation(vae):
  clip, key = _clip(), jax.random.key(7)
  mean, logvar = (np.asarray(a, np.float64) for a in vae.encode_posterior(clip))
  eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 11), mean.shape, jnp.float32))
  m, s = np.asarray(MEAN), np.asarray(STD)
  sd = np.exp(0.5 * logvar)
  want = {"normalized": (mean - m) / s + sd * eps,  # VideoX-Fun: mean normalised, logvar not
          "raw": (mean + sd * eps - m) / s}  # diffusers: the raw draw normalised
  got = {}
  for units in ("normalized", "raw"):
    got[units], cond = setup.encode_clips(vae, clip, key, sample=True, units=units)
    assert cond is None
    np.testing.assert_allclose(np.asarray(got[units]), want[units], rtol=1e-5, atol=1e-5)
  # The two differ by the noise's scale: noise_raw = noise_normalized / std_c.
  noise = {u: np.asarray(got[u]) - (mean - m) / s for u in got}
  np.testing.assert_allclose(noise["raw"] * s, noise["normalized"], rtol=1e-4, atol=1e-5)
  # The raw units are the old code path bit for bit: normalize(sample_posterior(...)).
  old = vae.normalize(sample_posterior(*vae.encode_posterior(clip), jax.random.fold_in(key, 11)))
  np.testing.assert_array_equal(np.asarray(got["raw"]), np.asarray(old))
  mean_only, _ = setup.encode_clips(vae, clip, key, sample=False)
  np.testing.assert_allclose(np.asarray(mean_only), (mean - m) / s, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="units"):
    sample_posterior(jnp.zeros(2), jnp.zeros(2), key, normalize=vae.normalize, units="pixels")


def test_check_config_names_a_bad_fidelity_field():
  for field, value in (("vae_sample_units", "pixels"), ("vae_sample_independent_cond", "yes"),
                       ("flow.dtype", "float16"), ("optim.restart_per_stage", 1)):
    c = curriculum.get_config("tiny_wan")
    with c.ignore_type():  # a config file may hold any type; the flags' parser would refuse
      set_fields(c, **{field: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      setup.check_config(c)
  setup.check_config(curriculum.get_config("tiny_wan"))  # the defaults pass


# -------------------------------------------------------------- 2. the conditioning draw


def test_causal_encoder_gives_frame_0_the_same_posterior_alone(vae):
  clip = _clip()
  whole, alone = vae.encode_posterior(clip), vae.encode_posterior(clip[:, :1])
  for a, b in zip(whole, alone):
    np.testing.assert_allclose(np.asarray(a[:, :1]), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_independent_cond_is_a_second_draw_of_frame_0(vae):
  clip, key = _clip(), jax.random.key(3)
  mean, logvar = vae.encode_posterior(clip)
  x0, cond = setup.encode_clips(vae, clip, key, sample=True, independent_cond=True)
  assert cond.shape == (2, 1) + x0.shape[2:]
  eps = jax.random.normal(jax.random.fold_in(key, 12), mean[:, :1].shape, jnp.float32)
  want = vae.normalize(mean[:, :1]) + jnp.exp(0.5 * logvar[:, :1]) * eps
  np.testing.assert_allclose(np.asarray(cond), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(cond - x0[:, :1]).mean()) > 1e-2  # independent of the target's draw
  same, none = setup.encode_clips(vae, clip, key, sample=True, independent_cond=False)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(x0))  # the target is unchanged
  assert none is None
  # In the flow inputs: frame 0 of a TI2V input is the conditioning draw, the target keeps
  # the target's draw; off, frame 0 is the target's own frame 0.
  k = jax.random.key(9)
  on = flow.ti2v_training_inputs(x0, k, cond=cond, loss_frames="all")
  off = flow.ti2v_training_inputs(x0, k, loss_frames="all")
  np.testing.assert_array_equal(np.asarray(on["x_t"][:, :1]), np.asarray(cond))
  np.testing.assert_array_equal(np.asarray(off["x_t"][:, :1]), np.asarray(x0[:, :1]))
  np.testing.assert_array_equal(np.asarray(on["x_t"][:, 1:]), np.asarray(off["x_t"][:, 1:]))
  np.testing.assert_array_equal(np.asarray(on["target"]), np.asarray(off["target"]))
  # Plain text-to-video samples noise frame 0 from the target; the conditioning is unused.
  t2v = flow.ti2v_training_inputs(x0, k, cond=cond, t2v_ratio=1.0, loss_frames="all")
  t2v_off = flow.ti2v_training_inputs(x0, k, t2v_ratio=1.0, loss_frames="all")
  np.testing.assert_array_equal(np.asarray(t2v["x_t"]), np.asarray(t2v_off["x_t"]))
  with pytest.raises(ValueError, match="cond"):
    flow.ti2v_training_inputs(x0, k, cond=x0)


# --------------------------------------------------------------------- 6. bf16 tensors


def test_bf16_flow_tensors_are_rounded_as_torch_computes_them():
  x0 = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 8))
  k = jax.random.key(2)
  f32 = flow.ti2v_training_inputs(x0, k, shift=5.0, loss_frames="all")
  bf = flow.ti2v_training_inputs(x0, k, shift=5.0, loss_frames="all", dtype="bfloat16")
  assert bf["x_t"].dtype == bf["target"].dtype == jnp.bfloat16 and bf["t"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(bf["t"]), np.asarray(f32["t"]))
  # The same noise and sigma, each operation rounded to bf16 (numpy with ml_dtypes).
  b = ml_dtypes.bfloat16
  _, k_noise = jax.random.split(k)
  noise = np.asarray(jax.random.normal(k_noise, x0.shape, jnp.float32)).astype(b)
  x = np.asarray(x0).astype(b)
  s = np.asarray(f32["sigma"]).astype(b)[:, None, None, None, None]
  one_minus = (np.float32(1) - s.astype(np.float32)).astype(b)
  full = ((one_minus.astype(np.float32) * x.astype(np.float32)).astype(b).astype(np.float32)
          + (s.astype(np.float32) * noise.astype(np.float32)).astype(b).astype(np.float32)).astype(b)
  want_xt = np.concatenate([x[:, :1], full[:, 1:]], axis=1)
  want_target = (noise.astype(np.float32) - x.astype(np.float32)).astype(b)
  np.testing.assert_array_equal(np.asarray(bf["x_t"]).astype(np.float32), want_xt.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(bf["target"]).astype(np.float32),
                                want_target.astype(np.float32))
  # float32 stays the formula exactly; bf16 is within bf16's rounding of it.
  noise32 = np.asarray(jax.random.normal(k_noise, x0.shape, jnp.float32))
  np.testing.assert_array_equal(np.asarray(f32["target"]), noise32 - np.asarray(x0))
  rel = np.abs(np.asarray(bf["target"], np.float32) - np.asarray(f32["target"])).max() / \
      np.abs(np.asarray(f32["target"])).max()
  assert 0 < rel < 2 ** -7
  with pytest.raises(ValueError, match="dtype"):
    flow.ti2v_training_inputs(x0, k, dtype="float16")


# ------------------------------------------------------- 3./5. warm-up and restarts


def _tiny_state(schedule="authors", **kw):
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((4,)))

  model = M()
  tx, sched = optim.make_optimizer(dict(lr=1e-3, warmup_steps=3, clip_schedule=schedule,
                                        clip_norm=0.05, **kw))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param), sched


@pytest.mark.parametrize("schedule", ["authors", "constant"])
def test_optimizer_init_is_all_zeros_and_the_first_update_runs_at_lr_0(schedule):
  model, opt, sched = _tiny_state(schedule)
  leaves = jax.tree.leaves(nnx.state(opt))
  assert leaves and all(not np.any(np.asarray(x)) for x in leaves)  # restart_state = init
  assert float(sched(0)) == 0.0  # diffusers' constant_with_warmup: lr * 0 / warmup
  before = np.asarray(model.w[...]).copy()
  opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
  np.testing.assert_array_equal(np.asarray(model.w[...]), before)  # lr 0: no move, no decay
  opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
  assert np.all(np.asarray(model.w[...]) < before)


def test_restart_state_zeroes_the_optimizer_and_keeps_the_model():
  model, opt, _ = _tiny_state()
  for _ in range(3):
    opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
  state = nnx.state((model, opt))
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(state[1]))
  fresh = optim.restart_state(state)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(fresh[1]))
  for a, b in zip(jax.tree.leaves(fresh[0]), jax.tree.leaves(state[0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(fresh) == jax.tree.structure(state)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
  from vbridge_jax.data import fewshot
  out = tmp_path_factory.mktemp("demo")
  fewshot.build(out, per_category=1, size=96, categories=("Blur", "Noise", "Haze", "Rain"))
  return str(out)


def _run_config(demo, latent_dir, **kw):
  """tests/test_trainer.py's tiny two-stage run, with a checkpoint every step and a short
  warm-up and clipping decay, so that a restart shows within 4 steps."""
  return trainer_config(demo, latent_dir, **{
      "checkpoint.every_steps": 1, "checkpoint.keep": 10, "optim.warmup_steps": 2,
      "optim.clip_schedule": "authors", "optim.clip_warmup_steps": 3} | kw)


def _ckpt(workdir, step):
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ck:
    return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _rows(workdir):
  return [json.loads(l) for l in Path(workdir, "metrics.jsonl").read_text().splitlines()]


def _counts(tree) -> list[int]:
  """The optimizer half's integer counters (Adam's, the schedule's, the clipping's, step)."""
  return sorted(int(np.asarray(x)) for x in jax.tree.leaves(tree["1"])
                if np.asarray(x).ndim == 0 and np.issubdtype(np.asarray(x).dtype, np.integer))


@pytest.mark.usefixtures("persistent_compiles")
def test_restart_per_stage_restarts_warmup_clipping_and_moments_and_resumes_exactly(
    demo, tmp_path):
  latent_dir = str(tmp_path / "latents")
  straight, split, cont = tmp_path / "straight", tmp_path / "split", tmp_path / "cont"
  trainer.train_and_evaluate(_run_config(demo, latent_dir, **{"optim.restart_per_stage": True}),
                             str(straight))
  # Stage 1 starts at step 2: its first update (step 3) runs at lr 0, so the model is where
  # stage 0 left it, and every counter restarted (1 after that update; 3 without restarts).
  s2, s3 = _ckpt(straight, 2), _ckpt(straight, 3)
  for a, b in zip(jax.tree.leaves(s2["0"]), jax.tree.leaves(s3["0"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert set(_counts(s2)) == {2} and set(_counts(s3)) == {1}
  lrs = [r["lr"] for r in _rows(straight)]
  assert lrs[0] == lrs[2] == 0.0 and lrs[1] == lrs[3] > 0
  # Resumed at the stage boundary, the run is the uninterrupted one bit for bit.
  cfg = _run_config(demo, latent_dir, stop_at_step=2, **{"optim.restart_per_stage": True})
  trainer.train_and_evaluate(cfg, str(split))
  trainer.train_and_evaluate(_run_config(demo, latent_dir, **{"optim.restart_per_stage": True}),
                             str(split))
  for a, b in zip(jax.tree.leaves(_ckpt(straight, 4)), jax.tree.leaves(_ckpt(split, 4))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["loss"] for r in _rows(split)] == [r["loss"] for r in _rows(straight)]
  # Off (the default): one continuous schedule, the counters run on.
  trainer.train_and_evaluate(_run_config(demo, latent_dir), str(cont))
  assert set(_counts(_ckpt(cont, 3))) == {3}
  assert [r["lr"] for r in _rows(cont)][2] > 0


# ------------------------------------------------------------------ 7./8. the corrector


def test_paper_defaults_of_this_pass():
  c = curriculum.get_config()
  assert (c.vae_sample_units, c.vae_sample_independent_cond, c.flow.dtype,
          c.optim.restart_per_stage) == ("normalized", True, "bfloat16", False)
  t = curriculum.get_config("tiny_wan")
  assert (t.vae_sample, t.vae_sample_independent_cond, t.flow.dtype) == (False, False, "float32")
  d = drift.get_config()
  assert (d.drift_init, d.stages, d.data.frames, d.total_steps) == ("backbone", "720", 5, 10_000)
  t = drift.get_config("tiny")
  t.data.source, t.data.drift_outputs = "demo", "/nowhere/outputs"
  setup.check_config(t)
  t.drift_init = "prior"
  with pytest.raises(ConfigError, match="drift_init='prior'"):
    setup.check_config(t)


def test_fewshot_writes_a_drift_split_disjoint_from_the_training_pairs(tmp_path):
  """Item 7: the corrector's pairs (`fewshot --drift N`), none of them a training pair."""
  from PIL import Image

  from vbridge_jax.data import fewshot
  out = tmp_path / "set"
  assert fewshot.main(["--out", str(out), "--per_category", "2", "--heldout", "1", "--drift", "3",
                       "--size", "32", "--categories", "Blur,Noise"]) == 0
  read = lambda split: {p.relative_to(out / split): np.asarray(Image.open(p)).tobytes()
                        for p in sorted((out / split).rglob("*.png"))}
  train, drift = read("train"), read("drift")
  assert len(drift) == 2 * 3 * 2 and len(train) == 2 * 2 * 2 and len(read("heldout")) == 2 * 1 * 2
  assert not set(drift.values()) & set(train.values())  # no GT or LQ of a training pair
  flat = tmp_path / "flat"  # without --heldout: train/ and drift/
  fewshot.build(flat, per_category=1, drift=1, size=32, categories=("Blur",))
  assert sorted(p.name for p in flat.iterdir()) == ["drift", "train"]
