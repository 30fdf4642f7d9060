"""The paper in miniature, shrunk to a smoke run: every phase once, then a rerun that resumes.

Two categories, one pair each (two for the corrector), 2 + 2 + 1 training steps, 2 sampler
steps, on the session's test prior (conftest's `test_prior`, shared with test_learning); a
few minutes of wall time on a busy 2-core machine, mostly compiles.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_report import check_report
from vbridge_jax import miniature
from vbridge_jax.checkpoints.model_info import read_model_info

pytestmark = pytest.mark.usefixtures("low_compile_effort", "test_prior")


def test_miniature_runs_every_phase_and_resumes(tmp_path):
  kw = dict(base_steps=2, base_stages="32", drift_steps=1, drift_stage="32", restore_steps=2,
            categories=("Blur", "Noise"), per_category=1, heldout_per_category=1,
            drift_per_category=2, size=64, prior_variant="test", progress=False,
            log=lambda _: None)
  first = miniature.run(tmp_path, **kw)
  assert set(v for k, v in first["phases"].items() if k != "0 video prior") == {"ran"}
  assert first["phases"]["0 video prior"] == "skipped"  # the session's prior, built before
  for name in ("train", "heldout"):
    for cat in ("Blur", "Noise"):
      assert (tmp_path / "demo_data" / name / cat / "LQ" / "0000.png").is_file()
  # The base model's restores of the corrector's own pairs are where the corrector read them;
  # the corrector starts from the prior, the base from the prior, the scratch run from nothing.
  for cat in ("Blur", "Noise"):
    for i in range(2):
      assert (tmp_path / "restored" / "drift_base" / cat / "LQ" / f"{i:04d}.png").is_file()
    assert (tmp_path / "demo_data" / "drift" / "train" / cat / "GT" / "0001.png").is_file()
  assert read_model_info(tmp_path / "base_model").frames == 5
  drift_cfg = json.loads((tmp_path / "drift" / "config.json").read_text())
  base_cfg = json.loads((tmp_path / "base" / "config.json").read_text())
  scratch_cfg = json.loads((tmp_path / "scratch" / "config.json").read_text())
  assert drift_cfg["init_from"] == base_cfg["init_from"] and "priors" in base_cfg["init_from"]
  assert scratch_cfg["init_from"] == "" and drift_cfg["data"]["drift_outputs"].endswith("drift_base")

  table = (tmp_path / "table.md").read_text()
  assert table == first["table"]
  assert ("| category | n | input | (a) prior alone | (b) from scratch | (c) from the prior | "
          "(d) (c) + corrector |") in table
  rows = [l for l in table.splitlines() if l.startswith("| ")]
  assert [r.split(" | ")[0] for r in rows[1:]] == ["| Blur", "| Noise", "| **average per image**",
                                                    "| **average per category**"]
  assert all(r.count(" / ") == 5 for r in rows[1:])  # PSNR-Y / SSIM-Y in all five columns
  # The input column scores the LQ images themselves: identical inputs would be +inf dB.
  assert 10 < float(rows[1].split(" | ")[2].split(" / ")[0]) < 60
  # Base and base + corrector differ: the corrector ran on the base model's output.
  a = np.asarray(Image.open(tmp_path / "restored" / "heldout_base" / "Blur" / "LQ" / "0000.png"))
  b = np.asarray(Image.open(tmp_path / "restored" / "heldout_drift" / "Blur" / "LQ" / "0000.png"))
  assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)
  pic = Image.open(tmp_path / "picture.png")
  assert pic.height > 2 * 128 and pic.width > 6 * 128  # two rows of six enlarged cells
  # report.html: every held-out image, its links and numbers checked against scores/*/metrics.json;
  # the base run's held-out evaluation wrote its own, checked against eval/step_N.json.
  assert len(check_report(tmp_path / "report.html").rows) == 2
  (step_report,) = sorted((tmp_path / "base" / "eval").glob("step_*/report.html"))
  assert len(check_report(step_report).rows) == 2

  second = miniature.run(tmp_path, **kw)
  assert {k: v for k, v in second["phases"].items() if k != "5 evaluate"} == {
      k: "skipped" for k in first["phases"] if k != "5 evaluate"}
  assert second["table"] == first["table"]
