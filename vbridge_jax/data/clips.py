"""Pseudo-temporal clips: T = 4k + 1 frames blending LQ (frame 0) into GT (frame T-1).

frame t = (1 - t/(T-1)) * LQ + (t/(T-1)) * GT, in float pixel space (0..255), then mapped
to [-1, 1] as x / 127.5 - 1. Frame 0 is exactly the LQ image and frame T-1 exactly the GT
image (the weights are exactly 0 and 1 there).
"""

from __future__ import annotations

import numpy as np


def check_frames(frames: int) -> int:
  if frames < 2 or (frames - 1) % 4:
    raise ValueError(f"frame count must be 4k + 1 with k >= 1, got {frames}")
  return frames


def blend_weights(frames: int) -> np.ndarray:
  """(T,) float32 weights of GT; 0 at frame 0, 1 at frame T-1."""
  w = np.arange(frames, dtype=np.float32) / np.float32(frames - 1)
  w[-1] = 1.0
  return w


def make_clip(lq: np.ndarray, gt: np.ndarray, frames: int, xp=np):
  """uint8 `(..., H, W, 3)` LQ and GT -> float32 `(..., T, H, W, 3)` clip in [-1, 1].

  `xp` is numpy or jax.numpy (same formula); the frame axis is inserted before H.
  """
  w = xp.asarray(blend_weights(frames)).reshape((frames, 1, 1, 1))
  lq = xp.asarray(lq).astype(xp.float32)[..., None, :, :, :]
  gt = xp.asarray(gt).astype(xp.float32)[..., None, :, :, :]
  pixels = (1.0 - w) * lq + w * gt
  return pixels / np.float32(127.5) - np.float32(1.0)
