"""One process of the multi-host trainer test (`tests/test_multihost.py` launches it).

    python tests/multihost_worker.py --workdir DIR --data DIR --result FILE.json \
        [--coordinator HOST:PORT --num-processes N --process-id I] [--stop-at STEP]

Runs `trainer.train_and_evaluate` on the tiny curriculum config shrunk to the test's size
(one 32 px stage, 5 frames, 3 steps without warm-up, global batch 4, a checkpoint every
step, a sample grid at the end, 8 global devices on a `fsdp=2, tensor=4` mesh). With `--coordinator` the config's `distributed` block makes the trainer call
`jax.distributed.initialize` itself (the first JAX call of the process), with gloo CPU
collectives. The caller sets `XLA_FLAGS` (device count per process) and `JAX_PLATFORMS`.

The result JSON records the process index and count, the devices, the trainer's return
value and every file this process opened for writing under the workdir outside
`checkpoints/` (through Python's `open`; the metrics logger and TensorBoard writer use it),
so the test can check that only process 0 writes logs.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Two rows per process: process i reads rows 2i and 2i + 1 of every global batch (its
# contiguous block), so the global batch, and the noise drawn per row, equal one process's.
GLOBAL_BATCH = 4
MESH = dict(data=1, fsdp=2, context=1, tensor=4)
TOTAL_STEPS = 3


def make_config(args):
  """`configs/curriculum.py:tiny` shrunk as in tests/test_trainer.py, for this test."""
  from vbridge_jax.configs import curriculum
  c = curriculum.get_config("tiny_wan")
  c.data.source = args.data
  c.stages = "32"
  c.total_steps = TOTAL_STEPS
  c.stop_at_step = args.stop_at
  c.debug_sigterm_at_step = args.sigterm_at
  c.optim.warmup_steps = 0  # every step moves the parameters (lr 0 at step 0 otherwise)
  c.data.batch_size = GLOBAL_BATCH
  c.data.balance = False
  c.log_every = 1
  c.progress = False
  c.samples.update(every_steps=0, steps=2, count=2)  # a grid at the stage end (step 3)
  c.checkpoint.every_steps = 1
  c.checkpoint.keep = 5
  c.checkpoint.use_async = False
  c.model.vae_overrides.num_res_blocks = 1
  c.mesh.update(MESH)
  if args.coordinator:
    c.distributed.update(enabled="on", coordinator_address=args.coordinator,
                         num_processes=args.num_processes, process_id=args.process_id)
  else:
    c.distributed.enabled = "off"
  return c


def _track_writes(root: str, sink: list[str]) -> None:
  """Records paths under `root` (outside checkpoints/) that `open` opens for writing."""
  real_open = builtins.open
  root = os.path.abspath(root)
  ckpt = os.path.join(root, "checkpoints")

  def tracking_open(file, mode="r", *a, **kw):
    if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+"):
      path = os.path.abspath(os.fspath(file))
      if path.startswith(root + os.sep) and not path.startswith(ckpt + os.sep):
        sink.append(os.path.relpath(path, root))
    return real_open(file, mode, *a, **kw)

  builtins.open = tracking_open


def _local_rows(config) -> list[float]:
  """Per-row checksums of the first batch this process reads (host numpy, no sharding)."""
  import numpy as np

  from vbridge_jax.data import pipeline
  from vbridge_jax.training import setup
  stage = setup.parse_stages(config.stages, int(config.total_steps))[0]
  d = config.data
  it = pipeline.make_iterator(
      d.source, size=stage.size, frames=int(d.frames), global_batch_size=int(d.batch_size),
      seed=int(config.seed) + 1000 * stage.index, flips=bool(d.flips), balance=bool(d.balance),
      allow_upscale=bool(d.allow_upscale))
  clip = np.asarray(next(it)["clip"], np.float64)
  return [float(np.sum(row * np.arange(1, row.size + 1).reshape(row.shape))) for row in clip]


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--result", required=True)
  p.add_argument("--coordinator", default="")
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--stop-at", type=int, default=-1)
  p.add_argument("--sigterm-at", type=int, default=-1,
                 help="this process sends itself a SIGTERM after this step (a preemption notice)")
  args = p.parse_args()

  import jax
  if args.coordinator:
    # CPU cross-process collectives (off by default on XLA:CPU); a config flag, so it
    # does not start a backend before the trainer's `jax.distributed.initialize`.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from vbridge_jax.training import trainer

  writes: list[str] = []
  _track_writes(args.workdir, writes)
  config = make_config(args)
  out = trainer.train_and_evaluate(config, args.workdir)
  result = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                global_devices=jax.device_count(), local_devices=jax.local_device_count(),
                out=out, writes=sorted(set(writes)), local_rows=_local_rows(config))
  with open(args.result, "w", encoding="utf-8") as f:
    json.dump(result, f)
  if args.coordinator:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
