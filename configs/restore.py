"""Restoring with V-Bridge: the authors' released inference settings, and a tiny-model check.

Variants (`--config configs/restore.py:VARIANT`):

- (none): the released test code (reference/vbridge_paper.md, "Inference"): 5 frames,
  flow UniPC with Wan's schedule, 50 steps, shift 5, guidance 6.0 with the last 15% of
  the steps unguided, bf16 DiT compute, seed 43. `model`, `prompts`, `input` and `output`
  must be given (flags or `--config.KEY=VALUE`); `drift` optionally.
- `tiny`: the random model from `convert/tiny_repo.py` on a CPU: float32 compute and
  4 steps (the output is noise; this checks the wiring in a minute).

Launch:

    python -m vbridge_jax.restore --config configs/restore.py --model wan22 \\
        --prompts prompts.npz --input FoundIR/test --output restored [--drift DRIFT_DIR]
    python -m vbridge_jax.restore --config configs/restore.py:tiny --model tiny \\
        --prompts tiny/prompts.npz --input demo --output restored_tiny

Command-line flags override these values; every flag of `vbridge_jax.restore` is a key here
(`cfg_skip` for `--cfg-skip`).
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in ("", "tiny"):
    raise ValueError(f"unknown variant {arg!r} of configs/restore.py; one of '', 'tiny'")
  c = ml_collections.ConfigDict()
  c.model = ""  # converter output with dit/ and vae/ (convert/wan_to_jax.py)
  c.drift = ""  # converted drift-corrector DiT; empty: none
  c.prompts = ""  # .npz from convert/encode_prompts.py
  c.input = ""  # an image or a folder tree
  c.output = ""  # output folder: PNGs at the same relative paths
  c.frames = 5
  c.steps = 50
  c.guidance = 6.0
  c.cfg_skip = 0.15
  c.shift = 5.0
  c.solver = "unipc"
  c.schedule = "wan"
  c.seed = 43
  c.batch = 0  # images per batch; 0: the local device count
  c.dtype = "bfloat16"
  c.overwrite = False
  if arg == "tiny":
    c.steps = 4
    c.dtype = "float32"  # bf16 matmuls are slow on CPUs
  return c
