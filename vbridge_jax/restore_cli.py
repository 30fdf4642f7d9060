"""The restore command: flags (absl + ml_collections `config_flags`), checks, the job loop.

`python -m vbridge_jax.restore --config=configs/restore.py[:VARIANT] --config.KEY=VALUE ...`
(see `vbridge_jax.restore` for what it does). Order of work, so that a bad setting costs
nothing: the config is validated, `jax.distributed` started when asked, the inputs scanned
(duplicates refused, dangling symlinks reported), the output folder's writability checked,
finished outputs verified and skipped; only then is the model loaded. Each failure is one
line on stderr and exit status 1.

The restore settings of `models.model_info.EvalSettings` (the sampler fields, `seed`, `dtype`,
`param_dtype`, `vae_dtype`, `quantize`) are unset (None) in configs/restore.py and resolved
in one place, `resolve_settings`: a value set in the config or on the command line wins, else
the model folder's `model.json` record (`evaluated_with`, how the trainer's held-out
evaluation restored it), else `fallback_settings()` (today's defaults); the drift corrector
samples with the same. One line says which settings are used and where they came from.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "restore.py"
REQUIRED = ("model", "prompts", "input", "output")
FROM_CONFIG = "--config"
FROM_DEFAULTS = "the defaults"


class _Usage(Exception):
  """A command-line error (one line)."""


def usage(argv: Sequence[str] = ()) -> str:
  """`--help`: what the command does, its flag, the config's variants and every field."""
  from vbridge_jax import cli_help, restore
  flag = ("Flags:\n  --config=FILE[:VARIANT]  config file (default configs/restore.py); "
          "--config.FIELD=VALUE overrides a field")
  return "\n\n".join([restore.__doc__.strip(), flag, cli_help.config_text(argv, DEFAULT_CONFIG),
                      unset_text()])


def unset_text() -> str:
  """`--help`'s note on the fields that default to None."""
  import textwrap
  rest = ", ".join(f"{k}={v!r}" for k, v in fallback_settings().items())
  return textwrap.fill(
      "Fields shown as None are unset: a value given in the config or on the command line "
      "wins, else the one the model folder's model.json records (`evaluated_with`: how the "
      "trainer's held-out evaluation restored it, written by python -m vbridge_jax.export), "
      f"else {rest} (vae_dtype=None: the VAE as its folder stores it).", width=95,
      break_long_words=False, break_on_hyphens=False)


def fallback_settings() -> dict[str, Any]:
  """Today's defaults of the resolved settings: `SamplerConfig`'s sampler fields, seed 43, the
  DiT in bf16, the VAE as stored (None), truncation to uint8."""
  from vbridge_jax.models.model_info import EvalSettings
  from vbridge_jax.sampler import SamplerConfig
  sampler = SamplerConfig()
  known = dict(seed=43, dtype="bfloat16", param_dtype="bfloat16", vae_dtype=None,
               quantize="truncate")
  return {f: known[f] if f in known else getattr(sampler, f)
          for f in EvalSettings.__dataclass_fields__}


def resolve_settings(config) -> tuple[Any, dict[str, str]]:
  """(a copy of `config` with every resolved setting filled in, {field: where it came from}).

  Per field: the config's value when set (not None), else the model folder's model.json
  record (`ModelInfo.evaluated_with`), else `fallback_settings()`. A bad record raises
  ModelInfoError (a ValueError: one line, exit status 1).
  """
  from vbridge_jax.models import read_model_info
  from vbridge_jax.models.model_info import FILENAME, model_root
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
  return out, sources


def settings_line(config, sources: dict[str, str]) -> str:
  """`sampler: euler, 4 steps, ... (from MODEL/model.json; steps from --config)`."""
  vae = config.vae_dtype or "as stored"
  what = (f"sampler: {config.solver}, {config.steps} steps, shift {config.shift}, schedule "
          f"{config.schedule}, guidance {config.guidance}, cfg_skip {config.cfg_skip}, seed "
          f"{config.seed}; DiT {config.dtype} (weights {config.param_dtype}), VAE {vae}, "
          f"quantize {config.quantize}")
  counts = collections.Counter(sources.values())
  main = max(counts, key=counts.get)
  others = [f"{', '.join(k for k, s in sources.items() if s == src)} from {src}"
            for src in counts if src != main]
  return f"{what} (" + "; ".join([f"from {main}", *others]) + ")"


