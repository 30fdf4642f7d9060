"""The trainer's fault suite (issue 16): run records, corrupt checkpoints, a failed save,
config errors. Tiny runs of 4 steps at 32 px on the demo set; one persistent compilation
cache and one latent cache for the module, so the step compiles once."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from tests.conftest import set_fields
from vbridge_jax.configs import curriculum
from vbridge_jax.training import trainer
from vbridge_jax.utils.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parent.parent


def read_events(path: Path) -> list:
  """The `Event` protos of a TensorBoard events file (TFRecord framing; CRCs not checked)."""
  from tensorboardX.proto import event_pb2
  out, data = [], path.read_bytes()
  i = 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    ev = event_pb2.Event()
    ev.ParseFromString(data[i + 12:i + 12 + n])
    out.append(ev)
    i += 12 + n + 4
  return out


def scalar_steps(workdir: Path, tag: str = "train/loss") -> list[list[int]]:
  """Per events file (oldest first): the steps of `tag`, and a purge marker as -step."""
  files = sorted((workdir / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
  out = []
  for f in files:
    steps = []
    for ev in read_events(f):
      if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
        steps.append(-ev.step)
      steps += [ev.step for v in ev.summary.value if v.tag == tag]
    out.append(steps)
  return out


pytestmark = pytest.mark.usefixtures("persistent_compiles")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
  from vbridge_jax.data import fewshot
  out = tmp_path_factory.mktemp("demo")
  fewshot.build(out, per_category=1, size=96, categories=("Blur", "Noise"))
  return str(out)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("latents"))


def _config(demo: str, latent_dir: str, **kw):
  c = curriculum.get_config("tiny_wan")
  c.data.source = demo
  c.stages = "32"
  c.total_steps = 4
  c.data.batch_size = 8
  c.data.balance = False
  c.log_every = 1
  c.progress = False
  c.samples.every_steps = -1
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 5
  c.mesh.update(dict(data=1, fsdp=8, context=1, tensor=1))
  c.latent_cache.enabled = True
  c.latent_cache.dir = latent_dir
  c.compiler_options = dict(xla_backend_optimization_level=0)
  return set_fields(c, **kw)


def _rows(workdir: Path) -> list[int]:
  return [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _snapshot(workdir: Path) -> dict[str, bytes]:
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file()}


@pytest.fixture(scope="module")
def finished(demo, latent_dir, tmp_path_factory) -> Path:
  """A run of 4 steps that finished (checkpoints 2 and 4)."""
  workdir = tmp_path_factory.mktemp("finished")
  out = trainer.train_and_evaluate(_config(demo, latent_dir), str(workdir))
  assert out["step"] == 4 and _rows(workdir) == [1, 2, 3, 4]
  return workdir


def _copy(src: Path, dest: Path) -> Path:
  import shutil
  shutil.copytree(src, dest)
  return dest


# --------------------------------------------------------------------------- 16.4 run records


def test_rejected_rerun_writes_nothing(demo, latent_dir, finished, tmp_path):
  """A rerun with a bad config fails before touching config.json (or anything else)."""
  workdir = _copy(finished, tmp_path / "run")
  before = _snapshot(workdir)
  with pytest.raises(ConfigError, match="stages"):
    trainer.train_and_evaluate(_config(demo, latent_dir, stages="abc"), str(workdir))
  assert _snapshot(workdir) == before


def test_rerunning_a_finished_run_leaves_its_records(demo, latent_dir, finished, tmp_path):
  workdir = _copy(finished, tmp_path / "run")
  before = _snapshot(workdir)
  final = json.loads((workdir / "final.json").read_text())
  assert final["step"] == 4 and final["last"]["step"] == 4 and "loss" in final["last"]
  out = trainer.train_and_evaluate(_config(demo, latent_dir), str(workdir))
  assert out["step"] == 4 and out["loss"] == final["last"]["loss"]
  assert _snapshot(workdir) == before  # final.json, metrics, no new (empty) events file


def test_resume_that_replays_steps_truncates_metrics_and_tensorboard(demo, latent_dir, finished,
                                                                     tmp_path):
  """Checkpoint 4 lost (a kill during its save): the rerun replays steps 3-4; the records
  hold each step once, and TensorBoard purges the first run's rows after step 2."""
  workdir = _copy(finished, tmp_path / "run")
  import shutil
  shutil.rmtree(workdir / "checkpoints" / "4")
  trainer.train_and_evaluate(_config(demo, latent_dir), str(workdir))
  assert _rows(workdir) == [1, 2, 3, 4]
  first, second = scalar_steps(workdir)
  assert first == [1, 2, 3, 4] and second == [-3, 3, 4]


