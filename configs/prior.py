"""The tiny video prior: the tiny DiT pretrained as a video generator on the synthetic corpus.

What Wan2.2-TI2V-5B is to the paper's fine-tune, this run is to the tiny one: a model that
has learnt, from generic footage alone, what pictures look like and how frame 0 carries
forward in time. The corpus (`vbridge_jax/data/video_corpus.py`: dead-leaves scenes, camera
and object motion, illumination changes) holds no photo and none of the degradations; the
objective is Wan2.2's pretraining mix, half text-to-video (every frame generated, here with
the empty context) and half image-to-video (frame 0 given, `flow.t2v_ratio=0.5`).

`configs/curriculum.py:tiny` fine-tunes from it with `init_from="prior:tiny"`: the prior is
trained on first use, exported and cached by content under `$VBRIDGE_CACHE` (default
`~/.cache/vbridge_jax`), and reused by every later run (`vbridge_jax/training/prior.py`).

Variants (`--config=configs/prior.py:VARIANT`):

- (none) or `tiny`: the main command's prior (the architecture of `configs/curriculum.py:tiny`:
  dim 384, 2 heads, 2 layers, the pixel codec), 1500 steps at 64 px;
- `test`: a smaller and shorter one at 32 px for the learning test (tests/test_learning.py).

Launch (by hand; the tiny fine-tune builds it by itself):

    python -m vbridge_jax.train --config=configs/prior.py --workdir=/tmp/vbridge_prior
    python -m vbridge_jax.export --workdir=/tmp/vbridge_prior --out=/tmp/vbridge_prior_model
    python -m vbridge_jax.train --config=configs/curriculum.py:tiny --workdir=/tmp/ft \\
        --config.init_from=/tmp/vbridge_prior_model
"""

from __future__ import annotations

import ml_collections

from vbridge_jax.configs import curriculum


def base_config() -> ml_collections.ConfigDict:
  """The tiny prior (module docstring)."""
  c = curriculum.get_config("tiny_wan")  # the CPU settings of the tiny runs
  # The tiny fine-tune's architecture (it reads it from the exported prior): a wide, shallow
  # DiT on the lossless pixel codec (configs/curriculum.py:tiny says why).
  c.model.dit_overrides = ml_collections.ConfigDict(dict(dim=384, ffn_dim=768, num_heads=2,
                                                         num_layers=2))
  c.model.vae = "pixel"
  c.model.vae_overrides = ml_collections.ConfigDict()
  c.data.source = "video_corpus"
  c.data.still = 0.0  # the corpus has its own still shots
  c.data.flips = False
  c.data.balance = False
  c.flow.t2v_ratio = 0.5  # Wan2.2's mix: text-to-video and image-to-video
  c.flow.loss_frames = "generated"
  c.flow.shift = 5.0
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 20
  # 64 px only: the DiT is translation-equivariant (RoPE), a 64-px prior reproduces 128-px
  # photos, and a 128-px step costs 4x (measured: reproduction ceiling 28.5 dB at 128 px after
  # 1500 steps at 64, 21.6 after 900 at 64 + 300 at 128 on a corpus with larger motions).
  c.total_steps = 1500
  c.stages = "64"
  c.eval.source = ""  # a prior knows nothing of the restoration task's data
  c.checkpoint.every_steps = 200
  c.log_every = 20
  c.samples.every_steps = -1
  return c


def test(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The learning test's prior: 32 px, shorter."""
  c.stages = "32"
  c.total_steps = 400
  c.data.batch_size = 8
  return c


VARIANTS = {"": lambda c: c, "tiny": lambda c: c, "test": test}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/prior.py; one of "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return VARIANTS[arg](base_config())