def parse(argv: Sequence[str]):
  """argv (without the program name) -> the resolved ConfigDict."""
  from vbridge_jax import cli_help
  if cli_help.wants_help(argv):
    cli_help.print_and_exit(usage(argv))
  fv = flags.FlagValues()
  default = str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None
  try:
    holder = config_flags.DEFINE_config_file("config", default, "restore config file[:variant]",
                                             flag_values=fv, lock_config=True,
                                             sys_argv=["restore", *argv])
    rest = fv(["restore", *argv])
    value = holder.value
  except (KeyError, AttributeError) as e:
    raise _Usage(f"unknown config field {str(e).strip(chr(34))} (--help lists them)") from None
  except (flags.Error, ValueError, TypeError) as e:
    raise _Usage(" ".join(str(e).split())) from None
  if len(rest) > 1:
    raise _Usage(f"unexpected arguments: {' '.join(rest[1:])} (settings are --config.KEY=VALUE)")
  if value is None:
    raise _Usage("--config=FILE is required (configs/restore.py of the repository)")
  return value


def check(config) -> None:
  """One-line errors for settings that cannot run, before anything is loaded."""
  from vbridge_jax import restore
  from vbridge_jax.models.configs import DTYPES
  from vbridge_jax.restore_geometry import QUANTIZE
  missing = [k for k in REQUIRED if not config.get(k)]
  if missing:
    raise ValueError("required: " + ", ".join(f"--config.{k}" for k in missing))
  restore.sampler_config(config)  # validates the sampling fields
  for k in ("dtype", "param_dtype", "vae_dtype"):
    if config[k] not in DTYPES and not (k == "vae_dtype" and config[k] is None):
      raise ValueError(f"--config.{k}={config[k]!r} is not one of {', '.join(DTYPES)}")
  if config.quantize not in QUANTIZE:
    raise ValueError(f"--config.quantize={config.quantize!r} is not one of {', '.join(QUANTIZE)}")
  for k in ("frames", "drift_frames", "batch", "num_devices"):
    if int(config[k]) < 0:
      raise ValueError(f"--config.{k}={config[k]} must be >= 0")
  if config.video:
    try:
      from vbridge_jax import video  # noqa: F401
    except ImportError as e:
      raise ValueError(f"--config.video needs vbridge_jax.video and imageio[ffmpeg] ({e})") \
          from None


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    config = parse(argv)
  except _Usage as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from vbridge_jax.checkpoints.io import CheckpointError
  from vbridge_jax.data.files import DataError
  from vbridge_jax.restore_jobs import OutputError
  try:
    return run(config)
  except (FileNotFoundError, ValueError, DataError, CheckpointError, OutputError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1


def _say(msg: str) -> None:
  import jax
  if jax.process_index() == 0:
    print(msg, flush=True)


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective: every process must call it)."""
  import jax
  import numpy as np
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)], np.int32))).max())


def _agree(value: int, what: str) -> None:
  import jax
  import numpy as np
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  seen = np.asarray(multihost_utils.process_allgather(np.array([value], np.int32))).ravel()
  if len(set(seen.tolist())) > 1:
    raise ValueError(f"the processes see different {what} (a shared folder out of sync?)")


def run(config) -> int:
  """The command on a parsed config (its settings resolved here); returns the exit status."""
  config, sources = resolve_settings(config)
  check(config)
  import jax
  from vbridge_jax import sharding as sh
  sh.maybe_initialize_distributed(config.get("distributed"))
  from vbridge_jax import restore_jobs as jobs_lib

  t_start = time.time()
  inp, out_root = Path(config.input), Path(config.output).resolve()
  found, problems = jobs_lib.find_inputs(inp, exclude=out_root)
  jobs_lib.check_unique(found, out_root, {f.resolve() for f, _ in found})
  jobs_lib.check_writable(out_root)
  todo = [(f, rel) for f, rel in found
          if config.overwrite or not jobs_lib.is_done(jobs_lib.output_path(out_root, rel),
                                                      bool(config.video))]
  for p in problems:
    print(f"error: {p}", file=sys.stderr)
  _say(f"{len(found)} image(s) found, {len(found) - len(todo)} already restored, "
       f"{len(todo)} to do")
  head = dict(input=str(inp), output=str(out_root), found=len(found),
              already_restored=len(found) - len(todo), to_do=len(todo), problems=list(problems))
  status = dict(restored=0, failed=[], seconds=0.0)
  rc = 1 if problems else 0
  if todo:
    _check_model(config)
    rc = max(rc, _restore(config, todo, out_root, status, sources))
  status["seconds"] = time.time() - t_start
  jobs_lib.write_status(out_root, jax.process_index(), status)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("restore_summary")
  if jax.process_index() == 0:
    summary = jobs_lib.write_summary(out_root, jax.process_count(), head)
    spi = summary["seconds_per_image"]
    _say(f"restored {summary['restored']}, failed {summary['failed']}"
         + (f", {spi:.2f} s per image" if spi else "") + f"; {out_root / jobs_lib.SUMMARY}")
    rc = max(rc, 1 if summary["failed"] else 0)
  return max(rc, 1 if status["failed"] else 0)


def frame_counts(config) -> tuple[int, int | None]:
  """(base frames, corrector frames or None): `frames` / `drift_frames` when given, else what
  each model folder records (`model.json`; 5 without one)."""
  from vbridge_jax.models import read_model_info
  frames = int(config.frames) or read_model_info(config.model).frames
  if not config.drift:
    return frames, None
  return frames, int(config.drift_frames) or read_model_info(config.drift).frames


def _check_model(config) -> None:
  """The model folders and the prompt file, checked from their configs (nothing loaded yet)."""
  from vbridge_jax import prompts
  from vbridge_jax.checkpoints import io
  from vbridge_jax.models.configs import DiTConfig
  dcfg = DiTConfig.from_dict(io.read_component_config(io.find_component(Path(config.model), "dit")))
  if config.drift:
    io.find_component(Path(config.drift), "dit")
  from vbridge_jax.models import pixel_codec
  if pixel_codec.read_config(config.model) is None:  # the pixel codec's folder is its config
    io.find_component(Path(config.model), "vae")
  prompts.load_prompts(Path(config.prompts), dcfg.text_dim)


def _restore(config, todo, out_root: Path, status: dict, sources: dict[str, str]) -> int:
  """Loads the models and restores `todo` [(file, relative path)]; fills `status`."""
  import jax
  from vbridge_jax import restore_jobs as jobs_lib
  from vbridge_jax.data.files import DataError, image_size, read_rgb  # noqa: E501
  from vbridge_jax import prompts, restore
  from vbridge_jax import sharding as sh
  from vbridge_jax.models import load_dit

  n_dev = int(config.num_devices)
  mesh = sh.create_mesh(dict(config.mesh), jax.devices()[:n_dev] if n_dev > 0 else None)
  rules = sh.rules_from_config(config.logical_axis_rules)
  frames, drift_frames = frame_counts(config)
  overrides = dict(dtype=config.dtype, param_dtype=config.param_dtype)
  vae_overrides = {} if config.vae_dtype is None else dict(dtype=config.vae_dtype)
  _say(settings_line(config, sources))
  _say(f"loading the model from {config.model} onto mesh {dict(mesh.shape)} "
       f"({mesh.size} devices, {jax.process_count()} process(es)) ...")
  t0 = time.time()
  dit = load_dit(config.model, mesh, rules, **overrides)
  drift = load_dit(config.drift, mesh, rules, **overrides) if config.drift else None
  vae = restore.place(restore.load_codec(config.model, mesh, **vae_overrides), mesh, rules)
  positive, negative = prompts.load_prompts(Path(config.prompts), dit.config.text_dim)
  restorer = restore.Restorer(dit, vae, positive, negative, restore.sampler_config(config),
                              frames, drift, int(config.seed), mesh=mesh, rules=rules,
                              drift_frames=drift_frames, quantize=config.quantize)
  _say(f"loaded in {time.time() - t0:.0f} s; {frames} frames"
       + (f", corrector {drift_frames} frames" if drift else ""))
  jobs = []
  for f, rel in todo:
    try:
      w, h = image_size(f)
      jobs.append(jobs_lib.Job(f, rel.as_posix(), jobs_lib.output_path(out_root, rel),
                               restorer.plan(h, w)))
    except DataError as e:
      status["failed"].append(str(e))
      print(f"error: {e}", file=sys.stderr)
  _agree(jobs_lib.fingerprint(jobs), "work lists")
  m = restorer.batch_multiple
  batch = int(config.batch) or m
  if batch % m:
    raise ValueError(f"--config.batch={batch} is not a multiple of the {m} data x fsdp shards")
  batches = jobs_lib.schedule(jobs, batch)
  held, writes = jobs_lib.process_rows(sh.batch_sharding(mesh, 1), batch)
  record = dict(model=str(config.model), drift=str(config.drift), seed=int(config.seed),
                steps=int(config.steps), frames=frames)
  bar = None
  if config.progress and jax.process_index() == 0:
    from tqdm import tqdm
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
    outs = restorer.run_batch(rows, batch, plan, all_frames=bool(config.video),
                              log=_say if jax.process_index() == 0 else None)
    for r in writes:
      if r not in outs or stop:
        continue
      img, frames_w = outs[r]
      j = chunk[r]
      video = None
      if frames_w is not None:
        from vbridge_jax.restore_geometry import to_uint8
        video = [restore.crop_work(to_uint8(fr, config.quantize), j.plan) for fr in frames_w]
      try:
        jobs_lib.write_output(img, j.dst, dict(record, source=j.rel), video)
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


if __name__ == "__main__":
  sys.exit(main())
