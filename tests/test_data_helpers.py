"""Helpers for the data tests: small generated LQ/GT trees (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(seed: int, h: int, w: int) -> np.ndarray:
  """A smooth random uint8 RGB image (so resizing and JPEG behave like on photos)."""
  rng = np.random.default_rng(seed)
  small = (rng.random((4, 5, 3)) * 255).astype(np.uint8)
  return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.uint8)


def save(path: Path, img: np.ndarray) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
  Image.fromarray(img).save(path, format=fmt, quality=95)
  return path


def make_tree(root: Path, counts: dict[str, int], *, h: int = 40, w: int = 56,
              lq_fn=lambda gt: 255 - gt, exts: tuple[str, ...] = (".png",)) -> Path:
  """`root/<category>/{LQ,GT}/<id><ext>`; LQ = lq_fn(GT); extensions cycle."""
  k = 0
  for cat, n in counts.items():
    for i in range(n):
      gt = smooth_image(k, h, w)
      ext = exts[k % len(exts)]
      save(root / cat / "GT" / f"{i:03d}{ext}", gt)
      save(root / cat / "LQ" / f"{i:03d}{'.png' if ext != '.png' else ext}", lq_fn(gt))
      k += 1
  return root
