"""The curriculum trainer end to end on tiny models: sharding invariance, exact resume,
NaN stop. Runs `train_and_evaluate` on the built-in demo set at 32/64 px."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import curriculum
from vbridge_jax import trainer
from vbridge_jax.train_utils import tensorboard


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
  """Identical programs (the resume runs) compile once."""
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
  from vbridge_jax.data import fewshot
  out = tmp_path_factory.mktemp("demo")
  fewshot.build(out, per_category=1, size=96, categories=("Blur", "Noise", "Haze", "Rain"))
  return str(out)


def _config(demo: str, **kw):
  c = curriculum.get_config("tiny")
  c.data.source = demo
  c.stages = "32,32"  # a stage change (new pipeline) without a second compile
  c.total_steps = 4
  c.data.batch_size = 8
  c.data.balance = False
  c.log_every = 1
  c.progress = False
  c.samples.every_steps = -1
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 5
  c.model.vae_overrides.num_res_blocks = 1
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _losses(workdir) -> list[float]:
  rows = [json.loads(l) for l in Path(workdir, "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows]


def _params(workdir, step) -> dict:
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ck:
    return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_losses_match_across_meshes(demo, tmp_path):
  meshes = {
      "fsdp8": dict(mesh=dict(data=1, fsdp=8, context=1, tensor=1)),
      "d2f2t2": dict(mesh=dict(data=2, fsdp=2, context=1, tensor=2)),
      "one": dict(mesh=dict(data=1, fsdp=1, context=1, tensor=1), num_devices=1),
  }
  losses = {}
  for name, kw in meshes.items():
    cfg = _config(demo, total_steps=2, stages="32", **{f"{k}": v for k, v in kw.items() if k != "mesh"})
    cfg.mesh.update(kw["mesh"])
    trainer.train_and_evaluate(cfg, str(tmp_path / name))
    losses[name] = _losses(tmp_path / name)
  assert len(losses["one"]) == 2
  for name in ("fsdp8", "d2f2t2"):
    np.testing.assert_allclose(losses[name], losses["one"], rtol=0, atol=1e-5, err_msg=name)
  # Parameters moved: the second loss differs from the first.
  assert losses["one"][0] != losses["one"][1]


def test_resume_is_bit_identical_and_logs(demo, tmp_path):
  straight, split = tmp_path / "straight", tmp_path / "split"
  out = trainer.train_and_evaluate(_config(demo), str(straight))
  assert out["step"] == 4
  trainer.train_and_evaluate(_config(demo, stop_at_step=1), str(split))  # mid-stage stop
  assert sorted(int(p) for p in os.listdir(split / "checkpoints") if p.isdigit()) == [1]
  trainer.train_and_evaluate(_config(demo), str(split))  # resume; crosses the stage change
  a, b = _params(straight, 4), _params(split, 4)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _losses(split) == _losses(straight)
  rows = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["stage"] for r in rows] == [0, 0, 1, 1]
  assert all(k in r for r in rows for k in ("step", "loss", "grad_norm", "lr", "steps_per_sec"))
  events = list((straight / "tensorboard").iterdir())
  assert len(events) == 1 and len(tensorboard.read_records(str(events[0]))) == 5


def test_nan_stops_and_keeps_last_good_checkpoint(demo, tmp_path):
  cfg = _config(demo, debug_nan_at_step=2, total_steps=3, stages="32")
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 3 .*Last good checkpoint: step 2"):
    trainer.train_and_evaluate(cfg, str(tmp_path))
  steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert steps == [2]
  for leaf in jax.tree.leaves(_params(str(tmp_path), 2)):
    assert np.all(np.isfinite(np.asarray(leaf)))
