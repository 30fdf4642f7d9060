"""The folder loop of `python -m vbridge_jax.restore` (and of the miniature, which calls `run`
with a config it builds): settings resolved, checks, the job loop, the summary.

Order of work, so that a bad setting costs nothing: the config is validated, `jax.distributed`
started when asked, the inputs scanned (duplicates refused, dangling symlinks reported), the
output folder's writability checked and a killed run's temporaries removed, the outputs
already there sorted out (`jobs.output_state`: finished with these settings, skipped;
restore's own unfinished ones, redone; files restore did not write or outputs of other
settings, refused unless `overwrite`), the model folders and prompts checked from their
files; only then is the model loaded. Each failure is one line on stderr and exit status 1;
a restored image that is not finite is a failure of that image, with nothing written.

The restore settings of `checkpoints.model_info.EvalSettings` (the sampler fields, `seed`,
`dtype`, `param_dtype`, `vae_dtype`, `quantize`) are unset (None) in configs/restore.py and
resolved in one place, `resolve_settings`: a value set in the config or on the command line
wins, else the model folder's `model.json` record (`evaluated_with`, how the trainer's
held-out evaluation restored it), else `fallback_settings()` (today's defaults); the drift
corrector samples with the same. One line says which settings are used and where they came from.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vbridge_jax.checkpoints import io, load_dit
from vbridge_jax.checkpoints.model_info import FILENAME, EvalSettings, model_root, read_model_info
from vbridge_jax.data import prompts, video
from vbridge_jax.data.files import image_size, read_rgb
from vbridge_jax.diffusion.sampler import SamplerConfig, numerics
from vbridge_jax.inference import jobs as jobs_lib
from vbridge_jax.inference import restorer
from vbridge_jax.inference.geometry import QUANTIZE, to_uint8
from vbridge_jax.models import pixel_codec
from vbridge_jax.models.configs import DTYPES, DiTConfig, VAEConfig
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.utils.errors import DataError, ModelInfoError

REQUIRED = ("model", "prompts", "input", "output")
FROM_CONFIG = "--config"
FROM_DEFAULTS = "the defaults"
FROM_PRECISION = "--config.precision"


def fallback_settings() -> dict[str, Any]:
  """Today's defaults of the resolved settings: `SamplerConfig`'s sampler fields, seed 43, the
  DiT in bf16, the VAE as stored (None), truncation to uint8."""
  sampler = SamplerConfig()
  known = dict(seed=43, dtype="bfloat16", param_dtype="bfloat16", vae_dtype=None,
               quantize="truncate")
  return {f: known[f] if f in known else getattr(sampler, f)
          for f in EvalSettings.__dataclass_fields__}


def resolve_settings(config) -> tuple[Any, dict[str, str]]:
  """(a copy of `config` with every resolved setting filled in, {field: where it came from}).

  Per field: the config's value when set (not None), else the model folder's model.json
  record (`ModelInfo.evaluated_with`), else `fallback_settings()`. A bad record raises
  ModelInfoError (a ValueError: one line, exit status 1). `precision` (`sampler.numerics`;
  "float32" when absent) sets the VAE's dtype where its numerics name one ("authors": bf16)
  unless `vae_dtype` is given; its other pieces reach the restorer through `sampler_config`.
  """
  record, where = {}, None
  if config.get("model"):
    info = read_model_info(config.model)
    if info.evaluated_with is not None:
      record, where = info.evaluated_with.recorded(), str(model_root(config.model) / FILENAME)
  out = config.copy_and_resolve_references()
  sources = {}
  with out.unlocked():
    for k, default in fallback_settings().items():
      if config.get(k) is not None:
        sources[k] = FROM_CONFIG
      elif k in record:
        out[k], sources[k] = record[k], where
      else:
        out[k], sources[k] = default, FROM_DEFAULTS
    out.precision = config.get("precision") or "float32"
    vae_dtype = numerics(out.precision).vae_dtype  # a bad precision: ConfigError, one line
    if vae_dtype is not None and sources["vae_dtype"] != FROM_CONFIG:
      out.vae_dtype, sources["vae_dtype"] = vae_dtype, FROM_PRECISION
  return out, sources


def settings_line(config, sources: dict[str, str]) -> str:
  """`sampler: euler, 4 steps, ... (from MODEL/model.json; steps from --config)`."""
  vae = config.vae_dtype or "as stored"
  what = (f"sampler: {config.solver}, {config.steps} steps, shift {config.shift}, schedule "
          f"{config.schedule}, guidance {config.guidance}, cfg_skip {config.cfg_skip}, seed "
          f"{config.seed}; DiT {config.dtype} (weights {config.param_dtype}), VAE {vae}, "
          f"quantize {config.quantize}, precision {config.get('precision') or 'float32'}")
  counts = collections.Counter(sources.values())
  main = max(counts, key=counts.get)
  others = [f"{', '.join(k for k, s in sources.items() if s == src)} from {src}"
            for src in counts if src != main]
  return f"{what} (" + "; ".join([f"from {main}", *others]) + ")"


def check(config) -> None:
  """One-line errors for settings that cannot run, before anything is loaded."""
  missing = [k for k in REQUIRED if not config.get(k)]
  if missing:
    raise ValueError("required: " + ", ".join(f"--config.{k}" for k in missing))
  restorer.sampler_config(config)  # validates the sampling fields
  for k in ("dtype", "param_dtype", "vae_dtype"):
    if config[k] not in DTYPES and not (k == "vae_dtype" and config[k] is None):
      raise ValueError(f"--config.{k}={config[k]!r} is not one of {', '.join(DTYPES)}")
  if config.quantize not in QUANTIZE:
    raise ValueError(f"--config.quantize={config.quantize!r} is not one of {', '.join(QUANTIZE)}")
  for k in ("frames", "drift_frames", "batch", "num_devices"):
    if int(config[k]) < 0:
      raise ValueError(f"--config.{k}={config[k]} must be >= 0")
  if config.video:
    video.check_available()


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)], np.int32))).max())


def _agree(value: int, what: str) -> None:
  if jax.process_count() == 1:
    return
  seen = np.asarray(multihost_utils.process_allgather(np.array([value], np.int32))).ravel()
  if len(set(seen.tolist())) > 1:
    raise ValueError(f"the processes see different {what} (a shared folder out of sync?)")


def run(config) -> int:
  """The command on a parsed config (its settings resolved here); returns the exit status."""
  config, sources = resolve_settings(config)
  check(config)
  sh.maybe_initialize_distributed(config.get("distributed"))

  t_start = time.time()
  inp, out_root = Path(config.input), Path(config.output).resolve()
  found, problems = jobs_lib.find_inputs(inp, exclude=out_root)
  jobs_lib.check_unique(found, out_root, {f.resolve() for f, _ in found})
  jobs_lib.check_writable(out_root)
  if jax.process_index() == 0:  # before any process can write (they start after the model loads)
    jobs_lib.remove_stale_temporaries(out_root)
  settings = output_settings(config)
  states = [(dst, *jobs_lib.output_state(dst, settings, bool(config.video)))
            for dst in (jobs_lib.output_path(out_root, rel) for _, rel in found)]
  if not config.overwrite:
    jobs_lib.check_replaceable(states, settings)
  todo = [job for job, (_, state, _) in zip(found, states)
          if config.overwrite or state != jobs_lib.DONE]
  for p in problems:
    print(f"error: {p}", file=sys.stderr)
  _say(f"{len(found)} image(s) found, {len(found) - len(todo)} already restored, "
       f"{len(todo)} to do")
  head = dict(input=str(inp), output=str(out_root), found=len(found),
              already_restored=len(found) - len(todo), to_do=len(todo), problems=list(problems))
  status = dict(restored=0, failed=[], seconds=0.0)
  rc = 1 if problems else 0
  if todo:
    _check_model(config, settings["frames"], settings["drift_frames"])
    rc = max(rc, _restore(config, todo, out_root, status, sources, settings))
  status["seconds"] = time.time() - t_start
  jobs_lib.write_status(out_root, jax.process_index(), status)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("restore_summary")
  if jax.process_index() == 0:
    summary = jobs_lib.write_summary(out_root, jax.process_count(), head)
    spi = summary["seconds_per_image"]
    _say(f"restored {summary['restored']}, failed {summary['failed']}"
         + (f", {spi:.2f} s per image" if spi else "") + f"; {out_root / jobs_lib.SUMMARY}")
    rc = max(rc, 1 if summary["failed"] else 0)
  return max(rc, 1 if status["failed"] else 0)


def output_settings(config) -> dict[str, Any]:
  """What makes an output, recorded in its sidecar (`jobs.output_state`): a fingerprint of
  the model's and the corrector's files (`model_files`, `drift_files`: a copy of a folder is
  the same model, another export of it is not), the resolved settings and both frame counts.
  A finished output with other settings is not this run's."""
  frames, drift_frames = frame_counts(config)
  out: dict[str, Any] = {}
  for k in ("model", "drift"):
    out[f"{k}_files"] = jobs_lib.fingerprint_folder(model_root(config[k])) if config[k] else ""
  out.update({k: config[k] for k in fallback_settings()}, frames=frames,
             drift_frames=drift_frames, precision=config.get("precision") or "float32")
  return out


