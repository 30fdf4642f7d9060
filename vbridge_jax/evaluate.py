"""Score restored images against ground truth, per image and per category, beside Table 1.

  python -m vbridge_jax.evaluate --config=configs/evaluate.py[:VARIANT] \\
      --config.pred=DIR --config.gt=DIR --config.out=DIR [--config.strict_size=true]

Variants: `vbridge` (default; the authors' metrics on lossless images), `vbridge_mp4` (the
authors' eval.py exactly: the last frame of each prediction `.mp4`, read with OpenCV and
zoomed to the GT size) and `foundir` (FoundIR's cal_metrics.py); configs/evaluate.py lists
every field and its default.

Prediction and ground truth are matched by category (the first path component) and file
stem; the side folders of a pair (`data.files.GT_NAMES`, `LQ_NAMES`: GT/gt/HQ/hq, LQ/lq)
and extensions are ignored, so the output of `vbridge_jax.restore` on a FoundIR test tree
(`<NN><Category>/LQ/<id>.png`) scores against that tree (`<NN><Category>/GT/<id>.<ext>`);
on the ground-truth side files under an LQ folder are skipped, on the prediction side
files under a GT folder. Nothing is dropped silently, and every problem makes the exit
status 1 after the rest is scored:

- missing pairs are listed (`missing`);
- unreadable images are named (`unreadable`);
- a pair that the protocol cannot score (a GT smaller than the SSIM window) is named and
  skipped (`skipped`);
- a prediction of another size than its GT is resized with the authors' cubic spline
  (`metrics.resize_to`), recorded per image (`resized_from`) and counted on stderr; with
  `strict_size` it is skipped instead, as an error. `vbridge_mp4` resizes by design (MP4
  frames are padded to multiples of 16), which is reported too.

`out` gets `metrics.json` (`protocol, per_image, per_category, average_per_image,
average_per_category, missing, unreadable, skipped, resized`), `metrics.csv` (one row per
image) and `metrics.md` (per-category table beside the paper's Table 1 V-Bridge figures,
matched by category name). Table 1 averages V-Bridge per image and the baselines per
category: both averages are reported. Metrics: `vbridge_jax.evaluation.metrics`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app
from ml_collections import config_flags

from vbridge_jax.evaluation.protocols import evaluate, report, write
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import VBridgeError


def run(cfg) -> int:
  """The command on a configs/evaluate.py config; returns the exit status."""
  for field in ("pred", "gt", "out"):
    if not cfg[field]:
      print(f"error: --config.{field} is required (configs/evaluate.py)", file=sys.stderr)
      return 1
  try:
    result = evaluate(Path(cfg.pred), Path(cfg.gt), cfg.protocol, progress=bool(cfg.progress),
                      strict_size=bool(cfg.strict_size))
  except (FileNotFoundError, ValueError, VBridgeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  write(result, Path(cfg.out))
  status = report(result)
  print(f"wrote {cfg.out}/metrics.json, metrics.csv, metrics.md")
  return status


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return run(_CONFIG.value)


_CONFIG_FILE = cli.config_file("evaluate.py")


def console() -> None:
  """The `vbridge-evaluate` script (same as `python -m vbridge_jax.evaluate`)."""
  global _CONFIG
  sys.argv = cli.resolve_config_flags(sys.argv)
  if cli.wants_help(sys.argv[1:]):
    cli.print_and_exit(__doc__.strip(), "Flags:\n  --config=FILE[:VARIANT]  config file "
                            "(default configs/evaluate.py); --config.FIELD=VALUE overrides a field",
                            cli.config_text(sys.argv[1:], _CONFIG_FILE))
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(_CONFIG_FILE), "configs/evaluate.py[:vbridge|vbridge_mp4|foundir]",
      lock_config=True)
  app.run(main)


if __name__ == "__main__":
  console()
