"""Training logs: a progress bar, `metrics.jsonl`, TensorBoard scalars and sample grids.

Only process 0 writes. Every logged step becomes one JSON object in `workdir/metrics.jsonl`
(`step`, `loss`, `grad_norm`, `lr`, `steps_per_sec`, `eta_sec`, `stage`, `size`, ...).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable

import numpy as np
from PIL import Image

from vbridge_jax.train_utils.tensorboard import SummaryWriter


class MetricsLogger:
  """Writes metrics for process 0; keeps a tqdm bar over the whole schedule."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, *, enabled: bool = True,
               progress: bool = True):
    self.enabled = enabled
    self.total = total_steps
    # steps/s -> extra log fields; the trainer sets it per stage (flops.throughput).
    self.rate_fields: Callable[[float], dict[str, float]] | None = None
    self._t0 = time.time()
    self._s0 = start_step
    self._last_t, self._last_s = self._t0, start_step
    self._bar = None
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       smoothing=0.1)

  def rates(self, step: int) -> tuple[float, float]:
    """(steps/s since the previous log, ETA seconds)."""
    now = time.time()
    sps = (step - self._last_s) / max(now - self._last_t, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    self._last_t, self._last_s = now, step
    eta = (self.total - step) / overall if overall > 0 else math.inf
    return sps, eta

  def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    sps, eta = self.rates(step)
    row = {"step": int(step)} | {k: _py(v) for k, v in metrics.items()}
    row |= {"steps_per_sec": round(sps, 4), "eta_sec": round(eta, 1) if math.isfinite(eta) else None}
    if self.rate_fields is not None:  # tokens/s and MFU for the current stage
      row |= {k: round(v, 4) for k, v in self.rate_fields(sps).items()}
    if not self.enabled:
      return row
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {f"train/{k}": v for k, v in row.items()
                            if k != "step" and isinstance(v, (int, float)) and v is not None})
    self._tb.flush()
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                            lr=f"{row.get('lr', 0):.2e}", size=row.get("size"))
      self._bar.refresh()
    return row

  def write(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item()
  if isinstance(v, float):
    return v if math.isfinite(v) else str(v)
  return v


def save_grid(path: str, rows: list[list[np.ndarray]]) -> None:
  """Saves images (each `(H, W, 3)` in [-1, 1]) as a PNG grid, one list per row."""
  if not rows or not rows[0]:
    raise ValueError("save_grid needs at least one image")
  h, w = rows[0][0].shape[:2]
  canvas = np.full((len(rows) * (h + 2), len(rows[0]) * (w + 2), 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      pix = np.clip((np.asarray(img, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
      canvas[i * (h + 2):i * (h + 2) + h, j * (w + 2):j * (w + 2) + w] = pix
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(canvas).save(path)
