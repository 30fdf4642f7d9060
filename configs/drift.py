"""The drift corrector: a second fine-tune from the base model's outputs to the GT.

The base V-Bridge model restores the corrector's own LQ images (`python -m vbridge_jax.restore`,
written as `<outputs>/<category>/<id>.png`, or `<category>/LQ/<id>.png` as restore writes a
paired tree); the corrector learns short clips from that output (frame 0) to the GT (last
frame), with the same flow-matching TI2V objective and optimizer as the curriculum.

The paper's reading is the default (docs/fidelity.md, the drift corrector): section 4.1
says "Both models adopt Wan2.2-TI2V-5B as the backbone" and "also use 50 samples per
category for the drift correction stage". So `drift_init = "backbone"`: `init_from` is the
converted Wan2.2-TI2V-5B (`convert/wan_to_jax.py`, the checkpoint the base started from),
and `data.source` is a drift split: 50 pairs per category disjoint from the base's training
pairs (real pairs: a separate subset of the pool, packed by `prepare` like any tree;
few-shot pairs: `python -m vbridge_jax.data.fewshot --drift 50` writes `DIR/drift/` beside
the base's `DIR/train/`, other crops and degradations of the training images, none of them
a training pair; or `--clean` on clean images the base never saw), which the base restores
into `data.drift_outputs`. `drift_init = "base"` is this project's earlier
reading, an option: `init_from` is the trained base model as a model folder (`python -m
vbridge_jax.export --workdir BASE_RUN --out BASE_MODEL`) and the data may be the base's own
training pairs, where its drift is smallest. The field records the reading; `init_from`
and `data.source` are what the run uses.

Not from the paper (it gives no size, length or clip length for the corrector): 720 px,
5-frame clips and 10,000 steps are this project's choices.

Variants (`VARIANTS`): '' the paper-scale run at 720 px; `tiny` the random tiny models, for
checking the wiring on a CPU (needs `data.source` and `data.drift_outputs`; the whole chain
at tiny scale is `python -m vbridge_jax.miniature`, which follows the same reading).

Launch (the paper's reading):

    python -m vbridge_jax.data.fewshot --out=/data/pairs --clean=/data/clean --per_category=50 \
        --drift=50   # /data/pairs/train: the base's pairs; /data/pairs/drift: the corrector's
    python -m vbridge_jax.restore --model=/ckpt/vbridge_base_jax --prompts=/ckpt/prompts.npz \
        --input=/data/pairs/drift --output=/runs/base_outputs
    python -m vbridge_jax.train --config=configs/drift.py --workdir=DIR \
        --config.init_from=/ckpt/wan22_ti2v_jax --config.data.source=/data/pairs/drift \
        --config.data.drift_outputs=/runs/base_outputs --config.prompts=/ckpt/prompts.npz
"""

from __future__ import annotations

import ml_collections

from vbridge_jax.configs import curriculum


def base_config() -> ml_collections.ConfigDict:
  """The paper-scale corrector: the curriculum's config, 5-frame clips at 720 px."""
  c = curriculum.get_config("")
  c.drift = True
  # backbone (the paper: init_from = the converted Wan2.2-TI2V-5B, data.source = pairs
  # disjoint from the base's) | base (init_from = the exported base model). Module docstring.
  c.drift_init = "backbone"
  c.data.frames = 5  # this project's choice (the paper gives none for the corrector)
  c.data.drift_outputs = ""  # required: the base model's outputs <category>/<id>.<ext>
  # c.init_from (required unless tiny): see drift_init
  c.stages = "720"  # this project's choice (the paper gives no size for the corrector)
  c.total_steps = 10_000  # this project's choice: the paper gives no length (overrides epochs)
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The curriculum's random tiny models on a CPU (needs `data.source`)."""
  c = curriculum.tiny_wan(c)
  c.data.frames = 5
  c.data.source = ""
  c.stages = "64"
  c.total_steps = 50
  return c


VARIANTS = {"": lambda c: c, "tiny": tiny}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/drift.py; one of "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return VARIANTS[arg](base_config())
