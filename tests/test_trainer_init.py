"""`config.init_from`: training starts from a converted diffusers checkpoint, sharded."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import load_script
from vbridge_jax.checkpoints import load_dit
from vbridge_jax.configs import curriculum
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.training import setup, trainer

pytestmark = pytest.mark.usefixtures("low_compile_effort")


def _tiny_repo():
  """convert/tiny_repo.py, the README's tiny random model (diffusers layout)."""
  return load_script("tiny_repo")


def test_init_from_converted_checkpoint_sharded(tmp_path):
  from vbridge_jax.checkpoints import convert_path
  from vbridge_jax.data import fewshot

  tiny = _tiny_repo()
  tiny.tiny_dit(0).save_pretrained(tmp_path / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(tmp_path / "repo" / "vae")
  convert_path(tmp_path / "repo", tmp_path / "model", log=lambda _: None)
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "prompts.npz",
           positive=rng.standard_normal((7, tiny.TEXT_DIM)).astype(np.float32))
  fewshot.build(tmp_path / "demo", per_category=1, size=64, categories=("Blur", "Noise"))

  c = curriculum.get_config("tiny_wan")
  c.random_init = False
  c.init_from = str(tmp_path / "model")
  c.prompts = str(tmp_path / "prompts.npz")
  c.data.source = str(tmp_path / "demo")
  c.data.batch_size = 4
  c.data.balance = False
  c.stages = "32"
  c.total_steps = 2
  c.log_every = 1
  c.progress = False
  c.samples.every_steps = -1
  c.checkpoint.every_steps = 1
  c.latent_cache.enabled = True
  c.mesh.update(dict(data=1, fsdp=4, context=1, tensor=2))

  # The initial sharded state holds exactly the converted weights.
  mesh = sh.create_mesh(dict(c.mesh))
  model, _, vae, _ = setup.build_state(c, mesh, sh.rules_from_config(c.logical_axis_rules))
  ref = nnx.to_flat_state(nnx.state(load_dit(c.init_from), nnx.Param))
  got = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert len(ref) == len(got) > 10
  specs = set()
  for path, var in ref:
    value = got[path].get_value()
    np.testing.assert_array_equal(np.asarray(value), np.asarray(var.get_value()), err_msg=path)
    specs.add(value.sharding.spec)
  assert any(any(a is not None for a in spec) for spec in specs)  # born sharded, not replicated
  assert vae.config.latents_std[0] == 1.5  # the converted VAE, not a random one
  del model, vae

  # LoRA: the wrapped base layers hold the converted weights, sharded likewise.
  c.finetune = "lora"
  model, _, _, _ = setup.build_state(c, mesh, sh.rules_from_config(c.logical_axis_rules))
  got = {tuple(str(k) for k in p if k != "base"): v.get_value()
         for p, v in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.LoRAParam)))}
  assert len(got) == len(ref) and sum("base" in map(str, p) for p, _ in
                                      nnx.to_flat_state(nnx.state(model, nnx.Param))) > 0
  for path, var in ref:
    key = tuple(str(k) for k in path)
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(var.get_value()), err_msg=key)
  c.finetune = "full"
  del model

  out = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["step"] == 2
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
  # The first update has lr 0 (warm-up), so step 1 still holds the converted weights and
  # step 2 has moved away from them.
  ref = {tuple(str(k) for k in p): np.asarray(v.get_value()) for p, v in ref}
  for step, same in ((1, True), (2, False)):
    saved = _model_params(tmp_path / "run" / "checkpoints" / str(step) / "state")
    assert saved.keys() == ref.keys()
    equal = all(np.array_equal(saved[k], ref[k]) for k in ref)
    assert equal == same, step


def _model_params(path: Path) -> dict[tuple[str, ...], np.ndarray]:
  """The model half of a trainer checkpoint, keyed by parameter path."""
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ck:
    state = ck.restore(str(path))["0"]
  out = {}
  for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = tuple(k.key for k in p)
    assert keys[-1] == "value"
    out[keys[:-1]] = np.asarray(leaf)
  return out
