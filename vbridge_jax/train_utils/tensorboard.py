"""A minimal TensorBoard event-file writer for scalars, with no TensorFlow or protobuf.

An event file is a TFRecord stream of `tensorflow.Event` protos. A record is
`uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`
(little-endian). The protos used here are tiny, so they are encoded by hand:

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
            Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(number: int, wire: int) -> bytes:
  return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
  msg = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    msg += _bytes_field(5, summary)
  return msg


def frame_record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


def read_records(path: str) -> list[bytes]:
  """Reads and checks a TFRecord file (used by tests)."""
  out = []
  with open(path, "rb") as f:
    while header := f.read(8):
      (n,) = struct.unpack("<Q", header)
      (hcrc,) = struct.unpack("<I", f.read(4))
      data = f.read(n)
      (dcrc,) = struct.unpack("<I", f.read(4))
      if hcrc != masked_crc32c(header) or dcrc != masked_crc32c(data):
        raise ValueError(f"corrupt record in {path}")
      out.append(data)
  return out


class SummaryWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str | os.PathLike):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._f.write(frame_record(encode_event(time.time(), step, scalars=values)))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()
