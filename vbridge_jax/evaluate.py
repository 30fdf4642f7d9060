"""Score restored images against ground truth, per image and per category, beside Table 1.

  python -m vbridge_jax.evaluate [--config=configs/evaluate.py[:VARIANT]] \\
      --pred=DIR --gt=DIR --out=DIR [--protocol=vbridge] [--config.strict_size=true]

`--pred`, `--gt`, `--out` and `--protocol` are the same as `--config.pred` ...
`--config.protocol` (`--flag=VALUE` or `--flag VALUE`; both spellings with different
values are an error).

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
average_per_category, missing, unreadable, skipped, resized`; each image's `pred` and `gt`
files), `metrics.csv` (one row per image), `metrics.md` (per-category table beside the
paper's Table 1 V-Bridge figures, matched by category name) and `report.html`
(`vbridge_jax.evaluation.report`: that table, a gallery of every image, LQ | restored | GT
with its scores and the gain over the input, worst first, and the resized, missing and
skipped lists; pictures linked relative to `out`). Table 1 averages V-Bridge per image and
the baselines per category: both averages are reported. Metrics:
`vbridge_jax.evaluation.metrics`.

`lq` (optional, the restore's input tree; the GT tree itself for a FoundIR-style tree with
LQ/ beside GT/): each pair's LQ image, found as the prediction is, is scored against its GT
too (`input` per image, `input_per_category`, `input_average_per_image`,
`input_average_per_category`; a pair without one is listed under `missing.lq`, exit 1) and
shown in the report. `out` is checked before anything is scored (a file in its place, a
folder that cannot be created or written: one line, exit 1); a write that fails at the end
(disk full) is one line naming the file, after the table is printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from vbridge_jax.evaluation.protocols import check_out, evaluate, report, write
from vbridge_jax.evaluation.report import evaluate_report
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import VBridgeError


def run(cfg) -> int:
  """The command on a configs/evaluate.py config; returns the exit status."""
  for field in ("pred", "gt", "out"):
    if not cfg[field]:
      print(f"error: --{field} (--config.{field}) is required (configs/evaluate.py)",
            file=sys.stderr)
      return 1
  out = Path(cfg.out)
  try:
    check_out(out)  # before the scoring, which a late failure would lose
    result = evaluate(Path(cfg.pred), Path(cfg.gt), cfg.protocol, progress=bool(cfg.progress),
                      strict_size=bool(cfg.strict_size), lq_root=Path(cfg.lq) if cfg.get("lq") else None)
  except (FileNotFoundError, ValueError, VBridgeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  status = report(result)  # the table on stdout first: a failed write below does not lose it
  try:
    write(result, out)
    evaluate_report(result, out)
  except VBridgeError as e:  # disk full: one line naming the file
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}/metrics.json, metrics.csv, metrics.md, report.html")
  return status


CONFIG_FILE = cli.config_file("evaluate.py")
PLAIN = ("pred", "gt", "out", "protocol")  # --pred=X is --config.pred=X


def help_text(argv: Sequence[str]) -> str:
  flag = ("Flags:\n  --config=FILE[:VARIANT]  config file (default configs/evaluate.py); "
          "--config.FIELD=VALUE overrides a field\n" + cli.plain_text(PLAIN))
  return "\n\n".join([__doc__.strip(), flag, cli.config_text(argv, CONFIG_FILE, PLAIN)])


def parse(argv: Sequence[str]):
  """argv (without the program name) -> the config; ConfigError (one line) for bad flags."""
  argv = cli.resolve_config_flags(argv)
  if cli.wants_help(argv):
    cli.print_and_exit(help_text(argv))
  return cli.parse_config(argv, "evaluate", str(CONFIG_FILE), PLAIN,
                          "configs/evaluate.py[:vbridge|vbridge_mp4|foundir]")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    cfg = parse(argv)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return run(cfg)


def console() -> None:
  """The `vbridge-evaluate` script (same as `python -m vbridge_jax.evaluate`)."""
  sys.exit(main())


if __name__ == "__main__":
  console()
