"""The restore command's work: what to restore, which process does what, and outputs that are
either complete or absent.

- **Inputs** (`find_inputs`): an image, or every image under a folder in sorted order, leaving
  out ground-truth folders (`data.files.is_ground_truth`: `GT`, `gt`, `HQ`, `hq`) and the output
  tree when it lies inside the input (so a resume does not take its own outputs as inputs). A
  dangling symlink is reported by name, never skipped in silence. Two inputs that would write
  the same output (`0001.png` and `0001.jpg` in one folder) are refused up front, naming both:
  outputs keep the `<stem>.png` names that `evaluate` and `data.drift_outputs` pair by.
- **Finished outputs** (`output_state`): restore writes a sidecar `.<name>.png.done` before
  its output (a claim: "written by restore, not finished"), then the MP4 (with `video`) and
  the PNG, each to a temporary file renamed into place, then the sidecar again, finished:
  the PNG's (and MP4's) byte size and `settings`, what made the output (the model and
  corrector folders with a fingerprint of their files, the sampler settings, seed, dtypes,
  frames). So a kill at any moment leaves a finished output or one whose sidecar says it is
  restore's and unfinished, which the next run redoes; a truncated or emptied PNG does not
  pass as restored. A file at an output's place without a sidecar was not written by
  restore, and a finished output made with other settings is not this run's: both are
  refused up front (`overwrite=true` replaces them), never replaced in silence.
- **Summary** (`write_summary`, process 0, `restore_summary.json`): counts, failures by file,
  seconds per image over the whole run (loading and compiles included) and the steady rate
  after each working size's first, compiling batch.
- **Batches** (`schedule`): the work list sorted by working size, then path; each size group is
  cut into global batches of `batch` images, the last one padded with dummy rows (`None`).
  Every process computes the same schedule from the same file list and image headers, so
  all agree on the number of steps (each step is one collective program over the mesh) and
  a process whose share is short or empty runs dummy rows instead of hanging the others.
  Within a global batch, a process restores the contiguous block of rows its devices hold
  (`process_rows`); the lowest process holding a row writes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from vbridge_jax.data import video as video_lib
from vbridge_jax.data.files import IMAGE_EXTS, is_ground_truth
from vbridge_jax.inference.geometry import Plan
from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import OutputError

STATUS_DIR = ".restore_status"
SUMMARY = "restore_summary.json"


@dataclasses.dataclass(frozen=True)
class Job:
  src: Path  # the input image
  rel: str  # its path relative to the input root (posix): names the noise and the output
  dst: Path  # the output PNG
  plan: Plan | None = None  # from the image header (None: the header is unreadable)


def _inside(path: Path, root: Path) -> bool:
  try:
    path.relative_to(root)
    return True
  except ValueError:
    return False


def find_inputs(path: Path, exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
  """([(file, path relative to the input root)], [problems]) for an image or a folder tree.

  `exclude` (resolved) is a folder left out of the walk: the output tree. Problems are
  one-line messages (dangling symlinks).
  """
  if path.is_file():
    return [(path, Path(path.name))], []
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such file or folder")
  found, problems = [], []
  for folder, dirs, files in os.walk(path):
    here = Path(folder)
    dirs[:] = sorted(d for d in dirs if exclude is None
                     or not _inside((here / d).resolve(), exclude))
    for name in sorted(files):
      f = here / name
      rel = f.relative_to(path)
      if name.startswith(".") or f.suffix.lower() not in IMAGE_EXTS or is_ground_truth(rel):
        continue
      if f.is_symlink() and not f.exists():
        problems.append(f"dangling symlink: {f} -> {os.readlink(f)}")
        continue
      if f.is_file():
        found.append((f, rel))
  found.sort(key=lambda x: x[1].as_posix())
  return found, problems


def output_path(out_root: Path, rel: Path) -> Path:
  return out_root / rel.with_suffix(".png")


def sidecar(dst: Path) -> Path:
  return dst.with_name(f".{dst.name}.done")


# What `output_state` finds at an output's place.
ABSENT, FOREIGN, UNFINISHED, OTHER, DONE = "absent", "foreign", "unfinished", "other", "done"


def output_state(dst: Path, settings: dict[str, Any], video: bool = False
                 ) -> tuple[str, dict[str, Any]]:
  """(state, the sidecar's record) of the output `dst` for a run with `settings`: ABSENT
  (nothing there), FOREIGN (a PNG, or an MP4 with `video`, without a sidecar: not restore's),
  UNFINISHED (restore's, to redo: claimed, truncated, or its sidecar unreadable), OTHER
  (finished with other settings) or DONE."""
  files = [dst] + ([dst.with_suffix(".mp4")] if video else [])
  car = sidecar(dst)
  if not car.exists():
    return (FOREIGN if any(f.exists() or f.is_symlink() for f in files) else ABSENT), {}
  try:
    rec = json.loads(car.read_text())
    if not rec.get("finished") or int(rec["png_bytes"]) != dst.stat().st_size:
      return UNFINISHED, rec
    if video and int(rec.get("mp4_bytes", -1)) != files[1].stat().st_size:
      return UNFINISHED, rec
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return UNFINISHED, {}
  return (DONE if rec.get("settings") == settings else OTHER), rec


def is_done(dst: Path, settings: dict[str, Any], video: bool = False) -> bool:
  """Whether `dst` is a finished output of a run with `settings` (see above)."""
  return output_state(dst, settings, video)[0] == DONE


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
  """`seed 7 (now 43), solver 'euler' (now 'unipc')`: the settings two records disagree on (restore's
  sidecars, the miniature's recorded arguments)."""
  keys = sorted(set(old) | set(new))
  return ", ".join(f"{k} {old[k]!r} (now {new.get(k)!r})" if k in old else f"{k} unrecorded"
                   for k in keys if old.get(k) != new.get(k))


def check_replaceable(states: Sequence[tuple[Path, str, dict[str, Any]]],
                      settings: dict[str, Any]) -> None:
  """Refuses, in one line naming the first and counting the rest, outputs that restore would
  replace without having written them (FOREIGN) or that another run's settings made (OTHER):
  `overwrite=true` is the way to replace them."""
  for kind, why in ((FOREIGN, "exists and was not written by restore (no sidecar {car})"),
                    (OTHER, "was restored with other settings: {diff}")):
    hit = [(dst, rec) for dst, state, rec in states if state == kind]
    if hit:
      dst, rec = hit[0]
      more = f" (and {len(hit) - 1} more)" if len(hit) > 1 else ""
      what = why.format(car=sidecar(dst).name, diff=differences(rec.get("settings") or {},
                                                                settings))
      raise OutputError(f"{dst}: {what}{more}; --config.overwrite=true replaces them, or choose "
                        f"another --config.output")


def fingerprint_folder(path: str | os.PathLike) -> str:
  """A checksum of the names, sizes and modification times of the files under `path`:
  which model (or which export of it) a finished output was made with."""
  root = Path(path)
  entries = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      f = Path(folder) / name
      with contextlib.suppress(OSError):
        st = f.stat()
        entries.append(f"{f.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
  return f"{zlib.crc32(chr(10).join(entries).encode()) & 0xFFFFFFFF:08x}"


def _write_atomic(data: bytes, path: Path) -> None:
  try:
    atomic.write_bytes(path, data, fsync=True)
  except OSError as e:
    raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def write_output(img: np.ndarray, dst: Path, record: dict[str, Any],
                 video: list[np.ndarray] | None = None) -> None:
  """The claim, the MP4 and the PNG, then the finished sidecar, each atomically (see above);
  an `OutputError` leaves no partial file."""
  try:
    dst.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"{dst.parent}: cannot create the folder ({e.strerror or e})") from None
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  png = buf.getvalue()
  _write_atomic(json.dumps(dict(record, finished=False)).encode(), sidecar(dst))
  rec = dict(record, finished=True, png_bytes=len(png))
  try:
    if video is not None:
      mp4 = dst.with_suffix(".mp4")
      try:  # complete or absent (write_mp4 renames into place); the authors' 24 fps
        video_lib.write_mp4(mp4, video)
      except (OSError, video_lib.VideoError) as e:
        raise OutputError(f"{mp4}: cannot write ({getattr(e, 'strerror', None) or e})") from None
      rec["mp4_bytes"] = mp4.stat().st_size
    _write_atomic(png, dst)
  except OutputError:  # the PNG was not replaced: what was there before stays as it was
    if not dst.exists():
      sidecar(dst).unlink(missing_ok=True)
    raise
  _write_atomic(json.dumps(rec).encode(), sidecar(dst))


def remove_stale_temporaries(out_root: Path) -> int:
  """Deletes the temporary files that killed restores left in `out_root` (the names
  `utils.atomic.replacing` gives, of processes no longer running on this host); returns
  how many. Process 0 runs it before loading the model, so before any process writes."""
  n = 0
  for folder, _, files in os.walk(out_root):
    for name in files:
      pid = atomic.temporary_pid(name)
      if pid is None or _alive(pid):
        continue
      with contextlib.suppress(OSError):
        (Path(folder) / name).unlink()
        n += 1
  return n


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # someone else's process
    return True
  return True


def check_writable(out_root: Path) -> None:
  """Fails with one line, before any model is loaded, when `out_root` cannot take files."""
  try:
    out_root.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"{out_root}: cannot create the output folder ({e.strerror or e})") from None
  probe = out_root / f".restore_write_test.{socket.gethostname()}.{os.getpid()}"  # one per host
  try:
    probe.write_bytes(b"x")
    probe.unlink()
  except OSError as e:
    raise OutputError(f"{out_root}: the output folder is not writable ({e.strerror or e})") from None


def check_unique(jobs: Sequence[tuple[Path, Path]], out_root: Path, inputs: set[Path]) -> None:
  """Refuses two inputs with one output, and an output that would overwrite an input."""
  seen: dict[Path, Path] = {}
  for src, rel in jobs:
    dst = output_path(out_root, rel)
    if dst in seen:
      raise ValueError(f"{seen[dst]} and {src} would both be restored to {dst}; rename one")
    seen[dst] = src
    if dst.resolve() in inputs:
      raise ValueError(f"{dst}: output would overwrite an input; choose another --config.output")


def size_batches(sizes: Sequence[tuple[int, int]], batch: int = 0) -> list[list[int | None]]:
  """Indices of `sizes` (working sizes) grouped by size, smallest size first, in batches of
  `batch` (0: one batch per size), the last of each size padded with None: the one rule by
  which restore, the held-out evaluation and the miniature batch their images."""
  groups: dict[tuple[int, int], list[int]] = {}
  for i, size in enumerate(sizes):
    groups.setdefault(tuple(size), []).append(i)
  out: list[list[int | None]] = []
  for key in sorted(groups):
    idx = groups[key]
    b = batch or len(idx)
    for i in range(0, len(idx), b):
      chunk: list[int | None] = list(idx[i:i + b])
      out.append(chunk + [None] * (b - len(chunk)))
  return out


def schedule(jobs: Sequence[Job], batch: int) -> list[list[Job | None]]:
  """Global batches of same-working-size jobs (see the module docstring)."""
  ordered = sorted(jobs, key=lambda j: j.rel)
  return [[None if i is None else ordered[i] for i in chunk]
          for chunk in size_batches([(j.plan.work_h, j.plan.work_w) for j in ordered], batch)]


def process_rows(sharding: Any, batch: int) -> tuple[list[int], list[int]]:
  """(rows this process's devices hold, rows it writes) of a global batch under `sharding`."""
  owners: dict[int, set[int]] = {}
  for device, idx in sharding.devices_indices_map((batch,)).items():
    for r in range(*idx[0].indices(batch)):
      owners.setdefault(r, set()).add(device.process_index)
  me = jax.process_index()
  held = sorted(r for r, ps in owners.items() if me in ps)
  return held, [r for r in held if min(owners[r]) == me]


def fingerprint(jobs: Sequence[Job]) -> int:
  """A checksum of the work list, to check that every process sees the same one."""
  text = "\n".join(f"{j.rel}:{j.plan and (j.plan.work_h, j.plan.work_w)}" for j in jobs)
  return zlib.crc32(text.encode()) & 0x7FFFFFFF


def write_status(out_root: Path, process: int, status: dict[str, Any]) -> None:
  folder = out_root / STATUS_DIR
  folder.mkdir(parents=True, exist_ok=True)
  _write_atomic(json.dumps(status, indent=1).encode(), folder / f"process_{process}.json")


def write_summary(out_root: Path, processes: int, head: dict[str, Any]) -> dict[str, Any]:
  """Process 0: the run's counts, failures by file and time per image over all processes."""
  parts = []
  for i in range(processes):
    try:
      parts.append(json.loads((out_root / STATUS_DIR / f"process_{i}.json").read_text()))
    except (OSError, ValueError):
      parts.append({"restored": 0, "failed": [f"process {i} wrote no status"], "seconds": 0.0})
  restored = sum(p["restored"] for p in parts)
  seconds = max(p["seconds"] for p in parts)
  failed = head.pop("problems", []) + [f for p in parts for f in p["failed"]]
  steady_n = sum(p.get("steady_images", 0) for p in parts)
  steady_s = max(p.get("steady_seconds", 0.0) for p in parts)
  summary = dict(head, restored=restored, failed=len(failed), failures=failed,
                 seconds=round(seconds, 3),
                 seconds_per_image=round(seconds / restored, 3) if restored else None,
                 # after each working size's first (compiling) batch: the rate a long run sees
                 steady_images_per_second=round(steady_n / steady_s, 3) if steady_s else None,
                 first_batches_seconds=round(max(p.get("first_batches_seconds", 0.0) for p in parts), 3),
                 processes=processes)
  _write_atomic((json.dumps(summary, indent=2) + "\n").encode(), out_root / SUMMARY)
  return summary
