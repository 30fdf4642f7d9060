"""Export a training run as a model folder (the library of `python -m vbridge_jax.export`).

`export_run` reads a run's `config.json` and the model half of one orbax checkpoint, folds
LoRA adapters into the base weights and writes `jax`, `wan` or `diffusers` layouts through a
staging folder (the command's help text describes the layouts); `load_run_model` is the
same read, for callers that want the model in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vbridge_jax.checkpoints import dit as dit_ckpt
from vbridge_jax.checkpoints import io
from vbridge_jax.checkpoints.model_info import ModelInfo, eval_settings, write_model_info
from vbridge_jax.models import lora as lora_lib
from vbridge_jax.models.configs import DTYPES  # the one name -> dtype map
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.training import heldout, setup
from vbridge_jax.training.checkpointing import checkpoint_steps
from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import ExportError

FORMATS = ("jax", "wan", "diffusers")


# ------------------------------------------------------------------------------- the run


def read_run_config(workdir: str | os.PathLike):
  """The run's `config.json` (written by the trainer) as a ConfigDict."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise ExportError(f"{path}: not found ({workdir} is not a training run folder)")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise ExportError(f"{path}: cannot read the run's config ({' '.join(str(e).split())})") from None


def _pick_step(workdir: Path, step: int | None) -> int:
  steps = checkpoint_steps(workdir, "state")
  if not steps:
    raise ExportError(f"{workdir}/checkpoints: no checkpoint (train first)")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ExportError(f"{workdir}/checkpoints: no checkpoint at step {step} "
                      f"(have {', '.join(map(str, steps))})")
  return step


def _restore_model_tree(state_dir: Path) -> dict:
  """The model half (`"0"`) of a trainer checkpoint's `(model, optimizer)` state, as numpy."""

  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(state_dir).item_metadata.tree
      item = {"0": meta["0"]}
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      tree = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=args, partial_restore=True))["0"]
    except (ValueError, KeyError, FileNotFoundError, OSError, TypeError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ExportError(f"{state_dir}: cannot read the model state ({msg})") from None

  def strip(node):  # nnx Variables are stored as {"value": array}
    if isinstance(node, dict):
      if set(node) == {"value"} and not isinstance(node["value"], dict):
        return node["value"]
      return {str(k): strip(v) for k, v in node.items()}
    return node

  return strip(tree)


def _build_model(config, dcfg):
  """The run's DiT as the trainer builds it (with LoRA wrappers for a LoRA run)."""

  model = WanDiT(dcfg, rngs=nnx.Rngs(0))
  if config.finetune == "lora":
    targets = [t.strip() for t in str(config.lora.targets).split(",") if t.strip()]
    lora_lib.apply_lora(model, rank=int(config.lora.rank), alpha=float(config.lora.alpha),
                        targets=targets)
  return model


def load_run_model(workdir: str | os.PathLike, step: int | None = None, *, merge: bool = True,
                   **overrides):
  """`(model, config, step)`: the run's DiT at `step` (default the latest), on the CPU.

  With `merge` (the default) LoRA adapters are folded into the base weights, so the model
  is a plain `WanDiT`; `merge=False` keeps the `LoRADense` wrappers (the trained function
  itself, for comparison). `overrides` set run-time switches (`dtype`, ...).
  """

  workdir = Path(workdir)
  config = read_run_config(workdir)
  step = _pick_step(workdir, step)
  dcfg = setup.dit_config(config).replace(**overrides)
  with jax.default_device(jax.devices("cpu")[0]):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _build_model(config, dcfg)))
    pure = nnx.to_pure_dict(state)
    state_dir = workdir / "checkpoints" / str(step) / "state"
    stored = _restore_model_tree(state_dir)
    io._check_tree(state_dir, stored, io.string_keys(pure))
    nnx.replace_by_pure_dict(state, io.rekey_like(pure, stored))
    model = nnx.merge(graphdef, state)
    if merge:
      lora_lib.merge_lora(model)
  return model, config, step


def _numpy_params(module, dtype) -> dict:
  """A module's state as the converter's nested dict of numpy arrays (string keys)."""

  def conv(node):
    if isinstance(node, dict):
      return {str(k): conv(v) for k, v in node.items()}
    a = np.asarray(node)
    floating = a.dtype.kind == "f" or a.dtype.name == "bfloat16"
    return a.astype(dtype, copy=False) if dtype is not None and floating else a
  return conv(nnx.to_pure_dict(nnx.state(module)))


# ------------------------------------------------------------------------------- the codec


def _codec_of(vae_folder: Path) -> str:
  try:
    meta = json.loads((vae_folder / "config.json").read_text())
  except (OSError, ValueError):
    return "wan22"
  return "pixel" if meta.get("_class_name") == "PixelCodec" else "wan22"