def frame_counts(config) -> tuple[int, int | None]:
  """(base frames, corrector frames or None): `frames` / `drift_frames` when given, else what
  each model folder records (`model.json`; 5 without one)."""
  frames = int(config.frames) or read_model_info(config.model).frames
  if not config.drift:
    return frames, None
  return frames, int(config.drift_frames) or read_model_info(config.drift).frames


def _check_model(config, frames: int, drift_frames: int | None) -> None:
  """The model folders and the prompt file, checked from their configs (nothing loaded yet):
  the frame counts against the codec, the corrector's codec and latent width against the
  base's, the prompts against the DiT's text width and length."""
  dcfg = DiTConfig.from_dict(io.read_component_config(io.find_component(Path(config.model), "dit")))
  codec = _codec_config(config.model)
  where = {"frames": ("--config.frames" if config.frames else str(model_root(config.model)
                                                                   / FILENAME)),
           "drift_frames": ("--config.drift_frames" if config.drift_frames else
                            str(model_root(config.drift or config.model) / FILENAME))}
  t = int(codec.scale_factor_temporal)
  for k, f in (("frames", frames), ("drift_frames", drift_frames)):
    if f is not None and (f < 1 or (f - 1) % t):
      raise ModelInfoError(f"{where[k]}: {k}={f} must be 1 + {t}k for the codec of {config.model}")
  if config.drift:
    ddir = io.find_component(Path(config.drift), "dit")
    base, corr = read_model_info(config.model).codec, read_model_info(config.drift).codec
    if base != corr:
      raise ModelInfoError(f"{model_root(config.drift) / FILENAME}: the corrector's codec {corr!r} "
                           f"is not the base model's {base!r} ({config.model})")
    corr_shape, base_shape = [(c.in_channels, c.out_channels, c.text_dim, tuple(c.patch_size))
                              for c in (DiTConfig.from_dict(io.read_component_config(ddir)), dcfg)]
    if corr_shape != base_shape:
      raise ModelInfoError(f"{ddir}: the corrector's DiT (channels in, out, text width, patch "
                           f"{corr_shape}) does not fit the base's {base_shape} ({config.model})")
  prompts.load(Path(config.prompts), dcfg.text_dim, ("positive", "negative"), dcfg.text_len)


