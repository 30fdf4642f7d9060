"""Ahead-of-time compilation of the training and restore steps for a TPU topology, on any host.

    python -m vbridge_jax.aot --config=configs/curriculum.py --topology=v5p-64 --size=960 \
        [--steps=train,restore] [--batch=0] [--frames=9] [--config.mesh.context=4 ...]

`--topology` is a slice name (`v5p-64`, `v6e-256`, `v5e-16`, `v4-32`; v4/v5p count
TensorCores, two per chip) or a chip grid (`v5p:2x4x4`, `v6e:16x16`). libtpu (the `[tpu]`
extra: `pip install 'vbridge_jax[tpu]'`) describes the topology's devices without any TPU
attached (`jax.experimental.topologies`); the step is lowered over abstract, sharded inputs
(`jax.ShapeDtypeStruct`s on a mesh of those devices; the 5B parameters are never created)
and compiled by XLA:TPU. The training step is the trainer's own (`trainer.make_train_step`:
VAE encode, flow-matching TI2V inputs, DiT, masked MSE, AdamW), at `--size` px with
`--frames` frames and one clip per data x fsdp shard unless `--batch` says otherwise; the
restore step is the restore command's own (`restorer.sample_step`: the UniPC loop with CFG
and `SamplerConfig`'s defaults, from frame-0 latents; with `--vae`, `restorer.restore_step`:
encode, that loop, decode), at `--restore_size=704x1280`, `--restore_frames=5`, with the
DiT's params as `--config.model.param_dtype` holds them. The DiT runs splash attention on TPU.

The table gives, per chip: XLA's argument / output / temp memory and the peak against the
chip's HBM (the peak includes the frozen VAE's replicated parameters, which the trainer
keeps on every chip also when the step runs on cached latents);
XLA's cost-analysis FLOPs beside the analytic count (`vbridge_jax.parallel.flops`); and the step
time a roofline gives (the larger of the analytic hardware FLOPs, remat included, at the
chip's peak bf16 rate and XLA's bytes accessed at its HBM bandwidth), with the MFU that time
implies (communication not modelled, so both are bounds). XLA's cost analysis counts the
body of the layer `lax.scan` once and does not see into Pallas kernels (splash attention),
so its FLOPs are not the step's (about a layer's worth plus the rest) and its bytes
understate the traffic: in practice the roofline is the compute bound, and the
analytic count is the one to trust.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from jax.experimental import topologies
from ml_collections import config_flags

from vbridge_jax.diffusion.sampler import SamplerConfig, guided_steps
from vbridge_jax.inference import restorer
from vbridge_jax.models import layers
from vbridge_jax.models.wan_vae import WanVAE
from vbridge_jax.parallel import flops
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.training import setup
from vbridge_jax.training.trainer import make_train_step
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import AOTError, VBridgeError

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice (v5p-64) or chip grid (v5p:2x4x4)")
_SIZE = flags.DEFINE_integer("size", 0, "training crop size in px (0: the last curriculum stage)")
_FRAMES = flags.DEFINE_integer("frames", 0, "clip frames (0: config.data.frames)")
_HW = flags.DEFINE_string("hw", "", "training clip HxW, overriding --size (e.g. 704x1280)")
_BATCH = flags.DEFINE_integer("batch", 0, "global batch (0: one clip per data x fsdp shard)")
_STEPS = flags.DEFINE_list("steps", ["train", "restore"], "which steps: train, restore")
_RESTORE_SIZE = flags.DEFINE_string("restore_size", "704x1280", "restore working size HxW")
_RESTORE_FRAMES = flags.DEFINE_integer("restore_frames", 5, "restore clip frames (1 + 4k)")
_VAE = flags.DEFINE_bool("vae", False, "compile the VAE into the steps (the trainer's own step; "
                         "XLA:TPU takes very long on the VAE's convolutions)")
_JSON = flags.DEFINE_string("json", "", "append one JSON line per compiled step to this file")


# ------------------------------------------------------------------------------ topologies

_GENERATIONS = {  # name -> (libtpu prefix, chip config, dims, TensorCores per chip in names)
    "v4": ("v4", "megacore", 3, 2), "v5p": ("v5p", "megacore", 3, 2),
    "v5e": ("v5e", "default", 2, 1), "v6e": ("v6e", "default", 2, 1),
}
_GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: str  # v4 | v5p | v5e | v6e
  grid: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def name(self) -> str:
    return f"{self.generation}:{'x'.join(map(str, self.grid))}"

  @property
  def spec(self) -> flops.DeviceSpec:
    return flops.DEVICES[self.generation]


def parse_topology(text: str) -> Topology:
  """`v5p-64` (slice name) or `v5p:2x4x4` (chip grid) -> Topology."""
  t = text.strip().lower().replace("v5litepod", "v5e")
  gen, sep, rest = t.partition(":")
  if not sep:
    gen, sep, rest = t.partition("-")
  if gen == "v5":
    gen = "v5p"
  if gen not in _GENERATIONS or not sep or not rest:
    raise AOTError(f"unknown topology {text!r}: use a slice name (v5p-64, v6e-256, v5e-16, v4-32) "
                   f"or a chip grid (v5p:2x4x4, v6e:16x16); generations {', '.join(_GENERATIONS)}")
  _, _, ndim, cores = _GENERATIONS[gen]
  try:
    if sep == ":":
      grid = tuple(int(x) for x in rest.split("x"))
    else:
      n = int(rest)
      if n % cores:
        raise ValueError
      grid = (_GRIDS_3D if ndim == 3 else _GRIDS_2D)[n // cores]
  except (ValueError, KeyError):
    raise AOTError(f"unknown topology {text!r}: no standard {gen} slice of that size; "
                   f"give the chip grid, e.g. {gen}:{'x'.join(['2'] * ndim)}") from None
  if len(grid) != ndim or min(grid) < 1:
    raise AOTError(f"topology {text!r}: {gen} grids have {ndim} dimensions")
  return Topology(gen, grid)


def topology_devices(topo: Topology) -> list[Any]:
  """Compile-only devices of the topology (needs libtpu)."""
  # Compile-only use: several compilers may run at once on this host; no TPU is claimed.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  prefix, chip_config, ndim, _ = _GENERATIONS[topo.generation]
  grid3 = topo.grid + (1,) * (3 - ndim)
  if ndim == 3:
    wrap = (all(g % 4 == 0 for g in grid3),) * 3
  else:
    wrap = tuple(g == 16 for g in topo.grid) + (False,)
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{prefix}:{'x'.join(map(str, topo.grid))}",
        chip_config_name=chip_config, chips_per_host_bounds=(2, 2, 1) if topo.chips >= 4 else grid3,
        num_slices=1, wrap=wrap)
  except Exception as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not has_libtpu():
      raise AOTError(_NO_LIBTPU) from e
    raise AOTError(f"topology {topo.name}: {msg}") from e
  return list(desc.devices)


_NO_LIBTPU = "libtpu is not installed: pip install 'vbridge_jax[tpu]' (or: pip install libtpu)"


def has_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
    return True
  except ImportError:
    return False


# ------------------------------------------------------------------------------ abstract state


def _sds(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


@dataclasses.dataclass
class AbstractState:
  """Graph definitions and sharded `ShapeDtypeStruct` states; nothing is materialised."""

  train: tuple[Any, Any]  # (DiT, optimizer)
  dit: tuple[Any, Any]
  vae: tuple[Any, Any]
  dit_config: Any
  wrt: Any


def abstract_state(config, mesh, rules, plan: setup.Plan | None = None) -> AbstractState:
  """The trainer's state (DiT [+ LoRA] and optimizer), the DiT alone and the VAE, abstract."""
  build, dcfg, vcfg, wrt, _ = setup.state_builder(config, plan)

  def split(obj):
    graphdef, abs_state = nnx.split(obj)
    return graphdef, _sds(abs_state, sh.state_shardings(abs_state, mesh, rules))

  with nnx.use_eager_sharding(False):
    model, opt = nnx.eval_shape(build)
    vae = nnx.eval_shape(lambda: WanVAE(vcfg, rngs=nnx.Rngs(params=0)))
    return AbstractState(train=split((model, opt)), dit=split(model), vae=split(vae),
                         dit_config=dcfg, wrt=wrt)


