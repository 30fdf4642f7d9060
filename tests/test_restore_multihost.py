"""Restore on two real JAX processes (4 CPU devices each, gloo collectives) as on a pod.

The same command runs in each process (`--config.distributed.*` start `jax.distributed`);
the mesh (`data=8`) spans both, so every batch is one collective program. The tree has five
images of one working size and one of another: with a global batch of 8 (4 rows per
process), process 1 holds one image in the first batch and none in the second (unequal
and empty shares), which must not hang. The files and bytes equal those of one process (run
beside them) with a global batch of 4: other batches, other process count, same bytes.

The reference has 4 devices like each worker: XLA:CPU's arithmetic depends on how many
devices share a process (measured: with 8 devices in one process, one pixel of one image
comes out one level apart from 4 or 2 devices per process, or two processes of 4), an
effect of the CPU backend's threading, not of the restore's batching or its processes.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_restore import _args, _pngs, model_dir  # noqa: F401  (the module fixture)
from vbridge_jax.inference import jobs

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  """A worker's environment: its device count; gloo for CPU collectives; XLA:CPU's Eigen
  kernels single-threaded, so that a device's arithmetic does not depend on how many devices
  share the process's thread pool (a last-bit difference can flip a truncated uint8 level)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false")
  return env


def _files(root: Path) -> dict[str, bytes]:
  """Every output file (PNGs and their sidecars), not the per-process status or summary."""
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file() and jobs.STATUS_DIR not in p.parts and p.name != jobs.SUMMARY}


@pytest.mark.slow
def test_two_processes_write_the_bytes_of_one(model_dir, tmp_path):  # noqa: F811
  rng = np.random.default_rng(5)
  tree = tmp_path / "tree" / "Blur" / "LQ"
  tree.mkdir(parents=True)
  for i, (h, w) in enumerate([(40, 50), (33, 64), (47, 35), (64, 60), (50, 41), (20, 90)]):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tree / f"{i}.png")
  address = f"127.0.0.1:{_free_port()}"
  runs = [(_args(model_dir, tmp_path / "tree", tmp_path / "one"), 4)]  # the one-process reference
  for i in range(2):
    runs.append((_args(model_dir, tmp_path / "tree", tmp_path / "two") + [
        "--config.distributed.enabled=on", f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"], 4))
  procs, logs = [], []
  for i, (args, devices) in enumerate(runs):
    logs.append(tmp_path / f"p{i}.log")
    with open(logs[-1], "wb") as f:
      procs.append(subprocess.Popen([sys.executable, "-m", "vbridge_jax.restore", *args],
                                    env=_env(devices), stdout=f, stderr=subprocess.STDOUT, cwd=REPO))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = "\n".join(f"--- run {i} rc {p.returncode}:\n{l.read_text()[-3000:]}"
                    for i, (p, l) in enumerate(zip(procs, logs)))
  assert [p.returncode for p in procs] == [0, 0, 0], tails
  one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
  assert len([k for k in one if k.endswith(".png")]) == 6
  assert one.keys() == two.keys()
  assert [k for k in one if one[k] != two[k]] == [], tails
  summary = json.loads((tmp_path / "two" / jobs.SUMMARY).read_text())
  assert (summary["restored"], summary["failed"], summary["processes"]) == (6, 0, 2)
  status = [json.loads((tmp_path / "two" / jobs.STATUS_DIR / f"process_{i}.json").read_text())
            for i in range(2)]
  # batch 0: 5.png alone (process 1 holds none); batch 1: 0-3 on process 0, 4 on process 1
  assert [s["restored"] for s in status] == [5, 1]
