"""Scoring restored images: the protocols of docs/fidelity.md (scoring).

Variants (`--config=configs/evaluate.py:VARIANT`):

- (none) or `vbridge`: the authors' metrics (PSNR/SSIM on MATLAB luma Y and on RGB, 5-pixel
  SSIM trim) on lossless images (restore's PNGs), a prediction of another size resized to
  the GT with the authors' cubic spline.
- `vbridge_mp4`: exactly the authors' eval.py: the last frame of each prediction `.mp4`
  (restore's video output) read with OpenCV, zoomed to the GT size, the GT read with
  OpenCV. Needs the `video` extra.
- `foundir`: FoundIR's `cal_metrics.py` (pyiqa defaults), the protocol of its benchmark.

Launch:

    python -m vbridge_jax.evaluate --config=configs/evaluate.py --config.pred=restored \\
        --config.gt=FoundIR/test --config.out=scores
    python -m vbridge_jax.evaluate --config=configs/evaluate.py:vbridge_mp4 \\
        --config.pred=restored_videos --config.gt=FoundIR/test --config.out=scores_mp4
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("vbridge", "vbridge_mp4", "foundir")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "vbridge"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/evaluate.py; one of "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.pred = ""  # restored images (a folder tree; .mp4 files for vbridge_mp4); required
  c.gt = ""  # ground truth (a folder tree); required
  c.out = ""  # folder for metrics.json, metrics.csv, metrics.md, report.html; required
  # the restore's input tree (LQ images, paired by category and stem as pred is; "" when not
  # given): the LQ is scored too (input, gain) and shown in report.html; may be the gt tree
  c.lq = ""
  c.protocol = arg  # vbridge | vbridge_mp4 | foundir
  c.strict_size = False  # a prediction of another size than its GT is an error, not resized
  c.progress = True  # a progress bar on stderr
  return c
