"""Restore throughput, replicated vs FSDP-sharded weights and 1 vs 2 processes, in one run.

    python benchmarks/restore_scale.py [--images 32] [--size 64] [--steps 4] [--out DIR]

Runs the restore command itself (`python -m vbridge_jax.restore`) on the tiny random model
of `convert/tiny_repo.py` (needs the `test` extra: torch, diffusers) over `--images` images
of one working size, four times, side by side on the same 8 fake CPU devices:

| run | processes x devices | mesh |
| replicated, 1 process | 1 x 8 | data=8 |
| FSDP, 1 process | 1 x 8 | fsdp=8 |
| replicated, 2 processes | 2 x 4 | data=8 (gloo collectives) |
| FSDP, 2 processes | 2 x 4 | fsdp=8 |

Each row gives the steady rate (images/s after the first, compiling batch, from the
command's `restore_summary.json`), the first batch's time (compiles) and the whole run's
wall time, and the ratio to the first row.

What a CPU can say: that the sharded and multi-process paths run the same work with the
same outputs, and what they cost in overhead on one machine (weights all-gathered per
layer under FSDP; a second process, its model load, gloo messages and the duplicate
compile). What it cannot say: how a pod scales. The 8 fake devices share this machine's
cores, so adding devices or processes adds no compute, and XLA:CPU collectives through
shared memory or gloo have nothing of a TPU's ICI bandwidth or latency. For a pod, the
per-chip memory of the step is the trustworthy figure (`python -m vbridge_jax.aot
--steps=restore`; README, Scale), and throughput scales with chips as long as the
batch keeps one image per data x fsdp shard.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUNS = (("replicated, 1 process", 1, {"data": 8, "fsdp": 1}),
        ("FSDP, 1 process", 1, {"data": 1, "fsdp": 8}),
        ("replicated, 2 processes", 2, {"data": 8, "fsdp": 1}),
        ("FSDP, 2 processes", 2, {"data": 1, "fsdp": 8}))


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_inputs(root: Path, images: int, size: int) -> tuple[Path, Path]:
  """The converted tiny model and a folder of random images."""
  sys.path.insert(0, str(REPO))
  from PIL import Image

  from tests.conftest import load_script
  from vbridge_jax.checkpoints import convert_path
  tiny = load_script("tiny_repo")
  tiny.tiny_dit(0).save_pretrained(root / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(root / "repo" / "vae")
  convert_path(root / "repo", root / "model", log=lambda _: None)
  rng = np.random.default_rng(0)
  np.savez(root / "prompts.npz", positive=rng.standard_normal((7, 32)).astype(np.float32),
           negative=rng.standard_normal((5, 32)).astype(np.float32))
  tree = root / "images"
  tree.mkdir()
  for i in range(images):
    Image.fromarray(rng.integers(0, 256, (size - 3, size - 5, 3), dtype=np.uint8)).save(tree / f"{i:04d}.png")
  return root, tree


def run_one(root: Path, tree: Path, out: Path, processes: int, mesh: dict, steps: int) -> dict:
  address = f"127.0.0.1:{_port()}"
  args = [sys.executable, "-m", "vbridge_jax.restore", f"--config={REPO / 'configs' / 'restore.py'}:tiny",
          f"--config.model={root / 'model'}", f"--config.prompts={root / 'prompts.npz'}",
          f"--config.input={tree}", f"--config.output={out}", f"--config.steps={steps}",
          "--config.progress=false", *[f"--config.mesh.{k}={v}" for k, v in mesh.items()]]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  t0 = time.time()
  procs = []
  for i in range(processes):
    extra = [] if processes == 1 else [
        "--config.distributed.enabled=on", f"--config.distributed.coordinator_address={address}",
        f"--config.distributed.num_processes={processes}", f"--config.distributed.process_id={i}"]
    procs.append(subprocess.Popen(args + extra, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise SystemExit(f"a run failed:\n{logs[0][-2000:]}")
  summary = json.loads((out / "restore_summary.json").read_text())
  return dict(summary, wall=time.time() - t0)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=32)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--out", default="", help="work folder (default: a temporary one)")
  a = p.parse_args()
  root = Path(a.out or tempfile.mkdtemp(prefix="restore_scale_"))
  root.mkdir(parents=True, exist_ok=True)
  root, tree = make_inputs(root, a.images, a.size)
  rows = []
  for name, processes, mesh in RUNS:
    s = run_one(root, tree, root / name.replace(", ", "_").replace(" ", "_"), processes, mesh, a.steps)
    rows.append((name, processes, mesh, s))
    print(f"done: {name}", file=sys.stderr)
  base = rows[0][3]["steady_images_per_second"]
  print(f"{a.images} images of {a.size - 3}x{a.size - 5} ({a.size}x{a.size} working size), "
        f"{a.steps} UniPC steps, tiny model, 8 fake CPU devices on {os.cpu_count()} cores\n")
  print("| run | processes x devices | mesh d/f | steady img/s | vs first row | first batch s | wall s |")
  print("|---|---|---|---|---|---|---|")
  for name, processes, mesh, s in rows:
    ips = s["steady_images_per_second"]
    print(f"| {name} | {processes} x {8 // processes} | {mesh['data']}/{mesh['fsdp']} | {ips:.2f} | "
          f"{ips / base:.2f} | {s['first_batches_seconds']:.1f} | {s['wall']:.1f} |")


if __name__ == "__main__":
  main()
