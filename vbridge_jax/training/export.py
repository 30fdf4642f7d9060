"""Export a training run as a model folder (the library of `python -m vbridge_jax.export`).

`export_run` reads a run's `config.json` and the model half of one orbax checkpoint, folds
LoRA adapters into the base weights and writes `jax`, `wan` or `diffusers` layouts through a
staging folder (the command's help text describes the layouts); `load_run_model` is the
same read, for callers that want the model in memory.
"""

from __future__ import annotations

import json
import os
import re
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
from vbridge_jax.utils import atomic, lock
from vbridge_jax.utils.errors import CheckpointError, ExportError, OutputError, VBridgeError

FORMATS = ("jax", "wan", "diffusers")


# ------------------------------------------------------------------------------- the run


def read_run_config(workdir: str | os.PathLike):
  """The run's `config.json` (written by the trainer) as a ConfigDict: a JSON object whose
  `model` and `data` are objects, else a one-line `ExportError` naming the file."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise ExportError(f"{path}: not found ({workdir} is not a training run folder)")
  try:
    raw = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ExportError(f"{path}: cannot read the run's config ({' '.join(str(e).split())})") from None
  if not isinstance(raw, dict) or not raw:
    raise ExportError(f"{path}: holds {_shown(raw)}, not a training run's config (the JSON object "
                      f"the trainer writes)")
  for section in ("model", "data"):
    if not isinstance(raw.get(section), dict):
      raise ExportError(f"{path}: {section} is {_shown(raw.get(section, 'missing'))}, not an object; "
                        f"not a training run's config")
  try:
    return ml_collections.ConfigDict(raw)
  except (TypeError, ValueError, KeyError) as e:
    raise ExportError(f"{path}: cannot read the run's config ({' '.join(str(e).split())})") from None


def _shown(value) -> str:
  text = value if isinstance(value, str) else json.dumps(value)
  return text if len(text) <= 40 else text[:40] + "..."


def _from_config(workdir: Path, what: str, fn):
  """`fn()`, with a run config that lacks or mistypes a field it reads as an `ExportError`."""
  try:
    return fn()
  except (AttributeError, KeyError, TypeError) as e:
    raise ExportError(f"{workdir / 'config.json'}: cannot take {what} from the run's config "
                      f"({' '.join(str(e).split()) or type(e).__name__})") from None


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
    except (ValueError, KeyError, FileNotFoundError, OSError, TypeError, AttributeError) as e:
      # AttributeError: no _METADATA (orbax then has no item metadata)
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
                   log=None, **overrides):
  """`(model, config, step)`: the run's DiT at `step` (default the latest), on the CPU.

  Without `step`, a latest checkpoint that cannot be read (a missing `_METADATA`, a truncated
  chunk) is passed over for the newest intact one, each skipped step named in one line to
  `log` (default print); an unreadable `step` that was asked for is an `ExportError`.

  With `merge` (the default) LoRA adapters are folded into the base weights, so the model
  is a plain `WanDiT`; `merge=False` keeps the `LoRADense` wrappers (the trained function
  itself, for comparison). `overrides` set run-time switches (`dtype`, ...).
  """

  workdir = Path(workdir)
  config = read_run_config(workdir)
  steps = [_pick_step(workdir, step)]
  if step is None:  # the latest, else the newest intact one, as the trainer resumes
    steps = checkpoint_steps(workdir, "state")[::-1]
  dcfg = _from_config(workdir, "the DiT's architecture",
                      lambda: setup.dit_config(config).replace(**overrides))
  unreadable = []
  with jax.default_device(jax.devices("cpu")[0]):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _from_config(
        workdir, "the model", lambda: _build_model(config, dcfg))))
    pure = nnx.to_pure_dict(state)
    for candidate in steps:
      state_dir = workdir / "checkpoints" / str(candidate) / "state"
      try:
        stored = _restore_model_tree(state_dir)
        io._check_tree(state_dir, stored, io.string_keys(pure))
        break
      except (ExportError, CheckpointError) as e:
        if step is not None:
          raise
        unreadable.append((candidate, str(e)))
    else:
      raise ExportError(f"{workdir}/checkpoints: no intact checkpoint: " +
                        "; ".join(f"step {s}: {why}" for s, why in unreadable))
    for bad, why in unreadable:
      (log or print)(f"warning: checkpoint step {bad} is unreadable ({why}); using step {candidate}")
    nnx.replace_by_pure_dict(state, io.rekey_like(pure, stored))
    model = nnx.merge(graphdef, state)
    if merge:
      lora_lib.merge_lora(model)
  return model, config, candidate


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
  only when everything has been written, with the user's umask. One export per `out` at a
  time: a second is refused (`utils.lock.LockedError`), and the staging folders of one that
  was killed are removed by the next. A place that cannot be written, or a disk that fills,
  is one line (`OutputError`).
  """

  if fmt not in FORMATS:
    raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
  if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
    raise ExportError(f"max_shard_bytes={max_shard_bytes!r}: must be a positive whole number of bytes")
  workdir, out = Path(workdir).resolve(), Path(out).resolve()
  config = read_run_config(workdir)
  _check_out(out, workdir, config, overwrite)
  dtype = dtype or _from_config(workdir, "model.param_dtype", lambda: str(config.model.param_dtype))
  if dtype not in DTYPES:
    raise ExportError(f"{workdir / 'config.json'}: model.param_dtype {dtype!r} is not one of "
                      f"{', '.join(DTYPES)}; pass --dtype")
  _writable(out.parent)
  with lock.exclusive(out.parent / f".{out.name}.lock", what=f"export --out {out}"):
    old = out.parent / f".{out.name}.old"
    if old.is_dir() and not out.exists():  # killed between moving out aside and moving in
      os.replace(old, out)
      log(f"restored {out} from {old}, where an export that did not finish had moved it")
    for stale in lock.remove_stale(out.parent, _staging_pattern(out)):  # a killed export's
      log(f"removed {stale}, left by an export that did not finish")
    _check_out(out, workdir, config, overwrite)  # again: another export may have just finished
    try:
      return _export_locked(workdir, out, config, step, fmt, dtype, max_shard_bytes, log)
    except VBridgeError:
      raise
    except (OSError, ValueError) as e:  # a full disk, a read-only folder (orbax: ValueError)
      if (reason := atomic.write_failure(e)) is None:
        raise
      raise OutputError(f"--out {out}: writing failed ({reason})") from None


