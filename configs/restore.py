"""Restoring with V-Bridge: the authors' released inference settings, and a tiny-model check.

Variants (`--config=configs/restore.py:VARIANT`):

- (none): the sampler fields (`solver`, `steps`, `shift`, `schedule`, `guidance`,
  `cfg_skip`), `seed`, `dtype`, `param_dtype`, `vae_dtype` and `quantize` are unset (None):
  a value given here or on the command line wins, else the one the model folder's
  `model.json` records (`evaluated_with`: how the trainer's held-out evaluation restored
  it, written by `python -m vbridge_jax.export`), else the authors' released test code:
  flow UniPC with Wan's schedule, 50 steps, shift 5, guidance 6.0 with the last 15% of the
  steps unguided (`vbridge_jax.diffusion.sampler.SamplerConfig`'s defaults, the one source of them),
  seed 43, the DiT in bf16 (params and compute, as their inference casts it), the VAE as
  its folder stores it, truncation to uint8 (`vbridge_jax.inference.folder.resolve_settings`).
  The frame count is the model folder's (`model.json`; 5, as their eval.sh, when it
  records none). `model`, `prompts`, `input` and `output` must be
  given; `drift` optionally. One image per device, weights replicated (`mesh.data=-1`); for
  a model that does not fit one chip, `--config.mesh.data=1 --config.mesh.fsdp=-1` (FSDP), or
  a `tensor` axis, exactly as in training.
  `precision = "authors"` adds the authors' bf16 inference numerics (VAE, latents between
  steps, initial noise, per-token timesteps, decoded frames: `sampler.Numerics.authors()`;
  an explicit `vae_dtype` still wins); the default "float32" rounds none of them.
- `tiny`: the random model from `convert/tiny_repo.py` on a CPU: float32 and 4 steps (the
  output is noise; this checks the wiring in a minute).

Launch:

    python -m vbridge_jax.restore --config=configs/restore.py --config.model=wan22 \\
        --config.prompts=prompts.npz --config.input=FoundIR/test --config.output=restored
    python -m vbridge_jax.restore --config=configs/restore.py:tiny --config.model=tiny \\
        --config.prompts=tiny/prompts.npz --config.input=demo --config.output=restored_tiny

On several hosts every host runs the same command (`distributed.*` as in training).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vbridge_jax.configs import curriculum

# Unset (None) unless given: resolved by vbridge_jax/inference/folder.py (flag > model.json > default).
UNSET = dict(solver=str, steps=int, shift=float, schedule=str, guidance=float, cfg_skip=float,
             seed=int, dtype=str, param_dtype=str, vae_dtype=str, quantize=str)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ""  # required: converter output with dit/ and vae/ (convert/wan_to_jax.py)
  c.drift = ""  # converted drift-corrector DiT; empty: none
  c.prompts = ""  # required: .npz from convert/encode_prompts.py
  c.input = ""  # required: an image or a folder tree
  c.output = ""  # required: output folder, PNGs at the same relative paths
  c.frames = 0  # clip length 1 + 4k; 0: the model folder's model.json (5 without one)
  c.drift_frames = 0  # the corrector's; 0: its own folder's model.json
  # solver, steps, shift, schedule, guidance, cfg_skip; seed; dtype (DiT compute),
  # param_dtype (DiT and corrector weights as held: bf16 halves the memory), vae_dtype (the
  # Wan VAE's compute), quantize (frames to uint8: truncate, as the authors' x * 255 | round).
  for name, kind in UNSET.items():
    setattr(c, name, config_dict.placeholder(kind))
  # "float32" | "authors": bf16 VAE, latents, noise, timesteps and frames (sampler.Numerics)
  c.precision = "float32"
  c.batched_cfg = False  # guided steps as one forward of batch 2B (sampler.SamplerConfig)
  c.batch = 0  # global images per batch; 0: one per data x fsdp shard
  c.video = False  # also write each sample's frames as <name>.mp4 (imageio defaults, 24 fps)
  c.overwrite = False  # restore images whose output exists
  c.progress = True
  # The run's mesh, exactly as in training; one image per device, weights replicated.
  curriculum.add_scale_fields(c, data=-1, fsdp=1)
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.steps = 4
  c.dtype = "float32"  # bf16 matmuls are slow on CPUs
  c.param_dtype = "float32"
  return c


VARIANTS = {"": lambda c: c, "tiny": tiny}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/restore.py; one of "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return VARIANTS[arg](base_config())
