"""Writes a TFDS array_record data set from a source tree (no TensorFlow needed).

    python -m vbridge_jax.data.prepare --builder paired_folders|foundir|realce \
        --manual_dir TREE --data_dir OUT [--skip_bad] [--overwrite]

Output: `OUT/<builder>/1.0.0/` (array_record shards, dataset_info.json, features.json),
read by `vbridge_jax.data.pipeline.make_dataset(NAME, data_dir=OUT)`. TFDS shows a
progress bar per split. Bad input (a corrupt or truncated image, an LQ/GT size mismatch, a
GT without its LQ, an empty category or tree) is a one-line error naming the file(s) and
exit status 1; `--skip_bad` skips such pairs and reports how many.

The set records what it was built from (`source_manifest.json` beside the shards: every
source file's name, size and modification time, the builder and `--skip_bad`). Preparing
again into the same `--data_dir` reuses the set only when the source is unchanged; a
changed source is refused with a one-line error, or rebuilt with `--overwrite` (the new
set is built beside the old one and swapped in only when complete, so a failed rebuild
keeps the old set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from vbridge_jax.data import builders
from vbridge_jax.utils import atomic, cli, lock
from vbridge_jax.utils.errors import DataError, OutputError, VBridgeError

MANIFEST = "source_manifest.json"


def source_manifest(tree: str | os.PathLike, builder_name: str, skip_bad: bool) -> dict[str, Any]:
  """What a set is built from: a digest of every file's (relative name, size, mtime)."""
  root = Path(tree)
  digest, count = hashlib.sha256(), 0
  for folder, dirs, files in os.walk(root, followlinks=True):
    dirs.sort()
    for name in sorted(files):
      path = Path(folder, name)
      try:
        st = path.stat()
      except OSError:  # a dangling link: its name still counts
        st = None
      rel = path.relative_to(root).as_posix()
      digest.update(f"{rel}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n"
                    .encode("utf-8", "surrogateescape"))
      count += 1
  return {"builder": builder_name, "skip_bad": bool(skip_bad), "files": count,
          "digest": digest.hexdigest()}


def _read_manifest(version_dir: Path) -> dict[str, Any] | None:
  try:
    return json.loads((version_dir / MANIFEST).read_text())
  except (OSError, ValueError):
    return None


def _write_manifest(version_dir: Path, manifest: dict[str, Any]) -> None:
  atomic.write_json(version_dir / MANIFEST, manifest)


def _build(builder_name: str, manual_dir: str, data_dir: str, skip_bad: bool) -> Path:
  b = builders.builder(builder_name, manual_dir=manual_dir, data_dir=data_dir,
                       skip_bad=skip_bad)
  b.download_and_prepare()
  return Path(b.data_dir)


def version_dir(builder_name: str, data_dir: str) -> Path:
  """`data_dir/<builder>/<version>`, where the set is (or will be) written."""
  if builder_name not in builders.BUILDERS:
    raise DataError(f"unknown builder {builder_name!r}; known: {', '.join(builders.BUILDERS)}")
  return Path(data_dir) / builder_name / str(builders.BUILDERS[builder_name].VERSION)


def prepare(builder_name: str, manual_dir: str, data_dir: str, *, skip_bad: bool = False,
            overwrite: bool = False) -> str:
  """Builds the set (or reuses an up-to-date one); returns the version folder. One prepare
  at a time per set (`utils.lock`); the holder first clears what a killed one left."""
  if not Path(manual_dir).is_dir():
    raise DataError(f"source tree is not a directory: {manual_dir}")
  final = version_dir(builder_name, data_dir)
  try:
    final.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"{final.parent}: cannot create it ({e.strerror or e})") from None
  with lock.exclusive(final.parent / f".{final.name}.prepare.lock",
                      what=f"prepare into {final}"):
    _clear_leftovers(final)
    return _prepare(builder_name, manual_dir, data_dir, final, skip_bad, overwrite)


def _clear_leftovers(final: Path) -> None:
  """What a killed prepare of `final` left (called holding its lock): TFDS's
  `incomplete.XXXXXX_<version>` folders, this module's `.prepare.*` staging, and the old set
  moved aside during a swap, which comes back when the kill fell between the two renames."""
  aside = final.with_name(f".{final.name}.old")
  if aside.is_dir() and not final.exists():
    os.replace(aside, final)
  shutil.rmtree(aside, ignore_errors=True)
  lock.remove_stale(final.parent, rf"incomplete\.[A-Z0-9]{{6}}_{re.escape(final.name)}")
  lock.remove_stale(final.parent.parent, r"\.prepare\..+")


def _prepare(builder_name: str, manual_dir: str, data_dir: str, final: Path, skip_bad: bool,
             overwrite: bool) -> str:
  manifest = source_manifest(manual_dir, builder_name, skip_bad)
  if final.exists():
    old = _read_manifest(final)
    if old == manifest:
      logging.getLogger(__name__).info("%s is up to date with %s", final, manual_dir)
      return str(final)
    if not overwrite:
      why = ("records no source manifest" if old is None else
             f"was built from a different source ({old.get('files')} files, builder "
             f"{old.get('builder')}, skip_bad={old.get('skip_bad')}; now {manifest['files']} "
             f"files, skip_bad={skip_bad})")
      raise DataError(f"{final} exists and {why}; pass --overwrite to rebuild it from "
                      f"{manual_dir}")
    # Build beside the old set; swap only when the new one is complete.
    staging = atomic.temp_dir(data_dir, prefix=".prepare.")
    try:
      built = _build(builder_name, manual_dir, str(staging), skip_bad)
      _write_manifest(built, manifest)
      aside = final.with_name(f".{final.name}.old")
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(final, aside)
      os.replace(built, final)
      shutil.rmtree(aside, ignore_errors=True)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    return str(final)
  built = _build(builder_name, manual_dir, data_dir, skip_bad)
  _write_manifest(built, manifest)
  return str(built)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m vbridge_jax.data.prepare",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=cli.ArgparseFormatter)
  p.add_argument("--builder", required=True, choices=("paired_folders", "foundir", "realce"),
                 help="the source's layout")
  p.add_argument("--manual_dir", required=True, help="the source tree")
  p.add_argument("--data_dir", required=True, help="TFDS data folder to write into")
  p.add_argument("--skip_bad", action="store_true",
                 help="skip bad pairs (counted in a warning) instead of stopping")
  p.add_argument("--overwrite", action="store_true",
                 help="rebuild a set in --data_dir that was built from a different source")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    out = prepare(args.builder, args.manual_dir, args.data_dir, skip_bad=args.skip_bad,
                  overwrite=args.overwrite)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # disk full, an unwritable --data_dir: one line
    print(f"error: cannot write the set in {args.data_dir}: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
