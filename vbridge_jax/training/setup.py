"""Builds what the trainer needs from a config: stages, models, optimizer, prompts, data.

Kept apart from `trainer.py` (the loop) so that benchmarks and tests can build the same
sharded state without running a schedule.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from vbridge_jax.checkpoints import io, load_vae, loading
from vbridge_jax.data import fewshot, pipeline, prompts, video_corpus
from vbridge_jax.diffusion import flow, sampler
from vbridge_jax.models import lora as lora_lib
from vbridge_jax.models.configs import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, DiTConfig, VAEConfig
from vbridge_jax.models.pixel_codec import PixelCodec, PixelCodecConfig, read_config
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.models.wan_vae import POSTERIOR_UNITS, WanVAE, sample_posterior
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.training import optim
from vbridge_jax.training import prior as prior_lib
from vbridge_jax.utils.errors import ConfigError

FINETUNE = ("full", "lora")
# configs/drift.py: the corrector starts from the backbone (the paper) or the trained base.
DRIFT_INITS = ("backbone", "base")


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  size: int
  start: int  # first step (inclusive)
  end: int  # last step (exclusive)


def parse_stages(spec: str, total_steps: int, multiple: int | None = None) -> list[Stage]:
  """`"512,720,960"` or `"512:1,720:2"` -> stages covering `[0, total_steps)` by share.

  `multiple`: the model's pixel multiple (`pixel_multiple(config)`); each stage must hold
  at least one crop of it."""
  if total_steps < 1:
    raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
  sizes, shares = [], []
  for part in str(spec).split(","):
    part = part.strip()
    if not part:
      continue
    size, _, share = part.partition(":")
    try:
      sizes.append(int(size))
      shares.append(float(share) if share else 1.0)
    except ValueError as e:
      raise ConfigError(f"bad stage {part!r} in stages={spec!r} (want size[:share],...)") from e
  if not sizes:
    raise ConfigError(f"stages={spec!r} names no stage")
  if any(s < 1 for s in sizes) or any(w <= 0 for w in shares):
    raise ConfigError(f"stage sizes and shares must be positive: stages={spec!r}")
  for s in sizes:
    crop_size(s, multiple)  # fails fast on a stage too small for the model
  bounds = np.rint(np.cumsum(shares) / sum(shares) * total_steps).astype(int)
  starts = [0] + list(bounds[:-1])
  stages = [Stage(i, sizes[i], int(a), int(b)) for i, (a, b) in enumerate(zip(starts, bounds))]
  if any(s.end <= s.start for s in stages):
    raise ConfigError(f"total_steps={total_steps} is too small for stages={spec!r}")
  return stages


def total_steps(config, source: str) -> int:
  """`config.total_steps` when > 0; otherwise `config.epochs` passes over the training pairs
  of `source` at the global batch: epochs x ceil(pairs / batch_size), as the authors'
  script counts an epoch (one clip per GPU, no dropped remainder). The paper's 300 epochs
  over 21 x 50 pairs at batch 8: 300 x 132 = 39,600 steps."""
  if int(config.total_steps) > 0:
    return int(config.total_steps)
  epochs = int(config.get("epochs", 0))
  if epochs < 1:
    raise ConfigError(f"set total_steps or epochs (both are <= 0: total_steps="
                      f"{config.total_steps}, epochs={config.get('epochs', 0)})")
  pairs = len(pipeline.open_records(source, data_dir=config.data.data_dir or None))
  return epochs * -(-pairs // int(config.data.batch_size))


def stage_at(stages: list[Stage], step: int) -> Stage:
  for s in stages:
    if step < s.end:
      return s
  return stages[-1]


# ------------------------------------------------------------------------------- models


def _runtime(config) -> dict[str, Any]:
  m = config.model
  return dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, scan_layers=m.scan_layers,
              attention=m.attention)


def dit_config(config) -> DiTConfig:
  if prior_lib.is_prior(config.init_from):  # the prior's architecture, without building it
    return dit_config(prior_lib.prior_config(prior_lib.variant_of(config.init_from)))
  if config.init_from:
    folder = io.find_component(Path(config.init_from), "dit")
    return DiTConfig.from_dict(io.read_component_config(folder), **_runtime(config))
  presets = {"ti2v_5b": DiTConfig.ti2v_5b, "tiny": DiTConfig.tiny}
  if config.model.dit not in presets:
    raise ConfigError(f"model.dit={config.model.dit!r} is not one of {', '.join(presets)}")
  # A random DiT reads and writes the codec's latent channels (48 for wan22 and the pixel
  # codec, 8 for the tiny VAE); dit_overrides still win.
  z_dim = vae_config(config).z_dim
  overrides = dict(in_channels=z_dim, out_channels=z_dim) | dict(config.model.get("dit_overrides") or {})
  return presets[config.model.dit](**(_runtime(config) | overrides))


VAE_PRESETS = ("wan22", "tiny", "pixel")


def vae_config(config) -> VAEConfig | PixelCodecConfig:
  """The frozen codec's config: `init_from`'s `vae/` (a converted WanVAE or a PixelCodec),
  else the `model.vae` preset (`wan22`, `tiny`: random WanVAE; `pixel`: the PixelCodec,
  `model.vae_overrides` may set its `patch`, `temporal`, `scale`)."""
  rt = dict(dtype=config.model.vae_dtype)
  overrides = dict(config.model.get("vae_overrides") or {})
  if prior_lib.is_prior(config.init_from):
    return vae_config(prior_lib.prior_config(prior_lib.variant_of(config.init_from)))
  if config.init_from:
    pixel = read_config(config.init_from)
    if pixel is not None:
      return pixel
    folder = io.find_component(Path(config.init_from), "vae")
    return VAEConfig.from_dict(io.read_component_config(folder), **rt)
  if config.model.vae not in VAE_PRESETS:
    raise ConfigError(f"model.vae={config.model.vae!r} is not one of {', '.join(VAE_PRESETS)}")
  if config.model.vae == "pixel":
    try:
      return PixelCodecConfig.from_dict(overrides)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"model.vae_overrides={overrides} for the pixel codec: {e}") from None
  presets = {"wan22": VAEConfig.wan22, "tiny": VAEConfig.tiny}
  return presets[config.model.vae](**(rt | overrides))


def lora_targets(config) -> list[str]:
  """`config.lora.targets` ("q, k" or "q,k,v,o,ffn") as the list of target roles.

  The one parser for setup, flops and the trainer: spaces are stripped, empty parts
  dropped, and an unknown role is a ConfigError naming the known ones.
  """
  spec = str(config.lora.targets)
  targets = [t.strip() for t in spec.split(",") if t.strip()]
  unknown = [t for t in targets if t not in lora_lib.TARGETS]
  if unknown or not targets:
    raise ConfigError(f"lora.targets={spec!r}: {'unknown ' + ', '.join(map(repr, unknown)) if unknown else 'names no target'}"
                      f" (the targets are {', '.join(lora_lib.TARGETS)}, comma-separated)")
  return targets


def _positive(config, *names: str) -> None:
  for name in names:
    node = config
    for part in name.split("."):
      node = node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool) or node < 1:
      raise ConfigError(f"{name}={node!r} must be a number >= 1")


def objective(config) -> tuple[float, float, str]:
  """`(data.text_drop, flow.t2v_ratio, flow.loss_frames)`, checked (one-line ConfigError)."""
  text_drop = float(config.data.get("text_drop", 0.0))
  t2v_ratio = float(config.flow.get("t2v_ratio", 0.0))
  loss_frames = str(config.flow.get("loss_frames", "generated"))
  for name, v in (("data.text_drop", text_drop), ("flow.t2v_ratio", t2v_ratio)):
    if not 0.0 <= v <= 1.0:
      raise ConfigError(f"{name}={v} is not in [0, 1]")
  if loss_frames not in flow.LOSS_FRAMES:
    raise ConfigError(f"flow.loss_frames={loss_frames!r} is not one of "
                      f"{', '.join(flow.LOSS_FRAMES)}")
  return text_drop, t2v_ratio, loss_frames


def _number(config, name: str, low: float, high: float = math.inf, *, low_open: bool = False,
            integer: bool = False) -> None:
  """`name` (dotted, if present) is a finite number in [low, high] (`low_open`: > low)."""
  node, *rest = name.split(".")
  parent = config[node] if rest else config
  key = rest[0] if rest else node
  if key not in parent:
    return
  v = parent[key]
  kind = "a whole number" if integer else "a number"
  if (isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and v != int(v))
      or not math.isfinite(v) or v < low or (low_open and v == low) or v > high):
    where = f"> {low:g}" if low_open else f">= {low:g}"
    raise ConfigError(f"{name}={v!r} must be {kind} {where}" +
                      (f" and <= {high:g}" if math.isfinite(high) else ""))


def check_fields(config) -> None:
  """The optimiser, flow, model and sampler fields that used to fail only once the state was
  built (after `config.json` was written), each with a one-line ConfigError."""
  _number(config, "optim.lr", 0, low_open=True)
  _number(config, "optim.warmup_steps", 0, integer=True)
  _number(config, "optim.weight_decay", 0)
  _number(config, "optim.b1", 0, 1)
  _number(config, "optim.b2", 0, 1)
  _number(config, "optim.eps", 0, low_open=True)
  _number(config, "optim.clip_norm", 0, low_open=True)
  _number(config, "optim.clip_warmup_steps", 0, integer=True)
  for k in ("clip_initial_ratio", "clip_spike_ratio", "clip_max_shrink"):
    _number(config, f"optim.{k}", 1)
  _choice(config, "optim.clip_schedule", "constant", optim.CLIP_SCHEDULES)
  _number(config, "flow.shift", 0, low_open=True)
  _choice(config, "flow.sampling", "uniform", flow.SAMPLING_KINDS)
  _choice(config, "flow.weighting", "none", flow.WEIGHTINGS)
  for k in ("dtype", "param_dtype", "vae_dtype"):
    _choice(config, f"model.{k}", "float32", DTYPES)
  _choice(config, "model.remat", "none", REMAT_POLICIES)
  _choice(config, "model.attention", "xla", ATTENTION_IMPLS)
  for block in ("eval", "samples"):
    try:
      sampler.sampler_config(config[block])
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{block}.{e}") from None


def _choice(config, name: str, default: str, allowed: tuple[str, ...]) -> str:
  node, *rest = name.split(".")
  value = (config[node] if rest else config).get(rest[0] if rest else node, default)
  if value not in allowed:
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
  return value


def _flag(config, name: str) -> bool:
  node, *rest = name.split(".")
  value = (config[node] if rest else config).get(rest[0] if rest else node, False)
  if not isinstance(value, bool):
    raise ConfigError(f"{name}={value!r} must be True or False")
  return value


def check_fidelity_fields(config) -> None:
  """The fields of docs/fidelity.md's second pass: `vae_sample_units`,
  `vae_sample_independent_cond`, `flow.dtype`, `optim.restart_per_stage`."""
  _choice(config, "vae_sample_units", "normalized", POSTERIOR_UNITS)
  _flag(config, "vae_sample_independent_cond")
  _choice(config, "flow.dtype", "float32", flow.DTYPES)
  _flag(config, "optim.restart_per_stage")


def encode_clips(vae, x: jax.Array, key: jax.Array, *, sample: bool, units: str = "normalized",
                 independent_cond: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """The normalised latents of clips `x (B, T, S, S, 3)` for a step: `(x0, cond)`.

  `x0` is the target; `cond` `(B, 1, h, w, C)` the conditioning frame 0 of TI2V samples, or
  None for `x0[:, :1]`. `sample` False (or a codec without a posterior): the posterior
  mean. `sample` True: a posterior draw (`fold_in(key, 11)`) in `units`
  (`models.wan_vae.sample_posterior`); with `independent_cond`, `cond` is a second,
  independent draw (`fold_in(key, 12)`) from frame 0's posterior, as the authors encode the
  conditioning clip with its own `.sample()` (train.py:1729). The causal encoder gives
  frame 0 the same posterior alone as at the head of the clip, so the clip's frame-0
  moments are reused.
  """
  if not (sample and hasattr(vae, "encode_posterior")):  # a pixel codec has no posterior
    return jax.lax.stop_gradient(vae.normalize(vae.encode(x))), None
  mean, logvar = vae.encode_posterior(x)
  x0 = sample_posterior(mean, logvar, jax.random.fold_in(key, 11), normalize=vae.normalize,
                        units=units)
  cond = None
  if independent_cond:
    cond = sample_posterior(mean[:, :1], logvar[:, :1], jax.random.fold_in(key, 12),
                            normalize=vae.normalize, units=units)
    cond = jax.lax.stop_gradient(cond)
  return jax.lax.stop_gradient(x0), cond


def pixel_multiple(config) -> int:
  """Clip sides must be multiples of this: the codec's spatial factor x the DiT's patch
  (16 x 2 = 32 for Wan2.2, 4 x 2 = 8 for the pixel codec)."""
  return _multiple(dit_config(config), vae_config(config))


def _multiple(dcfg: DiTConfig, vcfg: VAEConfig | PixelCodecConfig) -> int:
  return vcfg.scale_factor_spatial * max(dcfg.patch_size[1:])


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked training config resolved once (`plan`): the model configs (with `init_from`
  read once), the objective and the geometry that the trainer's parts read, instead of
  re-deriving them from the raw config."""

  dit: DiTConfig
  codec: VAEConfig | PixelCodecConfig
  text_drop: float
  t2v_ratio: float
  loss_frames: str
  multiple: int  # clip sides are multiples of this (`pixel_multiple`)
  latent_frames: int
  lora_targets: tuple[str, ...]

  def crop(self, size: int) -> int:
    """The square training crop of a stage of `size` px."""
    return crop_size(size, self.multiple)

  def tokens(self, crop: int) -> int:
    """DiT tokens of one `crop x crop` clip (codec and patch geometry)."""
    side, (pt, ph, pw) = crop // self.codec.scale_factor_spatial, self.dit.patch_size
    return (self.latent_frames // pt) * (side // ph) * (side // pw)


def plan(config) -> Plan:
  """The `Plan` of a config that `check_config` accepted."""
  dcfg, vcfg = dit_config(config), vae_config(config)
  text_drop, t2v_ratio, loss_frames = objective(config)
  return Plan(dit=dcfg, codec=vcfg, text_drop=text_drop, t2v_ratio=t2v_ratio,
              loss_frames=loss_frames,
              multiple=_multiple(dcfg, vcfg),
              latent_frames=1 + (int(config.data.frames) - 1) // vcfg.scale_factor_temporal,
              lora_targets=tuple(lora_targets(config)))


def check_config(config) -> None:
  """Fails fast, with one line, on a config that cannot run (before anything is built).

  Needs no devices; `check_devices` checks the mesh and batch against them.
  """
  if config.finetune not in FINETUNE:
    raise ConfigError(f"finetune={config.finetune!r} is not one of {', '.join(FINETUNE)}")
  _positive(config, "data.batch_size", "data.frames", "log_every", "checkpoint.every_steps")
  if (int(config.data.frames) - 1) % 4:
    raise ConfigError(f"data.frames={config.data.frames} must be 1 + a multiple of 4 (5, 9, ...)")
  if int(config.total_steps) > 0:
    parse_stages(config.stages, int(config.total_steps))
  elif int(config.get("epochs", 0)) > 0:  # the length comes from the data: the spec alone
    parse_stages(config.stages, 1 << 30)
  else:
    raise ConfigError(f"total_steps={config.total_steps} must be >= 1" +
                      (f" (or set epochs, now {config.epochs})" if "epochs" in config else ""))
  lora_targets(config)
  objective(config)
  check_fields(config)
  check_fidelity_fields(config)
  if int(config.lora.rank) < 1:
    raise ConfigError(f"lora.rank={config.lora.rank!r} must be >= 1")
  try:
    sh.rules_from_config(config.logical_axis_rules)
  except ValueError as e:
    raise ConfigError(f"logical_axis_rules: {e}") from None
  profile = config.get("profile")
  if profile is not None and int(profile.start_step) >= 0 and (
      int(profile.stop_step) < int(profile.start_step)):
    raise ConfigError(f"profile.stop_step={profile.stop_step} is before profile.start_step="
                      f"{profile.start_step}")
  if not config.init_from and not config.random_init:
    raise ConfigError(
        "config.init_from is empty: point it at a converted Wan2.2-TI2V-5B checkpoint "
        "(python convert/wan_to_jax.py --src PATH --out DIR; --config.init_from=DIR), or "
        "use --config=configs/curriculum.py:tiny for the random-weight demo")
  if prior_lib.is_prior(config.init_from):
    prior_lib.prior_config(prior_lib.variant_of(config.init_from))  # a known variant
  elif config.init_from and not Path(config.init_from).exists():
    raise ConfigError(f"config.init_from={config.init_from!r} does not exist")
  src = config.data.source
  if not src:
    raise ConfigError("config.data.source is empty: give paired folders "
                      "(<category>/{LQ,GT}/<id>.<ext>), a prepared TFDS set, 'demo' or "
                      f"'{video_corpus.SOURCE_NAME}'")
  if src == video_corpus.SOURCE_NAME and int(config.total_steps) < 1:
    raise ConfigError(f"data.source={src!r} is endless: set total_steps (epochs do not apply)")
  if src not in ("demo", video_corpus.SOURCE_NAME) and not config.data.data_dir and not Path(src).exists():
    raise ConfigError(f"config.data.source={src!r} does not exist")
  if config.get("drift", False) and not config.data.drift_outputs:
    raise ConfigError("config.data.drift_outputs is empty: restore the corrector's pairs "
                      "(data.source) with the base model first (python -m vbridge_jax.restore ...)")
  if config.get("drift", False):
    _choice(config, "drift_init", "backbone", DRIFT_INITS)
  if config.prompts and not Path(config.prompts).is_file():
    raise ConfigError(f"config.prompts={config.prompts!r} is not a file "
                      "(make one with convert/encode_prompts.py)")
  if not config.prompts and not config.random_init:
    raise ConfigError("config.prompts is empty: the fine-tune needs the umT5 prompt "
                      "embeddings (python convert/encode_prompts.py --out FILE.npz)")


def check_devices(config) -> list:
  """The devices the run uses, once the mesh and batch are checked against them."""
  devices = jax.devices()
  n = int(config.get("num_devices", 0))
  if n > len(devices):
    raise ConfigError(f"num_devices={n} but only {len(devices)} devices are present")
  devices = devices[:n] if n > 0 else devices
  try:
    shape = dict(zip(sh.MESH_AXES, sh.mesh_shape(dict(config.mesh), len(devices))))
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from None
  shards = shape["data"] * shape["fsdp"]
  if int(config.data.batch_size) % shards:
    raise ConfigError(f"data.batch_size={config.data.batch_size} is not divisible by the "
                      f"{shards} data x fsdp shards of the mesh {shape}")
  return devices


def state_builder(config, the_plan: Plan | None = None):
  """`(build, DiT config, codec config, trainable filter, lr schedule)`: the one builder of
  the trainer's state. `build()` makes the DiT (+ LoRA, seeded from `config.seed`) and its
  optimizer; `build_state` runs it sharded, `vbridge_jax.aot` under `nnx.eval_shape`."""
  the_plan = plan(config) if the_plan is None else the_plan
  dcfg, vcfg = the_plan.dit, the_plan.codec
  tx, schedule = optim.make_optimizer(config.optim)
  wrt = nnx.LoRAParam if config.finetune == "lora" else nnx.Param
  seed = int(config.seed)

  def build():
    model = WanDiT(dcfg, rngs=nnx.Rngs(params=seed))
    if config.finetune == "lora":
      lora_lib.apply_lora(model, rank=int(config.lora.rank), alpha=float(config.lora.alpha),
                          targets=list(the_plan.lora_targets), seed=seed + 1)
    return model, nnx.Optimizer(model, tx, wrt=wrt)

  return build, dcfg, vcfg, wrt, schedule


def build_state(config, mesh, rules, the_plan: Plan | None = None
                ) -> tuple[WanDiT, nnx.Optimizer, WanVAE | PixelCodec, Any]:
  """The DiT (+ LoRA) and its optimizer, born sharded; the frozen codec; the lr schedule."""
  build, _, vcfg, _, schedule = state_builder(config, the_plan)
  seed = int(config.seed)
  model, opt = sh.create_sharded(build, mesh, rules)
  if config.init_from:
    # Straight into the live model's shardings (each process reads only its chunks); LoRA's
    # `base` level is matched to the plain model's paths, the adapters keep their init.
    folder = io.find_component(Path(config.init_from), "dit")
    nnx.update(model, loading.read_into(folder, nnx.state(model, nnx.Not(nnx.LoRAParam))))
    vae = load_vae(config.init_from, dtype=config.model.vae_dtype)
  elif isinstance(vcfg, PixelCodecConfig):
    vae = PixelCodec(vcfg)
  else:
    vae = random_vae(vcfg, seed + 2)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  graphdef, vstate = nnx.split(vae)
  vae = nnx.merge(graphdef, jax.device_put(vstate, replicated))
  return model, opt, vae, schedule


def random_vae(vcfg: VAEConfig, seed: int) -> WanVAE:
  """A random frozen VAE drawn on the host, with WanVAE's init distributions.

  Conv kernels ~ N(0, 1 / fan_in), biases 0, norm scales 1. Drawing with numpy avoids
  compiling one XLA initializer per convolution (minutes on a small CPU for a VAE that
  is never trained).
  """
  abstract = nnx.eval_shape(lambda: WanVAE(vcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  updates = []
  for path, var in nnx.to_flat_state(state):
    shape, dtype = var.get_value().shape, var.get_value().dtype
    name = str(path[-1])
    if name == "kernel":
      value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
    elif name == "bias":
      value = np.zeros(shape, np.float32)
    else:
      value = np.ones(shape, np.float32)
    updates.append((path, var.replace(jnp.asarray(value, dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(updates))


def load_context(config, dcfg: DiTConfig) -> np.ndarray:
  """`(2, L, text_dim)` float32 text contexts: row 0 the positive prompt, row 1 the empty
  prompt (for `data.text_drop`); zeros without a prompt file (random-weight runs)."""
  need_empty = float(config.data.get("text_drop", 0.0)) > 0 and bool(config.prompts)
  try:
    return prompts.training_context(config.prompts or None, dcfg.text_dim, dcfg.text_len,
                                    need_empty=need_empty)
  except prompts.PromptError as e:
    raise ConfigError(f"config.prompts: {e}") from None


def load_negative(config, dcfg: DiTConfig) -> np.ndarray:
  """The negative prompt's `(L, text_dim)` embedding for guided sampling (the held-out
  evaluation); zeros without a prompt file or without a `negative` array in it."""
  if not config.prompts:
    return np.zeros((dcfg.text_len, dcfg.text_dim), np.float32)
  try:
    found = prompts.load(config.prompts, dcfg.text_dim, keys=(), text_len=dcfg.text_len,
                         optional=("negative",))
  except prompts.PromptError as e:
    raise ConfigError(f"config.prompts: {e}") from None
  return found.get("negative", np.zeros((dcfg.text_len, dcfg.text_dim), np.float32))


# --------------------------------------------------------------------------------- data


def data_source(config, workdir: str) -> str:
  """The training data path; 'demo' builds the built-in few-shot set into the workdir and
  trains on its `train/` split (`heldout/`: `demo_split(..., "heldout")`); the synthetic
  video corpus's name stays as it is (`data/pipeline.py` renders it)."""
  if config.data.source != "demo":
    return config.data.source
  return demo_split(config, workdir, "train")


def demo_split(config, workdir: str, split: str) -> str:
  """`WORKDIR/demo_data/<split>` (train | heldout), built on first use (process 0; the
  others wait): `data.demo_per_category` training and `data.demo_heldout` held-out pairs
  per category, from disjoint photos (data/fewshot.py), degraded at the size they are
  evaluated at (`eval.size` when > 0, else fewshot's default). The marker
  `demo_data/.complete_split` records these settings (JSON); a set built with others (or
  an older, empty marker) is rebuilt, not reused."""


  out = os.path.join(workdir, "demo_data")  # the flat pre-split layout had `.complete`
  size = int(config.get("eval", {}).get("size", 0) or 0)
  if jax.process_index() == 0:
    fewshot.build_once(out, per_category=int(config.data.get("demo_per_category", 4)),
                       heldout=max(1, int(config.data.get("demo_heldout", 2))),
                       seed=int(config.seed), size=size if size > 0 else fewshot.DEFAULT_SIZE,
                       progress=bool(config.get("progress", True)))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("demo_data")
  return os.path.join(out, split)


# The Wan2.2 VAE downsamples 16x and the DiT patches latents 2x2: 32 pixels. Other codecs:
# `pixel_multiple(config)`.
PIXEL_MULTIPLE = 32


def crop_size(size: int, multiple: int | None = None) -> int:
  """The square crop of a stage: its size rounded down to a multiple of `multiple`
  (`pixel_multiple(config)`; default 32: 720 -> 704; the short side is still resized to the
  stage size, as the paper's stages state)."""
  multiple = int(multiple or PIXEL_MULTIPLE)
  crop = size // multiple * multiple
  if crop < multiple:
    raise ConfigError(f"stage size {size} is below {multiple} pixels")
  return crop


def make_iterator(config, source: str, stage: Stage, mesh, crop: int) -> Any:
  """A checkpointable grain iterator of global batches for one curriculum stage, cut to
  `crop` (`Plan.crop`; the batch's divisibility over the mesh: `check_devices`)."""
  d = config.data
  return pipeline.make_iterator(
      source, size=stage.size, crop=crop, frames=int(d.frames),
      global_batch_size=int(d.batch_size),
      seed=int(config.seed) + 1000 * stage.index, data_dir=d.data_dir or None,
      sharding=sh.batch_sharding(mesh, 5), flips=bool(d.flips), balance=bool(d.balance),
      still=float(d.get("still", 0.0)),
      drift_outputs=d.drift_outputs or None, allow_upscale=bool(d.allow_upscale),
      worker_count=int(d.workers))
