"""Safetensors reading and writing: the project's own code against the `safetensors` package.

  python benchmarks/safetensors_io.py [--shards 3] [--shard_mb 40] [--repeat 2] [--json OUT]

Writes a sharded checkpoint (`--shards` files of about `--shard_mb` MB each, mixed float32 and
bfloat16 tensors of 1-16 MB, as the Wan2.2 DiT's shards are) into a temporary folder, then
runs every case below in its own process, `--repeat` times each (the fastest is kept), and
prints one table:

- read: every tensor, one at a time, as the converter asks for it (`TensorSource.get`: the
  array as float32), through `SafetensorsSource` as it was before this benchmark (its own
  memory map and header parser, kept here as `_OwnReader`), through `safetensors.safe_open`
  with `framework="numpy"` (one handle per file, kept open) and with `framework="flax"`
  (jax arrays, then numpy), and through today's `io.SafetensorsSource`;
- write: the same tensors, made one at a time by a `get()` as export makes them, through
  `io.write_safetensors` (each tensor is made when its bytes are written) and through
  `safetensors.numpy.save_file` (one call per shard, which needs the shard's tensors at once).

Each process reports its time and its peak memory above what it held before the case
began: `peak RSS` from `getrusage` (this counts the pages of a memory-mapped file that were
touched, which the kernel may drop at any time) and `peak anon` (memory that is not a file's
pages, sampled every millisecond from /proc/self/status; Linux only). Every case's tensors are
checked against the written values (`same`). The files are read once before the cases, so
every reader finds them in the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vbridge_jax.checkpoints import io  # noqa: E402  (the repository, not an installed copy)

READERS = ("own", "st-numpy", "st-numpy-pread", "st-flax", "io")
WRITERS = ("own-write", "st-write")


def _layout(shards: int, shard_mb: int) -> list[tuple[str, tuple[int, ...], str]]:
  """(key, shape, dtype name) of every tensor: about `shard_mb` MB per shard, a mix of float32
  and bfloat16 matrices of 1-16 MB and small vectors."""
  rng = np.random.default_rng(0)
  out = []
  total = shards * shard_mb << 20
  used = i = 0
  while used < total:
    dtype = "float32" if i % 3 else "bfloat16"
    size = int(rng.choice([1, 2, 4, 8, 16])) << 20
    cols = 1024
    rows = max(1, size // (cols * np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).itemsize))
    out.append((f"blocks.{i}.weight", (rows, cols), dtype))
    out.append((f"blocks.{i}.bias", (cols,), dtype))
    used += rows * cols * (2 if dtype == "bfloat16" else 4) + cols * 4
    i += 1
  return out


def _dtype(name: str):
  return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _value(i: int, shape, dtype_name: str) -> np.ndarray:
  """A tensor's content, cheap to make (one array) and to check: `i` everywhere but for a ramp
  `_head(i)` in its first 64 elements."""
  a = np.full(shape, float(i % 251), dtype=_dtype(dtype_name))
  head = _head(i, min(64, a.size)).astype(a.dtype)
  a.reshape(-1)[: head.size] = head
  return a


def _head(i: int, n: int) -> np.ndarray:
  return np.arange(n, dtype=np.float32) % 7 + i % 251


class _Sampler:
  """Peak RssAnon / VmRSS of this process, sampled on a thread every millisecond."""

  def __init__(self):
    self.peak_anon = self.peak_rss = 0
    self._stop = threading.Event()
    self._t = threading.Thread(target=self._run, daemon=True)

  @staticmethod
  def now() -> tuple[int, int]:
    anon = rss = 0
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("RssAnon:"):
          anon = int(line.split()[1]) << 10
        elif line.startswith("VmRSS:"):
          rss = int(line.split()[1]) << 10
    return anon, rss

  def _run(self):
    while not self._stop.is_set():
      anon, rss = self.now()
      self.peak_anon, self.peak_rss = max(self.peak_anon, anon), max(self.peak_rss, rss)
      time.sleep(0.001)

  def __enter__(self):
    self._t.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._t.join()


class _OwnReader:
  """`io.SafetensorsSource` as it was before this benchmark: its own header parser and one
  `np.memmap` per tensor (the same code, kept here to be measured against)."""

  def __init__(self, files):
    import struct

    self._index = {}
    for f in files:
      with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
      for key, info in header.items():
        if key != "__metadata__":
          self._index[key] = (f, info, 8 + n)

  def keys(self):
    return list(self._index)

  def get(self, key):
    path, info, offset = self._index[key]
    dtype = {"F32": np.float32, "BF16": ml_dtypes.bfloat16}[info["dtype"]]
    start, end = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=offset + start, shape=(end - start,))
    return np.frombuffer(mm, dtype=dtype, count=count).reshape(info["shape"]).astype(np.float32)


class _SafeOpenReader:
  def __init__(self, files, framework, **kw):
    from safetensors import safe_open

    self._handles = [safe_open(str(f), framework=framework, **kw) for f in files]
    self._where = {k: h for h in self._handles for k in h.keys()}

  def keys(self):
    return list(self._where)

  def get(self, key):
    return np.asarray(self._where[key].get_tensor(key)).astype(np.float32, copy=False)


def _reader(case: str, files):
  if case == "own":
    return _OwnReader(files)
  if case == "st-numpy":
    return _SafeOpenReader(files, "numpy")
  if case == "st-numpy-pread":
    return _SafeOpenReader(files, "numpy", backend="pread")
  if case == "st-flax":
    return _SafeOpenReader(files, "flax")
  return io.SafetensorsSource(files)


def _child(case: str, folder: Path, shard_bytes: int) -> dict:
  import safetensors.flax  # noqa: F401  (imported before the baseline, as jax already is)
  import safetensors.numpy  # noqa: F401

  layout = json.loads((folder / "layout.json").read_text())
  index = {k: i for i, (k, _, _) in enumerate(layout)}
  same = True
  if case in READERS:
    files = sorted(folder.glob("*.safetensors"))
    base_anon, base_rss = _Sampler.now()
    t0 = time.perf_counter()
    with _Sampler() as s:
      r = _reader(case, files)
      for key in r.keys():
        a = r.get(key)
        i = index[key]
        shape, dt = tuple(layout[i][1]), layout[i][2]
        ref = _head(i, min(64, a.size)).astype(_dtype(dt)).astype(np.float32)
        same &= a.dtype == np.float32 and a.shape == shape and bool(np.array_equal(a.reshape(-1)[:64], ref))
        del a
      del r
    elapsed = time.perf_counter() - t0
  else:
    out = folder / f"out-{case}"
    specs = [
      (k, tuple(shape), _dtype(dt), (lambda i=i, shape=shape, dt=dt: _value(i, shape, dt)))
      for i, (k, shape, dt) in enumerate(layout)
    ]
    base_anon, base_rss = _Sampler.now()
    t0 = time.perf_counter()
    with _Sampler() as s:
      if case == "own-write":
        io.write_safetensors(out, specs, max_shard_bytes=shard_bytes)
      else:
        _st_write(out, specs, shard_bytes)
    elapsed = time.perf_counter() - t0
    src = io.SafetensorsSource(sorted(out.glob("*.safetensors")))
    for i, (k, shape, dt) in enumerate(layout):
      if i % 7 == 0:  # a sample of the tensors, whole
        same &= bool(np.array_equal(src.get(k), _value(i, shape, dt).astype(np.float32)))
    same &= sorted(src.keys()) == sorted(k for k, _, _ in layout)
  return {
    "case": case,
    "s": elapsed,
    "peak_rss_mb": max(0, s.peak_rss - base_rss) / 2**20,
    "peak_anon_mb": max(0, s.peak_anon - base_anon) / 2**20,
    "same": bool(same),
  }


def _st_write(folder: Path, specs, shard_bytes: int) -> None:
  """The same shards through `safetensors.numpy.save_file`: one call per shard, holding it."""
  from safetensors.numpy import save_file

  folder.mkdir(parents=True, exist_ok=True)
  shards = io.shard_groups([int(np.prod(shape)) * np.dtype(dtype).itemsize
                            for _, shape, dtype, _ in specs], shard_bytes)  # as io cuts them
  n = len(shards)
  for k, shard in enumerate(shards):
    save_file(
      {specs[i][0]: specs[i][3]() for i in shard},
      folder / f"diffusion_pytorch_model-{k + 1:05d}-of-{n:05d}.safetensors",
      metadata={"format": "pt"},
    )


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shards", type=int, default=3)
  p.add_argument("--shard_mb", type=int, default=40, help="MB per shard (the issue's case: 300)")
  p.add_argument("--repeat", type=int, default=2)
  p.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON lines)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  shard_bytes = (args.shard_mb + 16) << 20  # room for one more of the largest tensors: --shards files
  if args.child:
    print(json.dumps(_child(args.child, args.dir, shard_bytes)))
    return 0
  with tempfile.TemporaryDirectory(prefix="st_bench.") as tmp:
    folder = Path(tmp)
    layout = _layout(args.shards, args.shard_mb)
    (folder / "layout.json").write_text(json.dumps(layout))
    specs = [
      (k, tuple(shape), _dtype(dt), (lambda i=i, shape=shape, dt=dt: _value(i, shape, dt)))
      for i, (k, shape, dt) in enumerate(layout)
    ]
    files = io.write_safetensors(folder, specs, max_shard_bytes=shard_bytes)
    total = sum(f.stat().st_size for f in files)
    for f in files:  # into the page cache, for every reader alike
      with open(f, "rb") as fh:
        while fh.read(64 << 20):
          pass
    rows = []
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for case in READERS + WRITERS:
      best = None
      for _ in range(args.repeat):
        proc = subprocess.run(
          [sys.executable, __file__, "--child", case, "--dir", str(folder), "--shard_mb", str(args.shard_mb)],
          capture_output=True,
          text=True,
          env=env,
          check=False,
        )
        if proc.returncode:
          raise SystemExit(f"error: case {case} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if best is None or row["s"] < best["s"]:
          best = row
      rows.append(best)
  print(
    f"{len(files)} shards, {total / 2**20:.0f} MB, {len(layout)} tensors (float32 and bfloat16); "
    f"safetensors {_version()}; best of {args.repeat}\n"
  )
  print("| case | what | time s | MB/s | peak RSS MB | peak anon MB | same |")
  print("|---|---|---|---|---|---|---|")
  what = {
    "own": "own memmap reader (before)",
    "st-numpy": "safe_open numpy",
    "st-numpy-pread": "safe_open numpy, pread",
    "st-flax": "safe_open flax",
    "io": "io.SafetensorsSource (now)",
    "own-write": "io.write_safetensors",
    "st-write": "safetensors.numpy.save_file",
  }
  for r in rows:
    print(
      f"| {r['case']} | {what[r['case']]} | {r['s']:.3f} | {total / 2**20 / r['s']:.0f} | "
      f"{r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {'yes' if r['same'] else 'NO'} |"
    )
  if args.json:
    args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return 0 if all(r["same"] for r in rows) else 1


def _version() -> str:
  import safetensors

  return safetensors.__version__


if __name__ == "__main__":
  sys.exit(main())
