"""One writer per output: an exclusive lock on a file, which a dead holder's successor takes over.

  with lock.exclusive(out.parent / f".{out.name}.lock", what=f"export --out {out}"):
    lock.remove_stale(out.parent, STAGING_PATTERN)  # a dead exporter's staging folders
    ...  # write; nobody else writes this output meanwhile

`exclusive(path, what=...)` takes `fcntl.flock(LOCK_EX)` on `path` (created if absent) without
waiting. The lock belongs to the open file, so the kernel drops it when its process dies,
however it dies (`kill -9` included): the next command takes it over, and leftovers that only
the holder could have been writing (its staging folders) are then known to be stale, which is
what `remove_stale` is for. A lock that is held is a `LockedError` naming the lock file, what it
guards and the holder (its pid and host, which the holder writes into the file). Two `open`s of
one file in one process conflict as two processes do (the lock is per open file description).

The file is removed on release; the holder checks after locking that the path still names the
file it locked (else another process removed it in between, and it locks the new one), so two
holders never coexist. Works on local disks and NFS (Linux emulates `flock` with POSIX locks
there). Used by export and convert for their `--out`; a trainer can guard its workdir the same
way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

from vbridge_jax.utils.errors import OutputError, VBridgeError


class LockedError(VBridgeError, RuntimeError):
  """Another live process holds the lock of the output (the message names the lock and holder)."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, what: str) -> Iterator[Path]:
  """Holds an exclusive lock on `path` for the block; `what` names the guarded work in the
  message (`"export --out MODEL"`). Raises `LockedError` at once if another holder has it."""
  path = Path(path)
  fd = _acquire(path, what)
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    yield path
  finally:
    with contextlib.suppress(OSError):
      os.unlink(path)  # while still locked: a waiting opener finds its file gone and retries
    os.close(fd)


def _acquire(path: Path, what: str) -> int:
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
      raise OutputError(f"{path}: cannot create the lock of {what} ({e.strerror or e})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise LockedError(
          f"{what}: another process is writing it ({holder} holds {path}); wait for it to finish or stop it"
        ) from None
      raise OutputError(f"{path}: cannot lock it for {what} ({e.strerror or e})") from None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)  # the holder before us removed the file after we opened it: lock the new one


def _holder(fd: int) -> str:
  try:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
  except OSError:
    text = ""
  return text or "an unknown process"


def remove_stale(folder: str | os.PathLike, pattern: str) -> list[Path]:
  """Removes the entries of `folder` whose whole name matches the regular expression `pattern`
  (a dead holder's staging folders); call it only while holding the lock that their writer
  held. Returns what was removed."""
  removed = []
  try:
    entries = list(Path(folder).iterdir())
  except OSError:
    return removed
  for p in entries:
    if re.fullmatch(pattern, p.name):
      if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          p.unlink()
      removed.append(p)
  return removed
