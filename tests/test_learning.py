"""Does the method learn? A short run on one degradation, scored on held-out photos.

`train_and_evaluate` trains a small DiT on the pixel codec (lossless, so nothing but the
DiT stands between the data and the score) on the demo set's training split of one
category (Lowlight, 32 px), and its held-out evaluation restores photos it never saw
through the restore command's `Restorer`. A restoration must beat the unrestored input in
PSNR-Y *and* keep its structure (SSIM-Y at least the input's): a PSNR gain alone is not
evidence of learning here, because brightening a dark picture to the training set's mean
raises PSNR without looking at frame 0.

Measured (300 steps, this configuration): PSNR-Y 9.31 -> 13.93 dB (+4.62) but SSIM-Y
0.236 -> 0.014. The same run with the method broken on purpose, one mutation at a time,
scored +4.47 (frame 0 noised in training), +4.05 (frame-0 tokens given the noisy
timestep) and +4.63 dB (no first-frame re-imposition in the sampler): a PSNR-only
assertion passes all three. A DiT trained from scratch has not yet learned to read frame 0
at the same position (the cross-frame copy the pretrained Wan2.2 brings) in a CI budget,
so this test is an expected failure (strict: it fails CI once the recipe does learn, so
that the marker is then removed and the mutations rechecked).
"""

import json

import jax
import pytest

from configs import curriculum
from vbridge_jax import trainer
from vbridge_jax.data import fewshot

CATEGORY = "Lowlight"
MIN_GAIN_DB = 3.0


@pytest.fixture
def _fast_compiles():
  old = jax.config.jax_exec_time_optimization_effort
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  yield
  jax.config.update("jax_exec_time_optimization_effort", old)


def learning_config(data: str, heldout: str):
  c = curriculum.get_config("tiny")
  c.data.source = data
  c.eval.source = heldout
  c.stages = "32"
  c.total_steps = 300
  c.model.dit_overrides = dict(dim=384, ffn_dim=768, num_heads=6, num_layers=2)
  c.optim.lr = 2e-3
  c.flow.shift = 5.0
  c.data.batch_size = 8
  c.data.balance = False
  c.num_devices = 1
  c.progress = False
  c.log_every = 50
  c.checkpoint.every_steps = 1000
  c.checkpoint.use_async = False
  c.eval.update(size=32, steps=4, solver="euler", shift=5.0)
  return c


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="a from-scratch tiny DiT does not learn the cross-frame "
                   "copy in 300 CPU steps (module docstring)")
def test_tiny_model_learns_one_degradation(tmp_path, _fast_compiles):
  fewshot.build(tmp_path / "data", per_category=8, heldout=4, size=64, categories=(CATEGORY,),
                seed=1)
  c = learning_config(str(tmp_path / "data" / "train"), str(tmp_path / "data" / "heldout"))
  trainer.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  ev = [r for r in rows if "eval/psnr_y" in r][-1]
  gain = ev["eval/psnr_y"] - ev["eval/input_psnr_y"]
  assert gain >= MIN_GAIN_DB, f"held-out PSNR-Y gain {gain:.2f} dB < {MIN_GAIN_DB} dB: {ev}"
  assert ev["eval/ssim_y"] >= ev["eval/input_ssim_y"], f"structure lost (SSIM-Y): {ev}"