# ------------------------------------------------------------------- 16.8 corrupt checkpoint


def _corrupt(ckpt: Path, how: str) -> None:
  if how == "missing state":
    import shutil
    shutil.rmtree(ckpt / "state")
  elif how == "truncated chunk":
    chunks = [p for p in (ckpt / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)
              and p.stat().st_size > 1000]
    assert chunks, sorted(str(p) for p in (ckpt / "state").rglob("*"))
    for c in chunks:
      c.write_bytes(c.read_bytes()[:len(c.read_bytes()) // 3])
  elif how == "truncated iterator":
    for p in (ckpt / "data").rglob("*.json"):
      p.write_text(p.read_text()[:5])
  elif how == "truncated metadata":
    p = ckpt / "state" / "_METADATA"
    p.write_text(p.read_text()[:10])


@pytest.mark.parametrize("how", ["truncated chunk", "truncated iterator", "missing state",
                                 "truncated metadata"])
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact(demo, latent_dir, finished,
                                                                  tmp_path, caplog, how):
  workdir = _copy(finished, tmp_path / "run")
  _corrupt(workdir / "checkpoints" / "4", how)
  (workdir / "final.json").unlink()  # as if killed before the end
  cfg = _config(demo, latent_dir, total_steps=6, stages="32")
  with caplog.at_level("WARNING"):
    out = trainer.train_and_evaluate(cfg, str(workdir))
  assert out["step"] == 6
  lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(lines) == 1 and "step 4" in lines[0] and "resumed from step 2" in lines[0], lines
  assert "\n" not in lines[0]
  assert (workdir / "checkpoints.unreadable" / "4").is_dir()  # kept, never deleted
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4, 6]
  assert _rows(workdir) == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_a_one_line_error(demo, latent_dir, finished, tmp_path):
  workdir = _copy(finished, tmp_path / "run")
  for step in (2, 4):
    _corrupt(workdir / "checkpoints" / str(step), "missing state")
  cfg = _config(demo, latent_dir, total_steps=6, stages="32")
  with pytest.raises(CheckpointError, match="no intact checkpoint") as e:
    trainer.train_and_evaluate(cfg, str(workdir))
  assert "\n" not in str(e.value) and "step 4" in str(e.value) and "step 2" in str(e.value)
  assert (workdir / "checkpoints" / "4").is_dir() and (workdir / "checkpoints" / "2").is_dir()


# ------------------------------------------------------------------ 16.10 failed async save


def test_failed_async_save_stops_before_the_next_log_line(demo, latent_dir, tmp_path,
                                                          monkeypatch):
  """The meta item of step 4 fails in the background (disk full): the run stops with one
  line naming step 4 before logging step 6, and keeps the good step-2 checkpoint."""
  import errno
  import threading

  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
  original = jh.JsonCheckpointHandler._save_fn
  failed = threading.Event()

  async def full_disk(self, x, directory):
    if isinstance(x, dict) and x.get("step") == 4:
      failed.set()
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await original(self, x, directory)

  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full_disk)
  real_log = trainer.MetricsLogger.log

  def slow_log(self, step, metrics):  # the background save fails before step 3 is logged
    if step == 5:
      failed.wait(30)
      import time
      time.sleep(0.5)
    return real_log(self, step, metrics)

  monkeypatch.setattr(trainer.MetricsLogger, "log", slow_log)
  cfg = _config(demo, latent_dir, total_steps=8)
  cfg.checkpoint.use_async = True
  with pytest.raises(CheckpointError) as e:
    trainer.train_and_evaluate(cfg, str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "step 4" in msg and "No space left" in msg, msg
  assert "Last good checkpoint: step 2" in msg
  assert max(_rows(tmp_path)) < 6
  assert not (tmp_path / "checkpoints" / "4").exists()
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as ck:  # the last good checkpoint reads back whole
    assert len(jax.tree.leaves(ck.restore(tmp_path / "checkpoints" / "2" / "state"))) > 10


# ---------------------------------------------------------------------- 16.11 config errors


@pytest.mark.parametrize("override,needle", [
    ("data.batch_size=0", "batch_size"),
    ("lora.targets=bogus", "bogus"),
    ("mesh.fsdp=3", "mesh"),
    ("nope=1", "nope"),
])
def test_config_errors_are_one_line_before_anything_is_written(tmp_path, override, needle):
  workdir = tmp_path / "run"
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.train",
                      "--config=configs/curriculum.py:tiny_wan", f"--workdir={workdir}",
                      "--config.finetune=lora", f"--config.{override}"],
                     capture_output=True, text=True, cwd=REPO,
                     env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                              XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert r.returncode == 1, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr[-2000:]
  assert not workdir.exists()


