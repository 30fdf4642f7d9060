"""Command line: `python -m vbridge_jax.train --config=configs/curriculum.py[:variant] --workdir=DIR`.

`--config.x=y` overrides any config field. Rerunning the same command in the same workdir
resumes from the last checkpoint. Exit status 1 with a one-line message on a bad config,
missing weights or data, or a non-finite loss.
"""

from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, logs, samples)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
  from vbridge_jax import trainer  # pylint: disable=import-outside-toplevel
  from vbridge_jax.checkpoints.io import CheckpointError  # pylint: disable=import-outside-toplevel
  from vbridge_jax.data.files import DataError  # pylint: disable=import-outside-toplevel
  from vbridge_jax.train_utils.setup import ConfigError  # pylint: disable=import-outside-toplevel

  try:
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, CheckpointError, DataError, trainer.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"done: step {result['step']}, loss {result.get('loss')}")
  return 0


if __name__ == "__main__":
  app.run(main)
