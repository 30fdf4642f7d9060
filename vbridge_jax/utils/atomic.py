"""Writing a file so that it is either whole or absent: write beside it, then rename.

`replacing(path)` yields a temporary name in `path`'s folder (hidden, unique per process, with
`path`'s own suffix so that writers that pick the format from the name still do); when the
block finishes the file is renamed onto `path` in one step (`os.replace`), and when it fails
the temporary file is removed. A reader, or a rerun after a kill, never sees half a file.
Files get the user's umask, as any other file would. `overlaps` is the rule by which a command
refuses an output folder that could touch its input.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
  """A temporary path beside `path`, renamed onto it when the block succeeds (`fsync`: the
  data is flushed to the disk first)."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
  try:
    yield tmp
    if fsync:
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      tmp.unlink()


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
  with replacing(path, fsync=fsync) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
  with replacing(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
    f.write(data)
  return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
  """`obj` as JSON with a trailing newline."""
  return write_text(path, json.dumps(obj, indent=indent) + "\n")


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  """Whether writing into one of two folders can touch the other: the same folder, or one
  inside the other (symlinks resolved). Outputs that overlap their inputs are refused."""
  a, b = Path(a).resolve(), Path(b).resolve()
  return a == b or a in b.parents or b in a.parents