def test_lora_targets_with_spaces_parse_once_for_setup_and_flops(demo, latent_dir, tmp_path):
  """"q, k" was accepted by setup and crashed in the trainer's FLOP count at a stage start."""
  from vbridge_jax.training import setup
  cfg = _config(demo, latent_dir, finetune="lora", total_steps=1)
  cfg.lora.targets = "q, k"
  cfg.lora.rank = 4
  assert setup.lora_targets(cfg) == ["q", "k"]
  assert trainer.train_and_evaluate(cfg, str(tmp_path))["step"] == 1


# ------------------------------------------------- 15.5 / 15.6: help, ETA, progress, profile


def _help(module: str) -> subprocess.CompletedProcess:
  """`python -m MODULE --help` from the repository."""
  return subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                        text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_train_help_lists_variants_and_fields_and_exits_0():
  r = _help("vbridge_jax.train")
  assert r.returncode == 0, r.stderr[-1500:]
  assert "'tiny'" in r.stdout and "--config.data.batch_size=8" in r.stdout
  assert "--config.profile.start_step=-1" in r.stdout and "--workdir" in r.stdout


def test_aot_help_lists_flags_variants_and_fields_and_exits_0():
  r = _help("vbridge_jax.aot")
  assert r.returncode == 0, r.stderr[-1500:]
  assert "--topology" in r.stdout and "--restore_size" in r.stdout
  assert "'tiny_wan'" in r.stdout and "--config.mesh.fsdp=-1" in r.stdout


@pytest.mark.parametrize("module", ["vbridge_jax.data.fewshot", "vbridge_jax.data.prepare",
                                    "vbridge_jax.export", "vbridge_jax.miniature"])
def test_argparse_commands_help_lists_defaults_in_one_spelling(module, capsys):
  import importlib
  with pytest.raises(SystemExit) as e:
    importlib.import_module(module).main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and "default" in out
  # One spelling: underscores (absl's and the config fields'); a hyphenated alias may follow.
  primary = [line.split()[0].rstrip(",") for line in out.splitlines() if line.startswith("  --")]
  assert primary and all("-" not in w[2:] for w in primary), primary


def test_every_training_config_lists_its_variants():
  """configs/drift.py has a VARIANTS table like the others, so --help names its variants."""
  from vbridge_jax.utils import cli  # not train: its absl flags clash with aot's in one process
  text = cli.config_text([f"--config={REPO / 'configs' / 'drift.py'}"],
                              REPO / "configs" / "curriculum.py")
  assert "Variants (--config=FILE:VARIANT): (none), 'tiny'" in text
  assert "--config.data.drift_outputs=''" in text


