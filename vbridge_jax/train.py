"""Command line: `python -m vbridge_jax.train --config=configs/curriculum.py[:variant] --workdir=DIR`.

`--config.x=y` overrides any config field (`--help` lists the variants and every field
with its default). Rerunning the same command in the same workdir resumes from the last
intact checkpoint; a finished run is left as it is. Exit status 1 with a one-line message
on a bad config or flag (an unknown variant, a missing config file, an empty `--workdir`,
refused before anything is built), missing weights or data, a damaged checkpoint, a failed
save (a full disk) or a non-finite loss.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vbridge_jax.training import trainer
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import ConfigError, VBridgeError

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, logs, samples)")
flags.mark_flags_as_required(["config", "workdir"])

DEFAULT_CONFIG = cli.config_file("curriculum.py")


def help_text(argv: list[str]) -> str:
  """Usage, the config file's variants and every field with its default."""
  flags_text = "\n".join([
      "Flags:", "  --config=FILE[:VARIANT]  the training config (required)",
      "  --workdir=DIR            run folder: checkpoints, logs, samples (required)"])
  return "\n\n".join([__doc__.strip(), cli.config_text(argv, DEFAULT_CONFIG), flags_text])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with `--help` that lists the config, and one-line errors."""
  argv = cli.resolve_config_flags(argv)
  if cli.wants_help(argv[1:]):
    cli.print_and_exit(help_text(argv[1:]))
  try:
    cli.check_config_file(argv)
    rest = flags.FLAGS(argv)
    if not flags.FLAGS.workdir.strip():  # "" would build the demo set in the working folder
      raise ConfigError(f"--workdir={flags.FLAGS.workdir!r} is empty: name the run folder")
    return rest
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
  except flags.Error as e:  # also a config file's own error (an unknown variant)
    print(f"error: {cli.flag_error(e)}", file=sys.stderr)
  except (KeyError, AttributeError, TypeError, ValueError) as e:  # an unknown --config.x
    msg = " ".join(str(e).strip("'\"").split()).strip("'\"")
    print(f"error: bad --config override: {msg} (--help lists the fields)", file=sys.stderr)
  sys.exit(1)


class _ProjectInfo(logging.Filter):
  """Lets the project's INFO lines through the absl handler; the libraries' INFO (orbax is
  chatty) stays hidden. Warnings and errors pass, except orbax's logged tracebacks of a
  failed save, which the trainer reports as one line (`CheckpointError`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name.startswith("vbridge_jax"):
      return True
    if "/orbax/" in record.pathname and record.levelno >= logging.ERROR:
      return False
    return record.levelno >= logging.WARNING


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.get_absl_handler().addFilter(_ProjectInfo())

  try:
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # a full disk or an unwritable workdir
    print(f"error: {e.strerror or e}: {e.filename or _WORKDIR.value}", file=sys.stderr)
    return 1
  print(f"done: step {result['step']}, loss {result.get('loss')}")
  return 0


def console() -> None:
  """The `vbridge-train` script (same as `python -m vbridge_jax.train`)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  console()
