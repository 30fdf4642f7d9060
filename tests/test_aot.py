"""Ahead-of-time compilation for a TPU topology (libtpu, no TPU): topology names, a tiny step."""

from __future__ import annotations

import jax
import pytest

from vbridge_jax import aot


def test_parse_topology():
  assert aot.parse_topology("v5p-64").grid == (2, 4, 4)  # 64 TensorCores = 32 chips
  assert aot.parse_topology("v5p:4x4x4").chips == 64
  assert aot.parse_topology("v6e-256").name == "v6e:16x16"
  assert aot.parse_topology("v5e-16").spec.hbm_bytes == 16 * 1024 ** 3
  assert aot.parse_topology("v5litepod-16").generation == "v5e"
  assert aot.parse_topology("v4-32").grid == (2, 2, 4)
  for bad in ("v7x-8", "v5p-6", "v6e:4x4x4", "tpu"):
    with pytest.raises(aot.AOTError, match="topology"):
      aot.parse_topology(bad)


def test_missing_libtpu_says_how_to_install(monkeypatch):
  from vbridge_jax.configs import curriculum
  monkeypatch.setattr(aot, "has_libtpu", lambda: False)
  with pytest.raises(aot.AOTError, match=r"pip install 'vbridge_jax\[tpu\]'"):
    aot.run(curriculum.get_config("tiny_wan"), "v5e:2x2")


@pytest.mark.slow
@pytest.mark.skipif(not aot.has_libtpu(), reason="libtpu is not installed (pip install 'vbridge_jax[tpu]')")
def test_tiny_train_step_compiles_for_v5e():
  from vbridge_jax.configs import curriculum
  config = curriculum.get_config("tiny_wan")
  config.model.dtype = "bfloat16"
  [r] = aot.run(config, "v5e:2x2", steps=["train"], size=64, frames=5)
  assert config.model.attention == "xla"  # the caller's config is left as it was (ran splash)
  assert r.topology == "v5e:2x2" and r.mesh["fsdp"] == 4 and r.batch == 4
  assert r.tokens == 2 * 2 * 2 and r.fits
  # Arguments: the fp32 parameters and two Adam moments, sharded over 4 chips (+ latents).
  assert r.memory["argument"] > 0 and r.memory["alias"] > 0  # the donated state
  assert r.xla_flops > 0 and r.analytic_model_flops > 0 and 0 < r.mfu <= 1 + 1e-9
  # The frozen VAE stays replicated on every chip beside the step (fp32 parameters).
  from flax import nnx

  from vbridge_jax.models.wan_vae import WanVAE
  from vbridge_jax.training import setup
  vae = nnx.eval_shape(lambda: WanVAE(setup.vae_config(config), rngs=nnx.Rngs(0)))
  assert r.resident == 4 * sum(a.size for a in jax.tree.leaves(nnx.state(vae))) > 0
  m = r.memory
  assert r.peak_bytes == m["argument"] + m["output"] - m["alias"] + m["temp"] + r.resident
  table = aot.format_table([r])
  assert "| train |" in table and "v5e:2x2" in table