def test_eta_after_warm_up_and_plain_progress_lines_in_a_file(tmp_path, caplog):
  """The first line's rate includes compiling: no ETA from it. Not on a terminal (here
  pytest captures stderr), progress is one log line per row, no tqdm carriage returns."""
  from vbridge_jax.training.logs import MetricsLogger
  logger = MetricsLogger(str(tmp_path), total_steps=10, start_step=0, progress=True)
  assert logger._bar is None
  with caplog.at_level("INFO", logger="vbridge_jax.training.trainer"):
    first = logger.log(2, {"loss": 1.0})
    second = logger.log(4, {"loss": 0.5})
  logger.close()
  assert first["eta_sec"] is None and second["eta_sec"] is not None
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 2 and "ETA warming up" in lines[0] and "\r" not in "".join(lines)


def test_profile_traces_the_configured_steps(tmp_path):
  import jax.numpy as jnp
  import ml_collections
  prof = trainer._Profile(ml_collections.ConfigDict(dict(start_step=2, stop_step=3)),
                          str(tmp_path))
  f = jax.jit(lambda x: x * 2)
  x = jnp.ones(4)
  for step in range(5):
    prof.before(step)
    assert prof.active == (step in (1, 2))  # steps 2..3 (from 1) are running
    x = f(x)
    prof.after(step + 1, x)
  assert not prof.active
  assert [p for p in (tmp_path / "profile").rglob("*") if p.is_file()]


def test_resuming_checkpoints_of_another_model_or_demo_set_is_refused(tmp_path):
  """A workdir's checkpoints are resumed only under the model and demo data they were made
  with (`trainer._RUN_FIELDS`): two heads and six have the same parameter shapes, so the
  weights would load without a complaint into the other model."""
  wd = tmp_path / "run"
  (wd / "checkpoints" / "200").mkdir(parents=True)
  saved = curriculum.get_config("tiny")
  (wd / "config.json").write_text(saved.to_json_best_effort())
  before = sorted(p.name for p in wd.rglob("*"))

  other_heads = curriculum.get_config("tiny")
  other_heads.model.dit_overrides.num_heads = 6
  with pytest.raises(ConfigError, match=r"config\.json: .* model\.dit_overrides=.*\"num_heads\": 2"):
    trainer.train_and_evaluate(other_heads, str(wd))
  other_demo = curriculum.get_config("tiny")
  other_demo.data.demo_per_category = 4
  with pytest.raises(ConfigError, match=r"data\.demo_per_category=32, this config has 4"):
    trainer.train_and_evaluate(other_demo, str(wd))
  assert sorted(p.name for p in wd.rglob("*")) == before  # refused before anything is written

  longer = curriculum.get_config("tiny")  # length, logging, sampler: free to change
  longer.total_steps, longer.log_every, longer.eval.steps = 3000, 5, 8
  longer.lora.rank = 8  # a full fine-tune has no adapter
  trainer._check_same_run(longer, str(wd))
  other_demo.data.source = str(tmp_path / "pairs")  # demo sizes do not matter off the demo
  other_demo.data.demo_per_category = 32
  trainer._check_same_run(other_demo, str(wd))
  old = json.loads((wd / "config.json").read_text())  # a config.json from before a field
  del old["data"]["demo_per_category"]
  (wd / "config.json").write_text(json.dumps(old))
  other_demo.data.source, other_demo.data.demo_per_category = "demo", 4
  trainer._check_same_run(other_demo, str(wd))


# --------------------------------------------------------- issue 23: what a finished run is


def _eval_fields(demo: str) -> dict:
  return {"eval.source": demo, "eval.steps": 1, "eval.solver": "euler",
          "eval.schedule": "diffusers", "eval.size": 32, "eval.max_images": 2}


