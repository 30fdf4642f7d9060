"""Does the method learn? A short fine-tune of the video prior on one degradation, scored on
held-out photos.

The session's test prior (conftest's `test_prior`: `configs/prior.py:test`, the tiny DiT
pretrained for 400 steps on the synthetic video corpus at 32 px, no photo and no
degradation in it) is fine-tuned with V-Bridge for 400 steps (lr 2e-4, the tiny recipe's)
on one category of the demo set's training split (Haze: 128 pairs of 32 px cut from the 6
training photos), and its held-out evaluation restores 8 pairs cut from the 2 other photos
through the restore command's `Restorer` (4 Euler steps, shift 5). A restoration must beat
the unrestored input in PSNR-Y by `MIN_GAIN_DB` *and* keep its structure (SSIM-Y at least
the input's): a PSNR gain alone is weak evidence, because an output that ignores frame 0
and paints the training set's mean already beats a hazy input.

Measured on a 2-core CPU (about 4 minutes with the prior's build, 1.5 without), held-out
PSNR-Y / SSIM-Y, input 15.38 / 0.708:

| code | restored | gain | this test |
|---|---|---:|---|
| as is (from the video prior) | 20.75 / 0.806 | +5.37 dB | passes |
| from random weights, lr 2e-3, the same 400 steps | 18.32 / 0.552 | +2.94 dB | fails (gain, SSIM) |
| frame 0 noised in training | 12.53 / 0.254 | -2.86 dB | fails (gain, SSIM) |
| frame-0 tokens given the noisy timestep (training and sampler) | 20.82 / 0.805 | +5.44 dB | passes |
| no first-frame re-imposition after each sampler step | 20.19 / 0.753 | +4.81 dB | passes |

Each mutation was applied alone to a scratch copy, fine-tuning the same (unmutated) prior.
The earlier form of this test (900 steps from random weights: +5.68 dB, SSIM-Y 0.747) also
failed on the missing re-imposition (+4.04 dB); from the prior the model no longer needs it
to keep frame 0 (+4.81 dB), and the 0.56 dB between it and the code as is is too thin a
margin for a threshold across machines. No learning test sees the noisy frame-0 timestep
either. Unit tests catch both (test_sampler's `test_euler_matches_diffusers`, test_flow's
`test_token_timesteps_zero_on_frame0`; the training-only form test_objective's
`test_t2v_ratio_zero_is_the_ti2v_objective_of_before`), and the first mutation too
(test_flow's `test_add_noise_keeps_frame0_and_interpolates_the_rest`).
"""

import json

import pytest

from vbridge_jax.configs import curriculum
from vbridge_jax.data import fewshot
from vbridge_jax.training import trainer

CATEGORY = "Haze"
MIN_GAIN_DB = 4.5
STEPS = 400
pytestmark = pytest.mark.usefixtures("low_compile_effort")


def learning_config(data: str, heldout: str, init_from: str):
  c = curriculum.get_config("tiny")
  c.init_from = init_from
  c.data.source = data
  c.eval.source = heldout
  c.stages = "32"
  c.total_steps = STEPS
  c.optim.lr = 2e-4  # the tiny fine-tune's (configs/curriculum.py:tiny)
  c.data.batch_size = 8
  c.data.balance = False
  c.data.still = 0.0  # the pairs alone (the table above was measured so)
  c.num_devices = 1
  c.progress = False
  c.log_every = 100
  c.checkpoint.every_steps = 1000
  c.checkpoint.use_async = False
  c.eval.update(size=32, steps=4, solver="euler", shift=5.0, ceiling=False)
  return c



@pytest.mark.slow
def test_tiny_model_learns_one_degradation(tmp_path, test_prior):
  fewshot.build(tmp_path / "data", per_category=128, heldout=8, size=32, categories=(CATEGORY,),
                seed=1)
  c = learning_config(str(tmp_path / "data" / "train"), str(tmp_path / "data" / "heldout"),
                      str(test_prior))
  trainer.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  ev = [r for r in rows if "eval/psnr_y" in r][-1]
  gain = ev["eval/psnr_y"] - ev["eval/input_psnr_y"]
  assert gain >= MIN_GAIN_DB, f"held-out PSNR-Y gain {gain:.2f} dB < {MIN_GAIN_DB} dB: {ev}"
  assert ev["eval/ssim_y"] >= ev["eval/input_ssim_y"], f"structure lost (SSIM-Y): {ev}"
