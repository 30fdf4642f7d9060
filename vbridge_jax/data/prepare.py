"""Writes a TFDS array_record data set from a source tree (no TensorFlow needed).

    python -m vbridge_jax.data.prepare --builder paired_folders|foundir|realce \
        --manual_dir TREE --data_dir OUT [--skip_bad]

Output: `OUT/<builder>/1.0.0/` (array_record shards, dataset_info.json, features.json),
read by `vbridge_jax.data.pipeline.make_dataset(NAME, data_dir=OUT)`. TFDS shows a
progress bar per split. Bad input (a corrupt or truncated image, an LQ/GT size mismatch, a
GT without its LQ, an empty category or tree) is a one-line error naming the file(s) and
exit status 1; `--skip_bad` skips such pairs and reports how many.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from vbridge_jax.data.files import DataError


def prepare(builder_name: str, manual_dir: str, data_dir: str, *, skip_bad: bool = False
            ) -> str:
  """Builds the set; returns the version folder written."""
  from vbridge_jax.data import builders
  b = builders.builder(builder_name, manual_dir=manual_dir, data_dir=data_dir,
                       skip_bad=skip_bad)
  b.download_and_prepare()
  return str(b.data_dir)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m vbridge_jax.data.prepare",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--builder", required=True, choices=("paired_folders", "foundir", "realce"))
  p.add_argument("--manual_dir", required=True, help="the source tree")
  p.add_argument("--data_dir", required=True, help="TFDS data folder to write into")
  p.add_argument("--skip_bad", action="store_true",
                 help="skip bad pairs (counted in a warning) instead of stopping")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    out = prepare(args.builder, args.manual_dir, args.data_dir, skip_bad=args.skip_bad)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