def _replicated(mesh, shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.NamedSharding(mesh, jax.P()))


def _batched(mesh, shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sh.batch_sharding(mesh, len(shape)))


# ----------------------------------------------------------------------------------- steps


@dataclasses.dataclass
class Result:
  step: str
  vae: bool  # the VAE compiled into the step
  topology: str
  mesh: dict[str, int]
  remat: str
  finetune: str
  batch: int
  clip: tuple[int, int, int]  # frames, height, width
  tokens: int  # per sample
  memory: dict[str, int]  # per chip
  resident: int  # per chip, outside the step: the frozen VAE's replicated parameters
  hbm: float
  xla_flops: float  # per chip, cost analysis
  xla_bytes: float  # per chip, bytes accessed
  analytic_model_flops: float  # global
  analytic_hardware_flops: float
  roofline_s: float
  mfu: float
  compile_s: float

  @property
  def peak_bytes(self) -> int:
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"] + self.resident

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.hbm


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  get = lambda k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
  return {k: get(k) for k in ("argument", "output", "alias", "temp", "generated_code")}


def _nbytes(tree) -> int:
  return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _xla_cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) per chip from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def train_step_fn(graphdef, vae_graphdef, config, dcfg, wrt, state_sh, mesh, *, vae: bool):
  """The trainer's own step (`trainer.make_train_step`), called as
  `(state, vae_state, x, context, step, nan_at)`. `vae=True`: clips in, VAE encode inside.
  `vae=False`: the step on latents, as with `latent_cache.enabled` (the frozen VAE encodes
  ahead; `vae_state` is unused), which XLA:TPU compiles in minutes rather than hours."""
  config = config.copy_and_resolve_references()
  config.latent_cache.enabled = not vae
  return make_train_step(graphdef, vae_graphdef, config, patch_size=dcfg.patch_size, wrt=wrt,
                         state_shardings=state_sh, batch_sharding=sh.batch_sharding(mesh, 5))