def _codec_config(model: str) -> Any:
  """The codec config of a model folder, read without loading it."""
  pixel = pixel_codec.read_config(model)
  if pixel is not None:  # the pixel codec's folder is its config
    return pixel
  return VAEConfig.from_dict(io.read_component_config(io.find_component(Path(model), "vae")))


def _restore(config, todo, out_root: Path, status: dict, sources: dict[str, str],
             settings: dict[str, Any]) -> int:
  """Loads the models and restores `todo` [(file, relative path)]; fills `status`."""

  n_dev = int(config.num_devices)
  mesh = sh.create_mesh(dict(config.mesh), jax.devices()[:n_dev] if n_dev > 0 else None)
  rules = sh.rules_from_config(config.logical_axis_rules)
  frames, drift_frames = settings["frames"], settings["drift_frames"]  # frame_counts
  overrides = dict(dtype=config.dtype, param_dtype=config.param_dtype)
  vae_overrides = {} if config.vae_dtype is None else dict(dtype=config.vae_dtype)
  _say(settings_line(config, sources))
  _say(f"loading the model from {config.model} onto mesh {dict(mesh.shape)} "
       f"({mesh.size} devices, {jax.process_count()} process(es)) ...")
  t0 = time.time()
  dit = load_dit(config.model, mesh, rules, **overrides)
  drift = load_dit(config.drift, mesh, rules, **overrides) if config.drift else None
  vae = restorer.place(restorer.load_codec(config.model, mesh, **vae_overrides), mesh, rules)
  positive, negative = prompts.load_prompts(Path(config.prompts), dit.config.text_dim)
  engine = restorer.Restorer(dit, vae, positive, negative, restorer.sampler_config(config),
                            frames, drift, int(config.seed), mesh=mesh, rules=rules,
                            drift_frames=drift_frames, quantize=config.quantize)
  _say(f"loaded in {time.time() - t0:.0f} s; {frames} frames"
       + (f", corrector {drift_frames} frames" if drift else ""))
  jobs = []
  for f, rel in todo:
    try:
      w, h = image_size(f)
      jobs.append(jobs_lib.Job(f, rel.as_posix(), jobs_lib.output_path(out_root, rel),
                               engine.plan(h, w)))
    except DataError as e:
      status["failed"].append(str(e))
      print(f"error: {e}", file=sys.stderr)
  _agree(jobs_lib.fingerprint(jobs), "work lists")
  m = engine.batch_multiple
  batch = int(config.batch) or m
  if batch % m:
    raise ValueError(f"--config.batch={batch} is not a multiple of the {m} data x fsdp shards")
  batches = jobs_lib.schedule(jobs, batch)
  held, writes = jobs_lib.process_rows(sh.batch_sharding(mesh, 1), batch)
  bar = None
  if config.progress and jax.process_index() == 0:
    bar = tqdm(total=len(jobs), desc="restore", unit="img", file=sys.stderr)
  stop = None
  seen_sizes = set()
  status.update(first_batches_seconds=0.0, steady_seconds=0.0, steady_images=0)
  for chunk in batches:
    t_batch = time.time()
    rows = {}
    for r in held:
      j = chunk[r]
      if j is None:
        continue
      try:
        rows[r] = (read_rgb(j.src), j.rel)
      except DataError as e:
        if r in writes:
          status["failed"].append(str(e))
          print(f"error: {e}", file=sys.stderr)
    plan = next(j.plan for j in chunk if j is not None)
    outs = engine.run_batch(rows, batch, plan, all_frames=bool(config.video),
                              log=_say if jax.process_index() == 0 else None)
    for r in writes:
      if r not in outs or stop:
        continue
      img, frames_w = outs[r]
      j = chunk[r]
      if img is None:
        status["failed"].append(f"{j.src}: the restored image is not finite (NaN or inf in the "
                                f"model's output); nothing written")
        print(f"error: {status['failed'][-1]}", file=sys.stderr)
        continue
      video = None
      if frames_w is not None:
        video = [restorer.crop_work(to_uint8(fr, config.quantize), j.plan) for fr in frames_w]
      try:
        jobs_lib.write_output(img, j.dst, dict(source=j.rel, model=str(config.model),
                                                drift=str(config.drift), settings=settings), video)
        status["restored"] += 1
      except jobs_lib.OutputError as e:
        stop = str(e)
    dt = time.time() - t_batch
    if (plan.work_h, plan.work_w) in seen_sizes:  # compiled: the steady rate
      status["steady_seconds"] += dt
      status["steady_images"] += sum(chunk[r] is not None for r in writes)
    else:  # the first batch of a size compiles the steps
      status["first_batches_seconds"] += dt
      seen_sizes.add((plan.work_h, plan.work_w))
    if bar is not None:
      bar.update(sum(j is not None for j in chunk))
    if _any_process(stop is not None):
      break
  if bar is not None:
    bar.close()
  if stop is not None:
    status["failed"].append(stop)
    print(f"error: {stop}; stopped", file=sys.stderr)
    return 1
  return 0
