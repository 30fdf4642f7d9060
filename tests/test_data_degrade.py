"""Degradations (every category: shape, dtype, determinism, effect) and the fewshot CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data_helpers import save, smooth_image
from vbridge_jax.data import degrade as D
from vbridge_jax.data import fewshot


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
  rng = np.random.default_rng(1)
  img = smooth_image(3, 72, 96).astype(np.int16)
  img += rng.integers(-20, 20, img.shape).astype(np.int16)  # some texture
  return np.clip(img, 30, 225).astype(np.uint8)


def test_category_list_matches_foundir_and_realce():
  assert len(D.FOUNDIR_CATEGORIES) == 20 and D.CATEGORIES[-1] == "RealCE"
  assert D.FOUNDIR_CATEGORIES[11] == "NightRain" and D.FOUNDIR_CATEGORIES[18] == \
      "Lowlight_Blur_JPEG"


@pytest.mark.parametrize("category", D.CATEGORIES)
def test_every_category_is_seeded_sized_and_changes_the_image(photo, category):
  a = D.degrade(photo, category, 7)
  b = D.degrade(photo, category, np.random.default_rng(7))
  c = D.degrade(photo, category, 8)
  assert a.dtype == np.uint8 and a.shape == photo.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c), "another seed should give another degradation"
  assert np.abs(a.astype(int) - photo).mean() > 1.0, "the image should change"


def test_effects_go_the_right_way(photo):
  rng = lambda: np.random.default_rng(0)  # noqa: E731
  assert D.lowlight(photo, rng()).mean() < 0.5 * photo.mean()
  hazy = D.haze(photo, rng())
  assert hazy.mean() > photo.mean() and hazy.std() < photo.std()
  assert D.gaussian_blur(photo, rng()).std() < photo.std()
  assert D.rain(photo, rng()).mean() > photo.mean()
  assert np.abs(np.diff(D.gaussian_noise(photo, rng()).astype(float), axis=1)).mean() > \
      np.abs(np.diff(photo.astype(float), axis=1)).mean()
  sr = D.rescale(photo, rng())
  assert np.abs(np.diff(sr.astype(float), axis=1)).mean() < \
      np.abs(np.diff(photo.astype(float), axis=1)).mean()
  q10 = D.jpeg(photo, rng(), quality=10)
  q90 = D.jpeg(photo, rng(), quality=90)
  assert np.abs(q10.astype(int) - photo).mean() > np.abs(q90.astype(int) - photo).mean()


def test_bad_arguments(photo):
  with pytest.raises(ValueError, match="unknown category"):
    D.degrade(photo, "Snow", 0)
  with pytest.raises(ValueError, match="uint8 RGB"):
    D.degrade(photo.astype(np.float32), "Blur", 0)


def test_fewshot_builtin_photos_all_categories_deterministic(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  assert fewshot.main(["--out", str(a), "--per-category", "1", "--size", "48"]) == 0
  fewshot.build(b, per_category=1, size=48)
  cats = sorted(p.name for p in a.iterdir())
  assert cats == sorted(D.CATEGORIES) and len(cats) >= 20
  for cat in cats:
    gt = np.asarray(Image.open(a / cat / "GT" / "0000.png"))
    lq = np.asarray(Image.open(a / cat / "LQ" / "0000.png"))
    assert gt.shape == lq.shape == (48, 48, 3)
    assert (a / cat / "LQ" / "0000.png").read_bytes() == \
        (b / cat / "LQ" / "0000.png").read_bytes()


def test_fewshot_clean_folder_and_its_errors(tmp_path):
  clean = tmp_path / "clean"
  save(clean / "x.png", smooth_image(0, 30, 40))
  save(clean / "sub" / "y.jpg", smooth_image(1, 50, 30))
  out = tmp_path / "out"
  fewshot.build(out, clean=clean, per_category=2, categories=["Blur", "RealCE"])
  sizes = {np.asarray(Image.open(p)).shape for p in (out / "Blur" / "GT").iterdir()}
  assert sizes == {(30, 40, 3), (50, 30, 3)}  # full images by default with --clean
  (clean / "z.png").write_bytes(b"not an image")
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.data.fewshot", "--out",
                      str(tmp_path / "o2"), "--clean", str(clean), "--per-category", "1",
                      "--size", "16"], capture_output=True, text=True,
                     cwd=Path(__file__).parent.parent)
  assert r.returncode == 1
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "z.png" in errors[0]
  assert "Traceback" not in r.stderr


def test_fewshot_heldout_split_uses_disjoint_clean_images(tmp_path):
  clean = tmp_path / "clean"
  for i in range(8):  # one flat colour per clean image: a GT's colour names its source
    save(clean / f"{i}.png", np.full((16, 16, 3), 20 * i + 10, np.uint8))
  out = tmp_path / "out"
  n = fewshot.build(out, clean=clean, per_category=3, heldout=2, categories=["Blur", "Noise"])
  assert n == 2 * (3 + 2)

  def sources(split):
    return {int(np.asarray(Image.open(p))[0, 0, 0]) for p in (out / split).glob("*/GT/*.png")}

  assert sorted(p.name for p in (out / "heldout").iterdir()) == ["Blur", "Noise"]
  assert len(list((out / "heldout" / "Blur" / "LQ").iterdir())) == 2
  assert sources("heldout") == {70, 150}  # the 4th and 8th image
  assert sources("train") and not sources("train") & sources("heldout")
  train, held = fewshot.split_sources(fewshot.builtin_photos(), builtin=True)
  assert {s[0] for s in held} == set(fewshot.HELDOUT_PHOTOS)
  assert not {s[0] for s in train} & set(fewshot.HELDOUT_PHOTOS)


def test_every_category_is_plainly_degraded_at_the_evaluated_size(tmp_path):
  """At 128 px (`eval.size` of configs/curriculum.py:tiny, where the trainer builds its
  demo set) every category's mean input PSNR-Y is below 32 dB: none hidden (data/degrade.py
  module doc), and none absurd (above 6 dB; low light is the darkest)."""
  from vbridge_jax.evaluation import metrics as M

  fewshot.build(tmp_path, per_category=4, size=128, seed=42)
  for cat in D.CATEGORIES:
    scores = [M.compute("vbridge", np.asarray(Image.open(lq)),
                        np.asarray(Image.open(tmp_path / cat / "GT" / lq.name)))["psnr_y"]
              for lq in sorted((tmp_path / cat / "LQ").iterdir())]
    assert len(scores) == 4
    assert 6.0 < np.mean(scores) < 32.0, (cat, scores)