def restore_step_lowering(dit_graphdef, vae_graphdef, dcfg, rules, *, vae: bool):
  """(function, static keywords) of the restore command's own step (`vbridge_jax.inference.restorer`):
  `sample_step` (frame-0 latent -> the UniPC loop with CFG -> final latent, with
  `SamplerConfig`'s defaults), or with `vae=True` `restore_step` (image -> encode -> that
  step -> the decoded last frame)."""
  scfg = dataclasses.replace(SamplerConfig(), patch_size=tuple(dcfg.patch_size))
  if vae:
    return jax.jit(functools.partial(restorer.restore_step, dit_graphdef=dit_graphdef,
                                     vae_graphdef=vae_graphdef, config=scfg, rules=rules)), {}
  return restorer.sample_step, dict(graphdef=dit_graphdef, config=scfg, rules=rules)


def compile_case(config, topo: Topology, devices, *, step: str, frames: int, hw: tuple[int, int],
                 batch: int = 0, vae: bool = False) -> Result:
  """Lowers and compiles one step for the topology; returns its table row."""
  mesh = sh.create_mesh(dict(config.mesh), devices=devices)
  rules = sh.rules_from_config(config.logical_axis_rules)
  plan = setup.plan(config)  # the config resolved once, as the trainer does
  st = abstract_state(config, mesh, rules, plan)
  (graphdef, state), (vae_graphdef, vae_state) = st.train, st.vae
  dcfg, wrt = st.dit_config, st.wrt
  batch = batch or sh.batch_shards(mesh)
  if batch % sh.batch_shards(mesh):
    raise AOTError(f"batch {batch} does not divide over the {sh.batch_shards(mesh)} data x fsdp shards")
  h, w = hw
  ctx = _replicated(mesh, (1, dcfg.text_len, dcfg.text_dim))
  t0 = time.time()
  static: dict[str, Any] = {}
  spatial, temporal = int(plan.codec.scale_factor_spatial), int(plan.codec.scale_factor_temporal)
  tokens = flops.video_tokens(frames, h, w, dcfg.patch_size, vae_stride=(temporal, spatial, spatial))
  lat = (batch, 1 + (frames - 1) // temporal, h // spatial, w // spatial, dcfg.in_channels)
  if step == "train":  # built outside the mesh: it may create host constants (the RNG key)
    fn = train_step_fn(graphdef, vae_graphdef, config, dcfg, wrt,
                       jax.tree.map(lambda s: s.sharding, state), mesh, vae=vae)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    if step == "train":
      data = _batched(mesh, (batch, frames, h, w, 3)) if vae else _batched(mesh, lat)
      step_no = _replicated(mesh, (), jnp.int32)
      ctx2 = _replicated(mesh, (2, dcfg.text_len, dcfg.text_dim))  # positive, empty prompts
      args = (state, vae_state if vae else None, data, ctx2, step_no, step_no)
      sf = flops.train_step_flops(dcfg, tokens, batch, finetune=config.finetune,
                                  lora_rank=int(config.lora.rank),
                                  lora_targets=list(plan.lora_targets),
                                  time_rows=lat[1])  # per-frame timesteps
      model_f, hw_f = sf.model, sf.hardware
    elif step == "restore":
      dit_graphdef, dit_state = st.dit
      fn, static = restore_step_lowering(dit_graphdef, vae_graphdef, dcfg, rules, vae=vae)
      if vae:
        args = (dit_state, vae_state, _batched(mesh, (batch, h, w, 3)), _batched(mesh, lat), ctx, ctx)
      else:
        args = (dit_state, _batched(mesh, (batch, 1) + lat[2:]), _batched(mesh, lat), ctx, ctx)
      scfg = SamplerConfig()
      guided = int(guided_steps(scfg.steps, scfg.cfg_skip).sum())
      model_f = hw_f = flops.sampling_flops(dcfg, tokens, batch, steps=scfg.steps,
                                            guided_steps=guided)
    else:
      raise AOTError(f"unknown step {step!r}: train or restore")
    compiled = fn.lower(*args, **static).compile()
  spec = topo.spec
  xla_f, xla_b = _xla_cost(compiled)
  roofline = max(hw_f / (topo.chips * spec.peak_bf16_flops), xla_b / spec.hbm_bandwidth)
  return Result(step=step, vae=vae, topology=topo.name, mesh=dict(mesh.shape), remat=dcfg.remat,
                finetune=config.finetune, batch=batch, clip=(frames, h, w), tokens=tokens,
                memory=_memory(compiled), resident=0 if vae else _nbytes(vae_state),
                hbm=spec.hbm_bytes, xla_flops=xla_f, xla_bytes=xla_b,
                analytic_model_flops=model_f, analytic_hardware_flops=hw_f, roofline_s=roofline,
                mfu=model_f / (roofline * topo.chips * spec.peak_bf16_flops),
                compile_s=time.time() - t0)


# ----------------------------------------------------------------------------------- report

_COLUMNS = ("step", "topology", "mesh d/f/c/t", "tune", "remat", "batch", "clip FxHxW", "tokens",
            "arg GiB", "out GiB", "temp GiB", "VAE GiB", "peak/HBM GiB", "fits", "XLA TF/chip",
            "analytic TF/chip", "roofline s", "MFU", "compile s")


def row(r: Result) -> list[str]:
  gib = lambda b: f"{b / flops.GiB:.2f}"
  chips = math.prod(r.mesh.values())
  m = r.mesh
  return [r.step + ("+vae" if r.vae else ""), r.topology, f"{m['data']}/{m['fsdp']}/{m['context']}/{m['tensor']}", r.finetune,
          r.remat, str(r.batch), "x".join(map(str, r.clip)), f"{r.tokens:,}",
          gib(r.memory["argument"]), gib(r.memory["output"]), gib(r.memory["temp"]), gib(r.resident),
          f"{gib(r.peak_bytes)}/{gib(r.hbm)}", "yes" if r.fits else "NO",
          f"{r.xla_flops / 1e12:.1f}", f"{r.analytic_hardware_flops / chips / 1e12:.1f}",
          f"{r.roofline_s:.3f}", f"{100 * r.mfu:.0f}%", f"{r.compile_s:.0f}"]


def format_table(results: list[Result]) -> str:
  """A markdown table of compiled steps."""
  lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
  lines += ["| " + " | ".join(row(r)) + " |" for r in results]
  return "\n".join(lines)


def _parse_hw(text: str) -> tuple[int, int]:
  try:
    h, w = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise AOTError(f"bad size {text!r}: want HxW, e.g. 704x1280") from None
  return h, w


def run(config, topology: str, *, steps=("train", "restore"), size: int = 0, frames: int = 0,
        hw: str = "", batch: int = 0, restore_size: str = "704x1280", restore_frames: int = 5,
        attention: str | None = "splash", vae: bool = False) -> list[Result]:
  """Compiles the requested steps for `topology`; returns their rows (`config` is not changed)."""
  topo = parse_topology(topology)
  if not has_libtpu():
    raise AOTError(_NO_LIBTPU)
  config = config.copy_and_resolve_references()
  if attention:
    config.model.attention = attention
  devices = topology_devices(topo)
  if not size:
    size = int(str(config.stages).split(",")[-1].split(":")[0])
  train_hw = _parse_hw(hw) if hw else (size, size)
  frames = frames or int(config.data.frames)
  out = []
  with layers.splash_interpret(False):  # the target is TPU
    for step in steps:
      if step == "train":
        out.append(compile_case(config, topo, devices, step="train", frames=frames, hw=train_hw,
                                batch=batch, vae=vae))
      elif step == "restore":
        out.append(compile_case(config, topo, devices, step="restore", frames=restore_frames,
                                hw=_parse_hw(restore_size), batch=batch, vae=vae))
      else:
        raise AOTError(f"unknown step {step!r}: train or restore")
  return out


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _TOPOLOGY.value:
    print("error: --topology is required (e.g. v5p-64 or v5p:2x4x4)", file=sys.stderr)
    return 1
  try:
    results = run(_CONFIG.value, _TOPOLOGY.value, steps=_STEPS.value, size=_SIZE.value,
                  frames=_FRAMES.value, hw=_HW.value, batch=_BATCH.value,
                  restore_size=_RESTORE_SIZE.value, restore_frames=_RESTORE_FRAMES.value,
                  vae=_VAE.value)
  except (VBridgeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_table(results))
  if _JSON.value:
    with open(_JSON.value, "a", encoding="utf-8") as f:
      for r in results:
        f.write(json.dumps(dataclasses.asdict(r) | {"peak_bytes": r.peak_bytes, "fits": r.fits}) + "\n")
  return 0


def console() -> None:
  """The `vbridge-aot` script (same as `python -m vbridge_jax.aot`)."""
  sys.argv = cli.resolve_config_flags(sys.argv)
  if cli.wants_help(sys.argv[1:]):
    cli.print_and_exit(__doc__.strip(), "Flags:\n" + flags.FLAGS.main_module_help(),
                       cli.config_text(sys.argv[1:], cli.config_file("curriculum.py")))
  flags.mark_flag_as_required("config")
  app.run(main)


if __name__ == "__main__":
  console()
