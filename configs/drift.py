"""The drift corrector: a second fine-tune from the base model's outputs to the GT.

The base V-Bridge model restores every training LQ image (`python -m vbridge_jax.restore`,
written as `<outputs>/<category>/<id>.png`); the corrector learns short clips (default 5
frames) from that output (frame 0) to the GT (last frame), with the same flow-matching
TI2V objective and optimizer as the curriculum. Initialising from the base model's
weights is inferred (the paper says only "a second model ... fine-tuned on the base
model's outputs").

Variants: (none) the paper-scale run at 720 px; `tiny` the random tiny models, for
checking the wiring on a CPU (needs `data.source` and `data.drift_outputs`).

Launch:

    python -m vbridge_jax.train --config=configs/drift.py --workdir=DIR \
        --config.init_from=/ckpt/vbridge_base_jax --config.data.source=/data/fewshot \
        --config.data.drift_outputs=/runs/base_outputs --config.prompts=/ckpt/prompts.npz
"""

from __future__ import annotations

import ml_collections

from configs import curriculum


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in ("", "tiny"):
    raise ValueError(f"unknown variant {arg!r} of configs/drift.py; one of '', 'tiny'")
  c = curriculum.get_config("tiny_wan" if arg == "tiny" else "")
  c.drift = True
  c.data.frames = 5
  c.data.drift_outputs = ""  # required: the base model's outputs <category>/<id>.<ext>
  if arg == "tiny":
    c.data.source = ""
    c.stages = "64"
    c.total_steps = 50
  else:
    c.stages = "720"
    c.total_steps = 10_000
  return c
