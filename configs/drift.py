"""The drift corrector: a second fine-tune from the base model's outputs to the GT.

The base V-Bridge model restores every training LQ image (`python -m vbridge_jax.restore`,
written as `<outputs>/<category>/<id>.png`, or `<category>/LQ/<id>.png` as restore writes a
paired tree); the corrector learns short clips (default 5
frames) from that output (frame 0) to the GT (last frame), with the same flow-matching
TI2V objective and optimizer as the curriculum. Initialising from the base model's
weights is inferred (the paper says only "a second model ... fine-tuned on the base
model's outputs").

`init_from` is the trained base model as a model folder: `python -m vbridge_jax.export
--workdir BASE_RUN --out BASE_MODEL` turns the base run's checkpoint into one (its `dit/`,
LoRA merged, the `vae/` it trained with, and `model.json`); a converted checkpoint (e.g. the
authors' released base) works the same way.

Variants (`VARIANTS`): '' the paper-scale run at 720 px; `tiny` the random tiny models, for
checking the wiring on a CPU (needs `data.source` and `data.drift_outputs`; the whole chain
at tiny scale is `python -m vbridge_jax.miniature`).

Launch:

    python -m vbridge_jax.export --workdir=/runs/vbridge_base --out=/ckpt/vbridge_base_jax
    python -m vbridge_jax.restore --model=/ckpt/vbridge_base_jax --prompts=/ckpt/prompts.npz \
        --input=/data/fewshot --output=/runs/base_outputs
    python -m vbridge_jax.train --config=configs/drift.py --workdir=DIR \
        --config.init_from=/ckpt/vbridge_base_jax --config.data.source=/data/fewshot \
        --config.data.drift_outputs=/runs/base_outputs --config.prompts=/ckpt/prompts.npz
"""

from __future__ import annotations

import ml_collections

from vbridge_jax.configs import curriculum


def base_config() -> ml_collections.ConfigDict:
  """The paper-scale corrector: the curriculum's config, 5-frame clips at 720 px."""
  c = curriculum.get_config("")
  c.drift = True
  c.data.frames = 5
  c.data.drift_outputs = ""  # required: the base model's outputs <category>/<id>.<ext>
  # c.init_from (required unless tiny): the exported base model (python -m vbridge_jax.export)
  c.stages = "720"
  c.total_steps = 10_000  # the paper gives no length for the corrector (overrides epochs)
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
