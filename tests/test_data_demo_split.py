"""The trainer's demo set (training/setup.py `demo_split`): built at `eval.size`, its
settings recorded in `demo_data/.complete_split`, rebuilt when they change."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vbridge_jax.data import fewshot
from vbridge_jax.training import setup, trainer


def _config(size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=3, progress=False, data=dict(source="demo", demo_per_category=1, demo_heldout=1),
      eval=dict(source="demo", size=size)))


@pytest.fixture
def builds(monkeypatch):
  """fewshot.build's calls, each writing one Blur pair of its size."""
  calls = []

  def fake_build(out, **kw):
    calls.append(kw)
    for split in fewshot.SPLITS:
      for side in ("LQ", "GT"):
        path = Path(out, split, "Blur", side, "0000.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((kw["size"], kw["size"], 3), np.uint8)).save(path)
    return 2
  monkeypatch.setattr(fewshot, "build", fake_build)
  return calls


def test_demo_set_is_built_at_the_eval_size_and_recorded(tmp_path):
  out = setup.demo_split(_config(48), str(tmp_path), "heldout")
  assert out == str(tmp_path / "demo_data" / "heldout")
  for split in fewshot.SPLITS:
    pngs = sorted((tmp_path / "demo_data" / split).rglob("*.png"))
    assert len(pngs) == 2 * 21
    assert {np.asarray(Image.open(p)).shape for p in pngs} == {(48, 48, 3)}
  assert json.loads((tmp_path / "demo_data" / ".complete_split").read_text()) == dict(
      per_category=1, heldout=1, seed=3, size=48)


def test_demo_set_is_reused_only_with_the_same_settings(tmp_path, builds):
  wd, marker = str(tmp_path), tmp_path / "demo_data" / ".complete_split"
  setup.demo_split(_config(64), wd, "train")
  setup.demo_split(_config(64), wd, "heldout")
  assert [c["size"] for c in builds] == [64]  # built once, then reused
  setup.demo_split(_config(32), wd, "train")  # another eval.size: rebuilt at it
  assert [c["size"] for c in builds] == [64, 32]
  assert json.loads(marker.read_text())["size"] == 32
  png = tmp_path / "demo_data" / "train" / "Blur" / "LQ" / "0000.png"
  assert np.asarray(Image.open(png)).shape == (32, 32, 3)
  setup.demo_split(_config(0), wd, "train")  # no eval.size: fewshot's default
  assert builds[-1]["size"] == fewshot.DEFAULT_SIZE
  marker.write_text("")  # the empty marker of a set built before sizes were recorded
  setup.demo_split(_config(0), wd, "train")
  assert len(builds) == 4 and json.loads(marker.read_text())["size"] == fewshot.DEFAULT_SIZE


def test_a_stale_larger_set_leaves_no_pairs_behind(tmp_path, builds):
  stale = tmp_path / "demo_data" / "train" / "Noise" / "LQ" / "0007.png"
  stale.parent.mkdir(parents=True)
  stale.write_bytes(b"")
  setup.demo_split(_config(32), str(tmp_path), "train")
  assert not stale.exists() and len(builds) == 1


def test_resuming_a_demo_run_at_another_eval_size_is_refused(tmp_path):
  """`eval.size` is the demo set's size (`trainer._RUN_FIELDS`)."""
  wd = tmp_path / "run"
  (wd / "checkpoints" / "200").mkdir(parents=True)
  saved = _config(128)
  saved.model, saved.finetune = ml_collections.ConfigDict(dict(dit="tiny")), "full"
  (wd / "config.json").write_text(saved.to_json_best_effort())
  other = ml_collections.ConfigDict(saved.to_dict())
  other.eval.size = 64
  with pytest.raises(setup.ConfigError, match=r"eval\.size=128, this config has 64"):
    trainer._check_same_run(other, str(wd))
  other.data.source = str(tmp_path / "pairs")  # off the demo set the size is free
  trainer._check_same_run(other, str(wd))
