"""The project's errors: one base class, one subclass per kind of fault.

Every error raised for the user's input or environment is a `VBridgeError` with a one-line
message naming the file, key or value at fault; each command prints it as `error: ...` and
exits non-zero (`utils.cli.run_main`). Each subclass also derives from the builtin exception
that callers of the older API caught (ValueError, OSError, RuntimeError), so that an
`except ValueError` written against them still holds.
"""

from __future__ import annotations


class VBridgeError(Exception):
  """A fault the user can fix; the message is one line."""


class ConfigError(VBridgeError, ValueError):
  """A bad or incomplete config (training, restore, evaluate)."""


class CheckpointError(VBridgeError, ValueError):
  """A checkpoint that cannot be read or converted; the message names the file or key."""


class ModelInfoError(VBridgeError, ValueError):
  """A model.json that cannot be read or holds bad values (the message names the file)."""


class ExportError(VBridgeError, ValueError):
  """A run that cannot be exported, or a bad export request (the message names the path)."""


class DataError(VBridgeError, ValueError):
  """Bad input data; the message names the file(s)."""


class PromptError(VBridgeError, ValueError):
  """A missing, unreadable or ill-shaped prompt file (the message names it)."""


class MetricsError(VBridgeError, ValueError):
  """An image pair that a protocol cannot score."""


class OutputError(VBridgeError, OSError):
  """An output that cannot be written (read-only folder, disk full)."""


class VideoError(VBridgeError, RuntimeError):
  """An MP4 that cannot be written or read (the message names the file)."""


class AOTError(VBridgeError, RuntimeError):
  """A bad topology, a missing libtpu, or a config that cannot compile."""


class NonFiniteLossError(VBridgeError, RuntimeError):
  """The loss or gradient norm became NaN or inf; the run stopped."""


class PreemptedError(VBridgeError, RuntimeError):
  """A run stopped by a preemption notice (SIGTERM) after saving a checkpoint; rerun to resume."""
