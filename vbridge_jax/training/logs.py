"""Training logs: progress, `metrics.jsonl` and TensorBoard scalars.

Only process 0 writes. Every logged step becomes one JSON object in `workdir/metrics.jsonl`
(`step`, `loss`, `grad_norm`, `lr`, `steps_per_sec`, `eta_sec`, `stage`, `size`, ...) and
TensorBoard scalars `train/<name>` in `workdir/tensorboard` (through tensorboardX; no
TensorFlow); the held-out evaluation's rows go through the same writer (`log_scalars`), so
one object holds the files. A resumed run first drops the rows after the step it resumed
from (a run killed between a log line and its next checkpoint replays those steps): `metrics.jsonl` is
rewritten without them, and the new events file starts with TensorBoard's purge marker for
them. On a terminal, a tqdm bar shows progress; otherwise (a log file) each logged row is
one plain line, with no carriage returns.

`steps_per_sec` is measured between log lines; the ETA is taken from the rate after the
first log line, since the first steps include compiling (no ETA until then).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from vbridge_jax.utils import atomic

log = logging.getLogger("vbridge_jax.training.trainer")


def truncate_jsonl(path: str, step: int) -> int:
  """Keeps the rows of `path` with `step <= step` (atomic rewrite); returns how many went."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row_step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
      continue  # a line cut short by a kill
    if row_step <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) == len(lines):
    return 0
  atomic.write_text(path, "".join(keep))
  return len(lines) - len(keep)


class MetricsLogger:
  """Writes metrics for process 0; a tqdm bar over the whole schedule on a terminal."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, *, enabled: bool = True,
               progress: bool = True):
    self.enabled = enabled
    self.total = total_steps
    # steps/s -> extra log fields; the trainer sets it per stage (flops.throughput).
    self.rate_fields: Callable[[float], dict[str, float]] | None = None
    self._last_t, self._last_s = time.time(), start_step
    self._warm: tuple[float, int] | None = None  # (time, step) of the first log line
    self._bar = None
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    dropped = truncate_jsonl(path, start_step)
    if dropped:
      log.info("dropped %d metrics row(s) after step %d (replayed from the checkpoint)",
               dropped, start_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=start_step + 1 if start_step > 0 else None,
                             flush_secs=30)
    if progress and sys.stderr.isatty():
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       smoothing=0.1)

  def rates(self, step: int) -> tuple[float, float]:
    """(steps/s since the previous log, ETA seconds; inf before warm-up is over)."""
    now = time.time()
    sps = (step - self._last_s) / max(now - self._last_t, 1e-9)
    self._last_t, self._last_s = now, step
    if self._warm is None:  # the first line: its steps include compiling
      self._warm = (now, step)
      return sps, math.inf
    t0, s0 = self._warm
    overall = (step - s0) / max(now - t0, 1e-9)
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
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f"train/{k}", v, global_step=step)
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                            lr=f"{row.get('lr', 0):.2e}", size=row.get("size"))
      self._bar.refresh()
    else:
      eta_text = "warming up" if row["eta_sec"] is None else _duration(row["eta_sec"])
      log.info("step %d/%d: loss %.4f, %.3g steps/s, ETA %s", step, self.total,
               float(row.get("loss", float("nan"))), sps, eta_text)
    return row

  def log_scalars(self, step: int, row: dict[str, float]) -> None:
    """A row of named scalars at `step` (the held-out evaluation's `eval/...`), as given:
    one `metrics.jsonl` line and TensorBoard scalars under the same names."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": int(step)} | {k: round(v, 4) for k, v in row.items()}) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      self._tb.add_scalar(k, v, global_step=step)
    self._tb.flush()

  def write(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      log.info("%s", message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item()
  if isinstance(v, float):
    return v if math.isfinite(v) else str(v)
  return v
