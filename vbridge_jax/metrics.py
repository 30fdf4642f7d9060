"""Full-reference image metrics under the two protocols of reference/vbridge_paper.md.

`vbridge` (the authors' evaluation): PSNR `20 log10(255 / RMSE)` and SSIM (11x11 Gaussian,
sigma 1.5, K1 0.01, K2 0.03, L 255, zero-padded 'same' filtering, the SSIM map trimmed by 5
pixels) on MATLAB luma `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255` (R, G, B in
0..255, Y kept in float) and on each RGB channel, the RGB figure being the mean of the three
channels' PSNRs and SSIMs. Keys `psnr_y, ssim_y, psnr_rgb, ssim_rgb`.

`foundir` (FoundIR's cal_metrics.py, pyiqa defaults): PSNR `10 log10(1 / (MSE + 1e-8))` on
RGB in [0, 1], one MSE over all channels; SSIM on `Y = round(255 (0.299 R + 0.587 G +
0.114 B))` (R, G, B in [0, 1]) with the same Gaussian window, 'valid' filtering, the
contrast-structure term clamped at 0, the mean of the map. Keys `psnr, ssim`.

Images are `(H, W, 3)` uint8. Everything runs in float64 inside `jax.enable_x64`, jitted
(one compilation per image size); a prediction of another size is first resized to the
ground truth's with a cubic spline (order 3, scikit-image) and rounded back to uint8.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 11
SIGMA = 1.5
K1, K2, PEAK = 0.01, 0.03, 255.0
VBRIDGE_TRIM = 5

PROTOCOLS = ("vbridge", "foundir")
METRIC_KEYS = {"vbridge": ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"), "foundir": ("psnr", "ssim")}


def gaussian_taps(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
  """1-D normalised Gaussian; its outer product is MATLAB's fspecial('gaussian', 11, 1.5)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / g.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable 'valid' correlation over axes 0 and 1 of (H, W, ...)."""
  k = len(taps)
  h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
  rows = sum(float(taps[i]) * x[i:i + h] for i in range(k))
  return sum(float(taps[j]) * rows[:, j:j + w] for j in range(k))


def _ssim_maps(a: jax.Array, b: jax.Array, pad: bool, clamp_cs: bool) -> jax.Array:
  """SSIM map per channel of (H, W, C) float64 images ('same' zero-padded or 'valid')."""
  taps = gaussian_taps()
  if pad:
    r = WINDOW // 2
    a = jnp.pad(a, ((r, r), (r, r), (0, 0)))
    b = jnp.pad(b, ((r, r), (r, r), (0, 0)))
  c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
  mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
  s_aa = _filter_valid(a * a, taps) - mu_a * mu_a
  s_bb = _filter_valid(b * b, taps) - mu_b * mu_b
  s_ab = _filter_valid(a * b, taps) - mu_a * mu_b
  cs = (2.0 * s_ab + c2) / (s_aa + s_bb + c2)
  if clamp_cs:
    cs = jnp.maximum(cs, 0.0)
  return (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs


def matlab_y(rgb: jax.Array) -> jax.Array:
  """MATLAB rgb2ycbcr luma from 0..255 RGB, kept in float."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


@jax.jit
def _vbridge(pred: jax.Array, gt: jax.Array) -> dict[str, jax.Array]:
  p, g = pred.astype(jnp.float64), gt.astype(jnp.float64)
  p4 = jnp.concatenate([matlab_y(p)[..., None], p], axis=-1)
  g4 = jnp.concatenate([matlab_y(g)[..., None], g], axis=-1)
  mse = jnp.mean((p4 - g4) ** 2, axis=(0, 1))
  psnr = 20.0 * jnp.log10(PEAK / jnp.sqrt(mse))
  t = VBRIDGE_TRIM
  ssim = jnp.mean(_ssim_maps(p4, g4, pad=True, clamp_cs=False)[t:-t, t:-t], axis=(0, 1))
  return {"psnr_y": psnr[0], "ssim_y": ssim[0], "psnr_rgb": jnp.mean(psnr[1:]),
          "ssim_rgb": jnp.mean(ssim[1:])}


def foundir_y(rgb01: jax.Array) -> jax.Array:
  """FoundIR/pyiqa luma: round(255 (0.299 R + 0.587 G + 0.114 B)), RGB in [0, 1]."""
  return jnp.round(255.0 * (0.299 * rgb01[..., 0] + 0.587 * rgb01[..., 1] + 0.114 * rgb01[..., 2]))


@jax.jit
def _foundir(pred: jax.Array, gt: jax.Array) -> dict[str, jax.Array]:
  p, g = pred.astype(jnp.float64) / 255.0, gt.astype(jnp.float64) / 255.0
  psnr = 10.0 * jnp.log10(1.0 / (jnp.mean((p - g) ** 2) + 1e-8))
  ssim = jnp.mean(_ssim_maps(foundir_y(p)[..., None], foundir_y(g)[..., None], pad=False,
                             clamp_cs=True))
  return {"psnr": psnr, "ssim": ssim}


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
  """Cubic-spline (order 3) resize of uint8 (H, W, 3) to (height, width), rounded to uint8."""
  if img.shape[:2] == (height, width):
    return img
  from skimage.transform import resize  # pylint: disable=import-outside-toplevel
  out = resize(img.astype(np.float64), (height, width, img.shape[2]), order=3, mode="reflect",
               anti_aliasing=False, preserve_range=True)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pred, gt = np.asarray(pred), np.asarray(gt)
  for name, a in (("prediction", pred), ("ground truth", gt)):
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
      raise ValueError(f"{name} must be (H, W, 3) uint8, got {a.shape} {a.dtype}")
  if min(gt.shape[:2]) < WINDOW + 2 * VBRIDGE_TRIM:
    raise ValueError(f"ground truth {gt.shape[:2]} is smaller than the SSIM window and trim")
  return resize_to(pred, *gt.shape[:2]), gt


def compute(protocol: str, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """The protocol's metrics for one (H, W, 3) uint8 pair (pred resized to gt if needed)."""
  fns: dict[str, Callable] = {"vbridge": _vbridge, "foundir": _foundir}
  if protocol not in fns:
    raise ValueError(f"protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
  pred, gt = _check(pred, gt)
  with jax.enable_x64(True):
    out = fns[protocol](jnp.asarray(pred), jnp.asarray(gt))
    return {k: float(out[k]) for k in METRIC_KEYS[protocol]}


def vbridge_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  return compute("vbridge", pred, gt)


def foundir_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  return compute("foundir", pred, gt)
