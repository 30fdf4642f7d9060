"""Multi-host training for real: two JAX processes on this machine, 4 CPU devices each.

`tests/multihost_worker.py` runs `trainer.train_and_evaluate` on a tiny config over an
8-device global mesh (`fsdp=2` across the processes, `tensor=4` within each). The trainer
calls `jax.distributed.initialize` from the config's `distributed` block (a localhost
coordinator on a free port); cross-process collectives on XLA:CPU go through gloo.

Asserted:
- a two-process run, stopped after step 1 and resumed by a second two-process launch in the
  same workdir, logs the same losses as one process with 8 devices (within 1e-5);
- each process reads only its shard of the data: its first local batch is its contiguous
  block (two rows) of the one-process global batch;
- only process 0 writes logs (metrics.jsonl, TensorBoard, config.json, final.json) and the
  sample grid (which both processes compute); the metrics hold one row per step;
- both processes write checkpoints (a tensorstore folder and a data-iterator state each)
  and both restore them (the resumed losses depend on the parameter shards and iterator
  state of both processes).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve().parent / "multihost_worker.py"
TIMEOUT_S = 240  # per launch (both processes)
XLA_OPT = "--xla_backend_optimization_level=0"  # as tests/conftest.py: faster compiles


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
  from vbridge_jax.data import fewshot
  out = tmp_path_factory.mktemp("demo")
  fewshot.build(out, per_category=1, size=96, categories=("Blur", "Noise", "Haze", "Rain"))
  return str(out)


def _free_port() -> int:
  """A localhost TCP port that was free a moment ago (for the coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: Path | None) -> dict[str, str]:
  """The worker's environment: its own device count; a compile cache shared by launches."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_COMPILATION_CACHE"))}
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {XLA_OPT}")
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _tail(path: Path, n: int = 3000) -> str:
  return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


class _Launch:
  """Worker processes started together; `wait` bounds them, kills all on any failure."""

  def __init__(self, name: str, tmp: Path, runs: list[tuple[list[str], dict[str, str]]]):
    self.name, self.procs, self.logs = name, [], []
    for i, (args, env) in enumerate(runs):
      log = tmp / f"{name}.{i}.log"
      with open(log, "wb") as f:
        self.procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                                           stdout=f, stderr=subprocess.STDOUT))
      self.logs.append(log)
    self.deadline = time.monotonic() + TIMEOUT_S

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def wait(self) -> None:
    failed = None
    while failed is None and any(p.poll() is None for p in self.procs):
      if time.monotonic() > self.deadline:
        failed = f"timed out after {TIMEOUT_S} s"
      elif any(p.poll() not in (None, 0) for p in self.procs):
        failed = "a process failed"
      else:
        time.sleep(0.2)
    if failed is None and any(p.returncode != 0 for p in self.procs):
      failed = "a process failed"
    if failed:
      self.kill()
      tails = "\n".join(f"--- {self.name} process {i} (rc {p.returncode}):\n{_tail(log)}"
                        for i, (p, log) in enumerate(zip(self.procs, self.logs)))
      pytest.fail(f"{self.name}: {failed}\n{tails}")


def _two_processes(name: str, tmp: Path, workdir: Path, demo: str, cache: Path,
                   extra: list[str]) -> _Launch:
  address = f"127.0.0.1:{_free_port()}"
  runs = [(["--workdir", str(workdir), "--data", demo, "--result", str(tmp / f"{name}.{i}.json"),
            "--coordinator", address, "--num-processes", "2", "--process-id", str(i), *extra],
           _env(4, cache)) for i in range(2)]
  return _Launch(name, tmp, runs)


def _result(tmp: Path, name: str) -> dict:
  return json.loads((tmp / f"{name}.json").read_text())


def _losses(workdir: Path) -> list[float]:
  return [json.loads(l)["loss"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_and_resume(demo, tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  launches = []
  try:
    # The one-process reference (8 devices) runs beside the first two-process launch.
    launches.append(_Launch("one", tmp_path, [(["--workdir", str(one), "--data", demo, "--result",
                                                str(tmp_path / "one.0.json")],
                                               _env(8, None))]))
    launches.append(_two_processes("first", tmp_path, two, demo, tmp_path / "cache_two",
                                   ["--stop-at", "1"]))
    launches[1].wait()
    launches[0].wait()
    steps = sorted(int(p) for p in os.listdir(two / "checkpoints") if p.isdigit())
    assert steps == [1]
    # The resume: a new pair of processes (new coordinator) in the same workdir.
    launches.append(_two_processes("second", tmp_path, two, demo, tmp_path / "cache_two", []))
    launches[2].wait()
  finally:
    for launch in launches:
      launch.kill()

  r1 = _result(tmp_path, "one.0")
  assert (r1["process_count"], r1["global_devices"], r1["local_devices"]) == (1, 8, 8)
  for name in ("first", "second"):
    rs = [_result(tmp_path, f"{name}.{i}") for i in range(2)]
    for i, r in enumerate(rs):
      assert (r["process_index"], r["process_count"]) == (i, 2), name
      assert (r["global_devices"], r["local_devices"]) == (8, 4), name
      # Data: each process reads its two rows of the one-process global batch.
      assert r["local_rows"] == r1["local_rows"][2 * i:2 * i + 2], name
    assert rs[0]["out"]["step"] == rs[1]["out"]["step"] == (1 if name == "first" else 3)
    # Logs: process 0 writes them all, process 1 nothing outside checkpoints/.
    assert rs[1]["writes"] == [], name
    w0 = [_final_name(w) for w in rs[0]["writes"]]  # atomic writes go through a temporary
    assert {"metrics.jsonl", "config.json", "final.json"} <= set(w0), name
    assert sum(w.startswith("tensorboard/") for w in w0) == 1, name
    # Samples: both processes run the sampler over the sharded model; process 0 writes.
    assert [w for w in w0 if w.startswith("samples/")] == (
        [] if name == "first" else ["samples/step_0000003.png"]), name

  # Losses: stopped after step 1, resumed for steps 2 and 3, as one process straight through.
  ref_losses, losses = _losses(one), _losses(two)
  assert len(ref_losses) == 3 and len(set(ref_losses)) == 3
  np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
  assert len(list((two / "tensorboard").iterdir())) == 2  # one events file per launch

  # The grid from two processes shows what one process draws (weights equal within 1e-5).
  from PIL import Image
  grids = [np.asarray(Image.open(d / "samples" / "step_0000003.png"), np.int16) for d in (one, two)]
  assert grids[0].shape == grids[1].shape and np.abs(grids[0] - grids[1]).max() <= 2

  # Checkpoints: written by both processes (state shards and iterator state), every step.
  assert sorted(int(p) for p in os.listdir(two / "checkpoints") if p.isdigit()) == [1, 2, 3]
  for step in (1, 3):
    ck = two / "checkpoints" / str(step)
    for i in range(2):
      assert (ck / "state" / f"ocdbt.process_{i}").is_dir(), (step, i)
      assert (ck / "data" / f"process_{i}-of-2.json").is_file(), (step, i)


@pytest.mark.slow
def test_a_sigterm_to_one_process_saves_every_process_at_one_step(demo, tmp_path):
  """A preemption notice (SIGTERM) to process 1 after step 1: JAX's preemption service
  (through orbax's save policy) picks one step, both processes save it and stop with the
  one-line error; a new launch resumes there and finishes the run."""
  wd, cache = tmp_path / "run", tmp_path / "cache"
  address = f"127.0.0.1:{_free_port()}"
  procs, logs = [], []
  for i in range(2):
    logs.append(tmp_path / f"preempted.{i}.log")
    args = ["--workdir", str(wd), "--data", demo, "--result", str(tmp_path / f"preempted.{i}.json"),
            "--coordinator", address, "--num-processes", "2", "--process-id", str(i)]
    with open(logs[-1], "wb") as f:
      procs.append(subprocess.Popen([sys.executable, str(WORKER), *args] +
                                    (["--sigterm-at", "1"] if i == 1 else []),
                                    env=_env(4, cache), stdout=f, stderr=subprocess.STDOUT))
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      p.kill()
  said = [re.findall(r"preempted \(SIGTERM\) at step (\d+): saved", _tail(log, 100_000))
          for log in logs]
  assert all(p.returncode not in (0, None) for p in procs), [_tail(log) for log in logs]
  assert said[0] and said[0] == said[1], [_tail(log) for log in logs]  # one step, both
  step = int(said[0][0])
  assert 1 < step < 3 and not (wd / "final.json").exists()
  before = (wd / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in before] == list(range(1, step + 1))
  launch = _two_processes("resumed", tmp_path, wd, demo, cache, [])
  try:
    launch.wait()
  finally:
    launch.kill()
  after = (wd / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in after] == [1, 2, 3]
  assert after[:step] == before  # resumed at the saved step: its rows (with their timings) kept
  assert _result(tmp_path, "resumed.0")["out"]["step"] == 3


def _final_name(path: str) -> str:
  """The file an atomic write's temporary (`utils.atomic`: `.NAME.PID.tmpSUFFIX`) becomes."""
  m = re.fullmatch(r"(.*/)?\.(.+)\.\d+\.tmp(\.\w+)?", path)
  return path if m is None else f"{m[1] or ''}{m[2]}{m[3] or ''}"
