"""Input-pipeline throughput: clips/s at S = 512, T = 9, batch 8 (numpy clips on the host).

    python benchmarks/pipeline.py [--data DIR] [--batches N] [--size 512] [--frames 9]

With no `--data` it writes a demo set of 1024x768 pairs (built-in photos, 4 categories)
to a temporary folder. Rows: in-process with 1 and 4 read threads; Grain worker
processes 1 and 2 (each with 2 read threads). The first batch (start-up, worker spawn)
is not timed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vbridge_jax.data import fewshot, pipeline  # noqa: E402


def measure(data: str, *, size: int, frames: int, batch: int, batches: int,
            workers: int, threads: int) -> float:
  ds = pipeline.make_dataset(data, size=size, frames=frames, global_batch_size=batch,
                             seed=0, worker_count=workers, read_threads=threads,
                             prefetch_buffer_size=2 * batch)
  it = iter(ds)
  next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  del it
  return batches * batch / dt


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--data", default=None)
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--frames", type=int, default=9)
  p.add_argument("--batch", type=int, default=8)
  args = p.parse_args()
  tmp = None
  data = args.data
  if data is None:
    tmp = tempfile.TemporaryDirectory()
    data = tmp.name
    clean = os.path.join(tmp.name, "_clean")
    os.makedirs(clean)
    from PIL import Image
    for name, img in fewshot.builtin_photos():
      Image.fromarray(img).resize((1024, 768), Image.BICUBIC).save(
          os.path.join(clean, f"{name}.png"))
    data = os.path.join(tmp.name, "set")
    fewshot.build(data, clean=clean, per_category=4,
                  categories=["Blur", "Noise_JPEG", "Haze", "Lowlight"])
  rows = [("in-process", 0, 1), ("in-process", 0, 4), ("workers", 1, 2), ("workers", 2, 2)]
  print(f"\nS={args.size} T={args.frames} batch={args.batch} cpus={os.cpu_count()}\n")
  print("| mode | grain workers | read threads | clips/s |")
  print("|---|---|---|---|")
  for mode, workers, threads in rows:
    rate = measure(data, size=args.size, frames=args.frames, batch=args.batch,
                   batches=args.batches, workers=workers, threads=threads)
    print(f"| {mode} | {workers} | {threads} | {rate:.1f} |", flush=True)
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