def _staging_pattern(out: Path) -> str:
  """The names of `out`'s staging folders (`atomic.temp_dir`) and of the previous `out` while
  it is being replaced: leftovers of a killed export when nobody holds `out`'s lock."""
  return rf"\.{re.escape(out.name)}\.(export\.[A-Za-z0-9_]{{8}}|old)"


def _writable(folder: Path) -> None:
  """Creates `folder` if needed and checks that a file can be made in it, before the model
  is read: a read-only or forbidden place is one line naming it."""
  try:
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()
  except OSError as e:
    raise OutputError(f"--out {folder}: cannot write there ({e.strerror or e})") from None


def _export_locked(workdir: Path, out: Path, config, step, fmt: str, dtype: str,
                   max_shard_bytes: int, log) -> Path:
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
  model, config, step = load_run_model(workdir, step, log=log)
  cfg = model.config
  evaluated = _evaluated_with(config, cfg)
  frames = _from_config(workdir, "data.frames", lambda: int(config.data.frames))
  params = _numpy_params(model, np_dtype)
  del model
  source = f"run:{workdir}@step{step}"

  staging = atomic.temp_dir(out.parent, prefix=f".{out.name}.export.")  # the user's umask
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
    write_model_info(staging, ModelInfo(frames=frames, codec=codec, evaluated_with=evaluated))
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
  log(f"exported {workdir} step {step}{lora} as {fmt} ({dtype}, {frames} frames, codec {codec}) "
      f"to {out}")
  return out
