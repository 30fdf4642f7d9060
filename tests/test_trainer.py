"""The curriculum trainer end to end on tiny models: sharding invariance, exact resume
(also after a run killed during a save), NaN stop, latent cache vs encoding in the step.

Runs `train_and_evaluate` on the built-in demo set at 32 px. To keep CI fast the runs
share one latent cache (the VAE encodes each stage once for the whole module) and a
persistent compilation cache (identical step programs compile once); the 1-device run
that encodes in the step is the only one that compiles the VAE inside the step.
"""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import set_fields
from vbridge_jax.configs import curriculum, drift
from vbridge_jax.training import trainer

pytestmark = pytest.mark.usefixtures("persistent_compiles")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
  from vbridge_jax.data import fewshot
  out = tmp_path_factory.mktemp("demo")
  fewshot.build(out, per_category=1, size=96, categories=("Blur", "Noise", "Haze", "Rain"))
  return str(out)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("latents"))


def _config(demo: str, latent_dir: str, base=None, **kw):
  c = base or curriculum.get_config("tiny_wan")
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
  c.latent_cache.enabled = True
  c.latent_cache.dir = latent_dir
  c.compiler_options = dict(xla_backend_optimization_level=0)
  return set_fields(c, **kw)


def _losses(workdir) -> list[float]:
  rows = [json.loads(l) for l in Path(workdir, "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows]


def _params(workdir, step) -> dict:
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ck:
    return ck.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _steps(workdir) -> list[int]:
  return sorted(int(p) for p in os.listdir(Path(workdir, "checkpoints")) if p.isdigit())


MESHES = {
    "fsdp8": dict(data=1, fsdp=8, context=1, tensor=1),
    "d2f2t2": dict(data=2, fsdp=2, context=1, tensor=2),
    "one": dict(data=1, fsdp=1, context=1, tensor=1),
}


@pytest.fixture(scope="module")
def mesh_losses(demo, latent_dir, tmp_path_factory) -> dict[str, list[float]]:
  """Two steps of one stage on each mesh (the first run writes the shared latent cache)."""
  losses = {}
  for name, mesh in MESHES.items():
    cfg = _config(demo, latent_dir, total_steps=2, stages="32",
                  num_devices=1 if name == "one" else 0)
    cfg.mesh.update(mesh)
    workdir = tmp_path_factory.mktemp(name)
    trainer.train_and_evaluate(cfg, str(workdir))
    losses[name] = _losses(workdir)
  return losses


def test_losses_match_across_meshes(mesh_losses):
  assert len(mesh_losses["one"]) == 2
  for name in ("fsdp8", "d2f2t2"):
    np.testing.assert_allclose(mesh_losses[name], mesh_losses["one"], rtol=0, atol=1e-5,
                               err_msg=name)
  # Parameters moved: the second loss differs from the first.
  assert mesh_losses["one"][0] != mesh_losses["one"][1]


def test_resume_is_bit_identical_even_after_a_kill_during_a_save(demo, latent_dir, tmp_path):
  straight, split = tmp_path / "straight", tmp_path / "split"
  out = trainer.train_and_evaluate(_config(demo, latent_dir), str(straight))
  assert out["step"] == 4
  trainer.train_and_evaluate(_config(demo, latent_dir, stop_at_step=1), str(split))  # mid-stage
  assert _steps(split) == [1]
  # A run killed while saving step 2 leaves orbax's unfinished temporary folder behind.
  partial = split / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{")
  trainer.train_and_evaluate(_config(demo, latent_dir), str(split))  # resumes from step 1
  assert not partial.exists() and _steps(split) == [1, 2, 4]
  a, b = _params(straight, 4), _params(split, 4)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert _losses(split) == _losses(straight)
  rows = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["stage"] for r in rows] == [0, 0, 1, 1]
  assert all(k in r for r in rows for k in ("step", "loss", "grad_norm", "lr", "steps_per_sec",
                                           "tokens_per_sec"))
  assert all(r["tokens_per_sec"] > 0 and "mfu" not in r for r in rows)  # CPU: no known peak
  from tests.test_faults_run import scalar_steps
  assert scalar_steps(straight) == [[1, 2, 3, 4]]  # one events file, a row per step
  # Two stages, each encoded once into the shared cache (the meshes' stage 0 is reused).
  assert len([f for f in os.listdir(latent_dir) if f.endswith(".npz")]) == 2


def test_nan_stops_and_in_step_encoding_matches_the_cache(demo, latent_dir, mesh_losses,
                                                          tmp_path):
  """Encodes in the step (no cache) on one device: the first losses equal the cached run's;
  a NaN at step 3 stops the run and keeps the step-2 checkpoint."""
  cfg = _config(demo, latent_dir, debug_nan_at_step=2, total_steps=3, stages="32",
                num_devices=1)
  cfg.mesh.update(MESHES["one"])
  cfg.latent_cache.enabled = False
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 3 .*Last good checkpoint: step 2"):
    trainer.train_and_evaluate(cfg, str(tmp_path))
  assert _steps(tmp_path) == [2]
  for leaf in jax.tree.leaves(_params(str(tmp_path), 2)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  np.testing.assert_allclose(_losses(tmp_path), mesh_losses["one"], rtol=0, atol=1e-5)
  assert not (tmp_path / "latent_cache").exists()


def test_drift_corrector_tiny_end_to_end(demo, latent_dir, tmp_path):
  """configs/drift.py:tiny on (base-model output, GT) pairs: the outputs stand in for the
  LQ frame; the run shares the curriculum's compiled step (same shapes)."""
  from PIL import Image
  outputs = tmp_path / "outputs"
  for lq in sorted(Path(demo).glob("*/LQ/*.png")):
    gt = lq.parent.parent / "GT" / lq.name
    mix = (np.asarray(Image.open(lq), np.float32) + np.asarray(Image.open(gt), np.float32)) / 2
    out = outputs / lq.parent.parent.name / "LQ" / lq.name
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mix.astype(np.uint8)).save(out)
  cfg = _config(demo, latent_dir, base=drift.get_config("tiny"), total_steps=2, stages="32")
  cfg.data.drift_outputs = str(outputs)
  assert cfg.drift and cfg.data.frames == 5
  before = set(os.listdir(latent_dir))
  out = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert out["step"] == 2 and len(_losses(tmp_path / "run")) == 2
  assert all(np.isfinite(_losses(tmp_path / "run")))
  assert len(set(os.listdir(latent_dir)) - before) == 1  # its own cache: other LQ frames
