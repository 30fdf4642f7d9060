"""Picture grids: rows of images with a header of column labels and a label above each row.

The one grid writer of the project: the trainer's sample grids (LQ | output | GT), its
held-out grids (one row per category, with the scores) and the miniature's picture (one
column per recipe). Images smaller than `CELL` pixels are enlarged by an integer factor
(nearest neighbour), so that small crops stay legible beside their labels.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vbridge_jax.utils import atomic

CELL = 192  # cells are enlarged to at least this many pixels
PAD, TEXT = 4, 16  # pixels between cells; height of a label line


def to_uint8(img: np.ndarray) -> np.ndarray:
  """An image in [-1, 1] (the models' range) as uint8, rounded."""
  return np.clip((np.asarray(img, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _font(px: int):
  try:
    return ImageFont.load_default(size=px)
  except TypeError:  # Pillow < 10.1: one bitmap size
    return ImageFont.load_default()


def save(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]], col_labels: Sequence[str],
         row_labels: Sequence[str] | None = None) -> None:
  """Writes uint8 `(H, W, 3)` images as a PNG grid (atomically), one list per row."""
  if not rows or not rows[0]:
    raise ValueError(f"{path}: a grid needs at least one image")
  h = max(im.shape[0] for r in rows for im in r)
  w = max(im.shape[1] for r in rows for im in r)
  f = max(1, -(-CELL // max(h, w)))
  ch, cw = h * f, w * f
  label_h = TEXT if row_labels is not None else 0
  ncol = max(len(col_labels), max(len(r) for r in rows))
  canvas = Image.new("RGB", (ncol * (cw + PAD) + PAD, TEXT + PAD + len(rows) * (ch + label_h + PAD)),
                     "white")
  draw, font = ImageDraw.Draw(canvas), _font(12)
  for j, label in enumerate(col_labels):
    draw.text((PAD + j * (cw + PAD), 2), label, fill="black", font=font)
  for i, row in enumerate(rows):
    y = TEXT + PAD + i * (ch + label_h + PAD)
    if row_labels is not None:
      draw.text((PAD, y), row_labels[i], fill="black", font=font)
    for j, im in enumerate(row):
      big = Image.fromarray(im).resize((im.shape[1] * f, im.shape[0] * f), Image.NEAREST)
      canvas.paste(big, (PAD + j * (cw + PAD), y + label_h))
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  with atomic.replacing(path) as tmp:
    canvas.save(tmp, format="PNG")