def test_a_kill_during_the_final_evaluation_is_finished_by_the_rerun(demo, latent_dir, finished,
                                                                      tmp_path):
  """Killed after the last checkpoint, before the final held-out evaluation and final.json:
  the rerun evaluated nothing and printed `done: step 4, loss None`; now it resumes at the
  last step, evaluates it and records the result."""
  workdir = _copy(finished, tmp_path / "run")
  last = json.loads((workdir / "final.json").read_text())["last"]
  (workdir / "final.json").unlink()
  out = trainer.train_and_evaluate(_config(demo, latent_dir, **_eval_fields(demo)), str(workdir))
  assert out["step"] == 4 and out["loss"] == last["loss"]
  assert (workdir / "eval" / "step_0000004.json").is_file()
  assert json.loads((workdir / "final.json").read_text())["last"]["loss"] == last["loss"]
  assert _rows(workdir)[:4] == [1, 2, 3, 4] and _rows(workdir)[4:] == [4]  # + the held-out row


@pytest.mark.parametrize("field, value", [("seed", 7), ("data.frames", 9)])
def test_resuming_under_another_seed_or_clip_length_is_refused(demo, latent_dir, tmp_path, field,
                                                               value):
  wd = tmp_path / "run"
  (wd / "checkpoints" / "2").mkdir(parents=True)
  (wd / "config.json").write_text(_config(demo, latent_dir).to_json_best_effort())
  with pytest.raises(ConfigError, match=rf"config\.json: .* {re.escape(field)}=.*this config has {value}"):
    trainer.train_and_evaluate(_config(demo, latent_dir, **{field: value}), str(wd))


@pytest.mark.parametrize("field, value", [
    ("optim.lr", -1.0), ("optim.lr", float("nan")), ("optim.clip_schedule", "bogus"),
    ("flow.sampling", "bogus"), ("model.dtype", "float16"), ("model.remat", "some"),
    ("model.attention", "flash"), ("eval.solver", "bogus"), ("optim.warmup_steps", -3),
    ("samples.steps", 0)])
def test_every_field_is_checked_before_config_json_is_written(demo, latent_dir, finished,
                                                              tmp_path, field, value):
  """On a finished run these crashed with a traceback after config.json was rewritten (and
  export then trusted it); the command prints a ConfigError as one line
  (test_config_errors_are_one_line_before_anything_is_written)."""
  workdir = _copy(finished, tmp_path / "run")
  before = _snapshot(workdir)
  with pytest.raises(ConfigError, match=re.escape(field.split(".")[-1])):
    trainer.train_and_evaluate(_config(demo, latent_dir, **{field: value}), str(workdir))
  assert _snapshot(workdir) == before


def test_sigterm_saves_and_the_rerun_resumes_exactly(demo, latent_dir, finished, tmp_path):
  """A SIGTERM (a preemption notice) during training: a checkpoint of the step it arrived at,
  exit with an error naming it; the rerun resumes there and ends with the uninterrupted
  run's loss."""
  from vbridge_jax.utils.errors import PreemptedError
  workdir = tmp_path / "run"
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(PreemptedError, match=r"SIGTERM\) at step 1: saved a checkpoint of step 1"):
    trainer.train_and_evaluate(_config(demo, latent_dir, debug_sigterm_at_step=1), str(workdir))
  assert signal.getsignal(signal.SIGTERM) == handler  # restored
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1]
  assert not (workdir / "final.json").exists()
  out = trainer.train_and_evaluate(_config(demo, latent_dir), str(workdir))
  final = json.loads((finished / "final.json").read_text())["last"]
  assert out["step"] == 4 and out["loss"] == final["loss"] and _rows(workdir) == [1, 2, 3, 4]


def test_a_second_trainer_on_one_workdir_is_refused(demo, latent_dir, finished, tmp_path):
  """Two trainers on one workdir both ran, leaving duplicated, out-of-order metric rows."""
  from vbridge_jax.utils import lock
  workdir = _copy(finished, tmp_path / "run")
  (workdir / "final.json").unlink()  # not finished: a trainer would train
  with lock.exclusive(workdir / trainer.LOCK, what="training"):  # another trainer, running
    before = _snapshot(workdir)
    with pytest.raises(lock.LockedError, match=r"another process is writing it \(pid \d+"):
      trainer.train_and_evaluate(_config(demo, latent_dir), str(workdir))
    assert {k: v for k, v in _snapshot(workdir).items() if k != trainer.LOCK} == {
        k: v for k, v in before.items() if k != trainer.LOCK}
