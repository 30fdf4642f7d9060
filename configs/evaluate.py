"""Scoring restored images: the two protocols of reference/vbridge_paper.md.

Variants (`--config configs/evaluate.py:VARIANT`):

- (none) or `vbridge`: the authors' evaluation (PSNR/SSIM on MATLAB luma Y and on RGB,
  5-pixel SSIM trim, last frame resized to the GT size).
- `foundir`: FoundIR's `cal_metrics.py` (pyiqa defaults), the protocol of its benchmark.

Launch:

    python -m vbridge_jax.evaluate --config configs/evaluate.py --pred restored \\
        --gt FoundIR/test --out scores
    python -m vbridge_jax.evaluate --config configs/evaluate.py:foundir --pred restored \\
        --gt FoundIR/test --out scores_foundir

Command-line flags override these values.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "vbridge"
  if arg not in ("vbridge", "foundir"):
    raise ValueError(f"unknown variant {arg!r} of configs/evaluate.py; one of 'vbridge', 'foundir'")
  c = ml_collections.ConfigDict()
  c.pred = ""  # restored images (a folder tree)
  c.gt = ""  # ground truth (a folder tree)
  c.out = ""  # folder for metrics.json, metrics.csv, metrics.md
  c.protocol = arg
  return c