def _run_codec(config) -> str:
  """The codec a run trained with: its init_from folder's, else its `model.vae` preset's."""
  if config.init_from:
    return _codec_of(Path(config.init_from) / "vae")
  return "pixel" if str(config.model.vae) == "pixel" else "wan22"


def _write_vae(config, staging: Path) -> str:
  """Writes `staging/vae/` as the run used it; returns the codec name for model.json."""

  if config.init_from:
    root = Path(config.init_from)
    src = root / "vae" if (root / "vae" / "config.json").is_file() else None
    if src is None:
      raise ExportError(f"{root}: the run's init_from folder has no vae/ to export with the model")
    shutil.copytree(src, staging / "vae")
    return _codec_of(src)
  if str(config.model.vae) == "pixel":
    # The pixel codec has no parameters; its folder is its config (see models/pixel_codec.py).
    (staging / "vae").mkdir()
    (staging / "vae" / "config.json").write_text(setup.vae_config(config).to_json() + "\n")
    return "pixel"
  vcfg = setup.vae_config(config)
  vae = setup.random_vae(vcfg, int(config.seed) + 2)  # exactly the trainer's frozen VAE
  io.write_component(staging, "vae", vcfg.arch_dict(), _numpy_params(vae, None),
                     source=f"random:seed={int(config.seed) + 2}")
  return "wan22"


# ------------------------------------------------------------------------------- export


def _evaluated_with(config, dcfg):
  """The `EvalSettings` of the run's held-out evaluation (the sampler fields, seed, dtypes and
  quantize of `training.heldout.restore_settings`, which the trainer's evaluation used),
  for model.json; None when the run has none (`config.eval.source` empty)."""
  e = config.get("eval")
  if e is None or not str(e.get("source", "") or ""):
    return None
  try:
    return eval_settings(heldout.restore_settings(config, dcfg))
  except (KeyError, AttributeError, TypeError, ValueError) as err:
    raise ExportError(f"config.eval: cannot record the held-out evaluation's settings "
                      f"({' '.join(str(err).split())})") from None


def _check_out(out: Path, workdir: Path, config, overwrite: bool) -> None:
  inputs = [("the run", workdir)]
  if config.get("init_from"):
    inputs.append(("the run's init_from", Path(config.init_from).resolve()))
  for what, path in inputs:
    if atomic.overlaps(out, path):
      raise ExportError(f"--out {out} overlaps {what} ({path}); choose a folder outside it")
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
    raise ExportError(f"--out {out} exists; pass --overwrite to replace it")


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None,
               fmt: str = "jax", dtype: str | None = None, overwrite: bool = False,
               max_shard_bytes: int = 5 << 30, log=print) -> Path:
  """Exports `workdir`'s model at `step` (default the latest) to `out`; returns `out`.

  See the module docstring for the formats. All or nothing: `out` appears (or is replaced)
  only when everything has been written.
  """

  if fmt not in FORMATS:
    raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
  workdir, out = Path(workdir).resolve(), Path(out).resolve()
  config = read_run_config(workdir)
  _check_out(out, workdir, config, overwrite)
  dtype = dtype or str(config.model.param_dtype)
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
  model, config, step = load_run_model(workdir, step)
  cfg = model.config
  evaluated = _evaluated_with(config, cfg)
  params = _numpy_params(model, np_dtype)
  del model
  source = f"run:{workdir}@step{step}"

  out.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export.", dir=out.parent))
  try:
    if fmt == "jax":
      io.write_component(staging, "dit", cfg.arch_dict() | {"param_dtype": dtype}, params,
                         source=source)
      codec = _write_vae(config, staging)
    else:
      folder = staging / "transformer" if fmt == "diffusers" else staging
      tensors = [(k, shape, np_dtype, get) for k, shape, get in
                 dit_ckpt.export_tensors(cfg, fmt, params, np_dtype)]
      io.write_safetensors(folder, tensors, max_shard_bytes=max_shard_bytes)
      meta = dit_ckpt.wan_config(cfg) if fmt == "wan" else dit_ckpt.diffusers_config(cfg)
      (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
      codec = _run_codec(config)
    write_model_info(staging, ModelInfo(frames=int(config.data.frames), codec=codec,
                                        evaluated_with=evaluated))
    if out.exists():
      old = out.parent / f".{out.name}.old"
      shutil.rmtree(old, ignore_errors=True)
      os.replace(out, old)
      os.replace(staging, out)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  lora = " (LoRA merged)" if config.finetune == "lora" else ""
  log(f"exported {workdir} step {step}{lora} as {fmt} ({dtype}, {int(config.data.frames)} "
      f"frames, codec {codec}) to {out}")
  return out
