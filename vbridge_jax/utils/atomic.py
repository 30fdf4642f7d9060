"""Writing a file so that it is either whole or absent: write beside it, then rename.

`replacing(path)` yields a temporary name in `path`'s folder (hidden, unique per process, with
`path`'s own suffix so that writers that pick the format from the name still do); when the
block finishes the file is renamed onto `path` in one step (`os.replace`), and when it fails
the temporary file is removed. A reader, or a rerun after a kill, never sees half a file.
Files get the user's umask, as any other file would; so do staging folders made by `temp_dir`
(`tempfile.mkdtemp` makes them 0700, which a folder renamed into place would keep).
`overlaps` is the rule by which a command refuses an output folder that could touch its input.
`write_failure` tells a failed write (a full disk, a read-only or forbidden folder) from any
other error, in the forms the libraries raise it: `OSError`, and the `ValueError` of orbax and
tensorstore (`RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP = ".tmp"  # `replacing`'s temporary names: `.{stem}.{pid}.tmp{suffix}`
_TEMPORARY = re.compile(r"^\..*\.(\d+)\.tmp(\.[^.]*)?$")


def temporary_pid(name: str) -> int | None:
  """The process id in a temporary name that `replacing` gives, else None: what lets a
  command remove the temporaries that a killed run left behind."""
  m = _TEMPORARY.match(name)
  return int(m.group(1)) if m else None


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
  """A temporary path beside `path`, renamed onto it when the block succeeds (`fsync`: the
  data is flushed to the disk first)."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}{TMP}{path.suffix}")
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


def umask() -> int:
  """The process's umask (read by setting and restoring it)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
  """A new empty folder in `parent` (as `tempfile.mkdtemp` makes it), with the user's umask
  instead of mkdtemp's 0700, so that it can be renamed into place as an output."""
  path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
  os.chmod(path, 0o777 & ~umask())
  return path


# errno values of a write that cannot succeed here: a full disk or quota, a file size limit,
# a read-only or forbidden folder.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
_WRITE_STATUS = re.compile(r"RESOURCE_EXHAUSTED|PERMISSION_DENIED|No space left|Read-only file system|"
                           r"Permission denied|Disk quota exceeded|File too large")


def write_failure(e: BaseException) -> str | None:
  """The reason, on one short line, when `e` (or what caused it) is a failed write: an
  `OSError` with one of the errnos above, or a library's error whose text carries one
  (tensorstore: `os_error_code='28'`) or its status (`RESOURCE_EXHAUSTED`, `PERMISSION_DENIED`).
  None for any other error, which the caller lets through."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      return f"{e.strerror or os.strerror(e.errno)}{': ' + str(e.filename) if e.filename else ''}"
    text = " ".join(str(e).split())
    code = re.search(r"os_error_code='?(\d+)", text) or re.search(r"OS error (\d+)", text)
    if code and int(code.group(1)) in _WRITE_ERRNOS:
      return os.strerror(int(code.group(1))) + _file_of(text)
    if _WRITE_STATUS.search(text):
      return (text if len(text) <= 200 else text[:200] + " ...")
    e = e.__cause__ or e.__context__
  return None


def _file_of(text: str) -> str:
  files = re.findall(r'"(/[^"]+)"', text)
  return f": {files[-1]}" if files else ""
