"""Full-reference image metrics under the two protocols of docs/fidelity.md (scoring).

`vbridge` (the authors' evaluation, their `eval.py`): PSNR `20 log10(255 / RMSE)` and SSIM
(11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L 255, zero-padded 'same' filtering, the SSIM
map trimmed by 5 pixels) on MATLAB luma `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`
(R, G, B in 0..255, Y kept in float) and on each RGB channel, the RGB figure being the mean
of the three channels' PSNRs and SSIMs. Keys `psnr_y, ssim_y, psnr_rgb, ssim_rgb`.

`foundir` (FoundIR's cal_metrics.py, pyiqa defaults): PSNR `10 log10(1 / (MSE + 1e-8))` on
RGB in [0, 1], one MSE over all channels; SSIM on `Y = round(255 (0.299 R + 0.587 G +
0.114 B))` (R, G, B in [0, 1]) with the same Gaussian window, 'valid' filtering, the
contrast-structure term clamped at 0, the mean of the map. Keys `psnr, ssim`.

Images are `(H, W, 3)` uint8, scored in float64 with OpenCV's separable filter (the
authors' eval.py filters with OpenCV too). This implementation was chosen by measurement
over a jitted JAX one, which compiled once per image size (benchmarks/metrics_impl.py;
README). A prediction of another size is first resized to the ground truth's as the
authors' evaluation does (`resize_to`); `evaluate` records and reports every resize.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from scipy.ndimage import zoom

from vbridge_jax.utils.errors import MetricsError

WINDOW = 11
SIGMA = 1.5
K1, K2, PEAK = 0.01, 0.03, 255.0
VBRIDGE_TRIM = 5

PROTOCOLS = ("vbridge", "foundir")
METRIC_KEYS = {"vbridge": ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"), "foundir": ("psnr", "ssim")}
# The smallest ground-truth side each protocol can score: an SSIM map that is not empty
# ('same' filtering minus the 5-pixel trim on both sides; 'valid' filtering).
MIN_SIDE = {"vbridge": 2 * VBRIDGE_TRIM + 1, "foundir": WINDOW}


def gaussian_taps(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
  """1-D normalised Gaussian; its outer product is MATLAB's fspecial('gaussian', 11, 1.5)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / g.sum()


def _filter(x: np.ndarray) -> np.ndarray:
  """Zero-padded 'same' Gaussian filtering of a float64 (H, W) image."""
  taps = gaussian_taps()
  return cv2.sepFilter2D(x, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)


def _ssim_map(a: np.ndarray, b: np.ndarray, valid: bool, clamp_cs: bool) -> np.ndarray:
  """SSIM map of two float64 (H, W) images ('same' zero-padded, or 'valid')."""
  c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
  mu_a, mu_b = _filter(a), _filter(b)
  s_aa = _filter(a * a) - mu_a * mu_a
  s_bb = _filter(b * b) - mu_b * mu_b
  s_ab = _filter(a * b) - mu_a * mu_b
  cs = (2.0 * s_ab + c2) / (s_aa + s_bb + c2)
  if clamp_cs:
    cs = np.maximum(cs, 0.0)
  m = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs
  if valid:  # the 'valid' region of the correlation: padding never reaches it
    r = WINDOW // 2
    m = m[r:-r, r:-r]
  return m


def matlab_y(rgb: np.ndarray) -> np.ndarray:
  """MATLAB rgb2ycbcr luma from 0..255 RGB, kept in float64."""
  rgb = rgb.astype(np.float64)
  return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _psnr255(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a - b) ** 2))
  return float("inf") if mse == 0 else float(20.0 * np.log10(PEAK / np.sqrt(mse)))


def _vbridge(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  t = VBRIDGE_TRIM
  ssim = lambda a, b: float(np.mean(_ssim_map(a, b, valid=False, clamp_cs=False)[t:-t, t:-t]))
  yp, yg = matlab_y(pred), matlab_y(gt)
  p, g = pred.astype(np.float64), gt.astype(np.float64)
  return {"psnr_y": _psnr255(yp, yg), "ssim_y": ssim(yp, yg),
          "psnr_rgb": float(np.mean([_psnr255(p[..., c], g[..., c]) for c in range(3)])),
          "ssim_rgb": float(np.mean([ssim(p[..., c], g[..., c]) for c in range(3)]))}


def foundir_y(rgb01: np.ndarray) -> np.ndarray:
  """FoundIR/pyiqa luma: round(255 (0.299 R + 0.587 G + 0.114 B)), RGB in [0, 1]."""
  return np.round(255.0 * (0.299 * rgb01[..., 0] + 0.587 * rgb01[..., 1] + 0.114 * rgb01[..., 2]))


def _foundir(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  p, g = pred.astype(np.float64) / 255.0, gt.astype(np.float64) / 255.0
  psnr = 10.0 * np.log10(1.0 / (np.mean((p - g) ** 2) + 1e-8))
  ssim = np.mean(_ssim_map(foundir_y(p), foundir_y(g), valid=True, clamp_cs=True))
  return {"psnr": float(psnr), "ssim": float(ssim)}


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
  """The authors' resize to the GT size (their eval.py's `matlab_imresize`): scipy
  `ndimage.zoom` of each uint8 channel with a cubic spline (order 3, corner-aligned grid);
  scipy rounds and clips to the uint8 output. At the same size it returns the image
  unchanged (as the zoom by 1 does)."""
  if img.shape[:2] == (height, width):
    return img
  h, w = img.shape[:2]
  out = np.stack([zoom(img[:, :, c], (height / h, width / w), order=3) for c in range(3)], axis=2)
  return np.clip(out, 0, 255).astype(np.uint8)


def check_pair(protocol: str, pred: np.ndarray, gt: np.ndarray) -> None:
  """Raises MetricsError when the arrays are not uint8 RGB or the GT is too small."""
  if protocol not in PROTOCOLS:
    raise MetricsError(f"protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
  for name, a in (("prediction", pred), ("ground truth", gt)):
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
      raise MetricsError(f"{name} must be (H, W, 3) uint8, got {a.shape} {a.dtype}")
  if min(gt.shape[:2]) < MIN_SIDE[protocol]:
    raise MetricsError(f"ground truth {gt.shape[1]}x{gt.shape[0]} is smaller than the "
                       f"{protocol} protocol's {MIN_SIDE[protocol]}-pixel minimum side")


def compute(protocol: str, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """The protocol's metrics for one (H, W, 3) uint8 pair (pred resized to gt if needed)."""
  fns: dict[str, Callable] = {"vbridge": _vbridge, "foundir": _foundir}
  pred, gt = np.asarray(pred), np.asarray(gt)
  check_pair(protocol, pred, gt)
  return fns[protocol](resize_to(pred, *gt.shape[:2]), gt)
