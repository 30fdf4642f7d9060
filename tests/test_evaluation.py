"""Held-out evaluation helpers: the round-robin subset, scores against the input, the grid."""

import numpy as np
from PIL import Image

from vbridge_jax.evaluation import grids
from vbridge_jax.training import heldout as E


def _tree(root, cats, n, size=40):
  rng = np.random.default_rng(0)
  for c in cats:
    for i in range(n):
      gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      lq = np.clip(gt.astype(int) + 40, 0, 255).astype(np.uint8)
      for side, img in (("GT", gt), ("LQ", lq)):
        (root / c / side).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / c / side / f"{i:04d}.png")


def test_load_heldout_round_robin_and_resize(tmp_path):
  _tree(tmp_path, ["A", "B", "C"], 3)
  images = E.load_heldout(str(tmp_path), size=32, max_images=4)
  assert [im.name for im in images] == ["A/0000", "A/0001", "B/0000", "C/0000"]
  assert images[0].lq.shape == images[0].gt.shape == (32, 32, 3)


def test_score_per_image_and_category(tmp_path):
  _tree(tmp_path, ["A", "B"], 2)
  images = E.load_heldout(str(tmp_path))
  exact = E.score(images, [im.gt for im in images])
  assert exact["average_per_image"]["ssim_y"] == 1.0
  worse = E.score(images, [im.lq for im in images])
  assert set(worse["per_category"]) == {"A", "B"}
  assert 10 < worse["average_per_image"]["psnr_y"] < 40
  assert worse["average_per_category"]["ssim_y"] < 1.0


def test_labelled_grid_enlarges_small_images(tmp_path):
  img = np.zeros((24, 24, 3), np.uint8)
  path = tmp_path / "g.png"
  grids.save(str(path), [[img, img, img], [img, img, img]], ["LQ", "restored", "GT"],
             ["Blur", "Noise"])
  w, h = Image.open(path).size
  assert w >= 3 * grids.CELL and h >= 2 * grids.CELL
  # labels are drawn (dark pixels on the white header)
  header = np.asarray(Image.open(path))[:14]
  assert (header < 128).any()
