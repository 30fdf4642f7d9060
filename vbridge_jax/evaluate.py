"""Score restored images against ground truth, per image and per category, beside Table 1.

  python -m vbridge_jax.evaluate --pred DIR --gt DIR [--protocol vbridge|foundir] --out DIR

Prediction and ground truth are matched by category (the first path component) and file
stem; folders named `LQ`/`GT` and extensions are ignored, so the output of
`vbridge_jax.restore` on a FoundIR test tree (`<NN><Category>/LQ/<id>.png`) scores against
that tree (`<NN><Category>/GT/<id>.<ext>`); on the ground-truth side files under `LQ/` are
skipped, on the prediction side files under `GT/`. Missing pairs are listed (in the output
and `metrics.json`), never dropped silently; an unreadable image makes the exit status 1.

`--out DIR` gets `metrics.json` (`protocol, per_image, per_category, average_per_image,
average_per_category, missing, unreadable`), `metrics.csv` (one row per image) and
`metrics.md` (per-category table beside the paper's Table 1 V-Bridge figures, matched by
category name). Table 1 averages V-Bridge per image and the baselines per category: both
averages are reported. Metrics: `vbridge_jax.metrics`. `--config configs/evaluate.py[:foundir]`
gives the options from a config file; flags on the command line override it.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vbridge_jax import cli_config, metrics as M
from vbridge_jax.data.files import IMAGE_EXTS, DataError, read_rgb

# FoundIR folder name (without its number) -> Table 1 column name.
TABLE1_NAMES = {
    "Blur": "Blur", "Noise": "Noise", "JPEG": "JPEG", "Haze": "Haze", "Rain": "Rain",
    "Raindrop": "Raindrop", "Lowlight": "Lowlight", "Blur_Noise": "B+N", "Blur_JPEG": "B+J",
    "Noise_JPEG": "N+J", "Rain_Haze": "R+H", "Lowlight_Haze": "L+H", "NightRain": "L+R",
    "Lowlight_Blur": "L+B", "Lowlight_Noise": "L+N", "Lowlight_JPEG": "L+J",
    "Lowlight_Blur_Noise": "L+B+N", "Lowlight_Blur_JPEG": "L+B+J",
    "Lowlight_Noise_JPEG": "L+N+J", "Blur_Noise_JPEG": "B+N+J",
}
# Table 1 (reference/paper_table1_foundir.csv): V-Bridge without / with drift correction,
# (PSNR, SSIM) per category; "Average" is V-Bridge's per-image average.
TABLE1 = {
    "Blur": ((21.02, .6862), (24.92, .7809)), "Noise": ((32.61, .9397), (32.87, .9498)),
    "JPEG": ((28.21, .8487), (26.59, .8269)), "Haze": ((21.25, .6918), (21.70, .6711)),
    "Rain": ((26.40, .7957), (25.42, .7836)), "Raindrop": ((25.77, .7698), (24.99, .7380)),
    "Lowlight": ((19.18, .8278), (26.94, .8944)), "B+N": ((23.80, .7703), (27.31, .8471)),
    "B+J": ((24.05, .7571), (25.33, .8020)), "N+J": ((33.33, .9422), (31.63, .9323)),
    "R+H": ((18.70, .5574), (18.69, .5222)), "L+H": ((19.74, .5983), (20.79, .6209)),
    "L+R": ((32.90, .9126), (31.27, .9064)), "L+B": ((20.37, .6543), (23.78, .7378)),
    "L+N": ((17.36, .6842), (24.60, .7765)), "L+J": ((22.72, .7635), (22.89, .7400)),
    "L+B+N": ((20.41, .6362), (24.20, .7491)), "L+B+J": ((21.16, .7514), (25.71, .8094)),
    "L+N+J": ((26.09, .9115), (27.64, .9161)), "B+N+J": ((24.69, .7659), (25.46, .7787)),
    "Average": ((23.68, .7490), (25.18, .7729)),
}


def table1_name(category: str) -> str | None:
  name = re.sub(r"^\d+", "", category)
  return TABLE1_NAMES.get(name, name if name in TABLE1 else None)


def pair_key(rel: Path) -> tuple[str, str]:
  """(category, name) of a relative path: LQ/GT folders and the extension ignored."""
  dirs = [p for p in rel.parts[:-1] if p not in ("LQ", "GT")]
  category = dirs[0] if dirs else ""
  return category, "/".join(dirs[1:] + [rel.stem])


def scan(root: Path, skip: str) -> tuple[dict[tuple[str, str], Path], list[str]]:
  """Images under root by pair key (files under a `skip` folder left out); duplicate keys."""
  found: dict[tuple[str, str], Path] = {}
  dupes = []
  for f in sorted(root.rglob("*")):
    if not f.is_file() or f.suffix.lower() not in IMAGE_EXTS:
      continue
    rel = f.relative_to(root)
    if skip in rel.parts[:-1]:
      continue
    key = pair_key(rel)
    if key in found:
      dupes.append(f"{found[key].relative_to(root)} and {rel}")
      continue
    found[key] = f
  return found, dupes


def _mean(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def evaluate(pred_root: Path, gt_root: Path, protocol: str = "vbridge",
             progress: bool = True) -> dict[str, Any]:
  """Scores every matched pair; returns the `metrics.json` dictionary."""
  if protocol not in M.PROTOCOLS:
    raise ValueError(f"--protocol {protocol!r} is not one of {', '.join(M.PROTOCOLS)}")
  for root in (pred_root, gt_root):
    if not Path(root).is_dir():
      raise FileNotFoundError(f"{root}: no such folder")
  preds, pdup = scan(Path(pred_root), skip="GT")
  gts, gdup = scan(Path(gt_root), skip="LQ")
  if pdup or gdup:
    raise ValueError(f"two files match one pair: {(pdup + gdup)[0]}")
  keys = sorted(set(preds) & set(gts))
  missing = {"gt": [f"{c}/{n}" if c else n for c, n in sorted(set(preds) - set(gts))],
             "pred": [f"{c}/{n}" if c else n for c, n in sorted(set(gts) - set(preds))]}
  metric_keys = M.METRIC_KEYS[protocol]
  rows, unreadable = [], []
  it = keys
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(keys, desc=f"evaluate ({protocol})", unit="img")
  for key in it:
    try:
      pred, gt = read_rgb(preds[key]), read_rgb(gts[key])
    except DataError as e:  # its message names the file
      unreadable.append(str(e))
      continue
    rows.append({"category": key[0], "name": key[1], **M.compute(protocol, pred, gt)})
  per_category = {}
  for cat in sorted({r["category"] for r in rows}):
    sub = [r for r in rows if r["category"] == cat]
    per_category[cat] = {**_mean(sub, metric_keys), "count": len(sub)}
  cat_rows = list(per_category.values())
  return {"protocol": protocol, "pred": str(pred_root), "gt": str(gt_root), "per_image": rows,
          "per_category": per_category, "average_per_image": _mean(rows, metric_keys),
          "average_per_category": _mean(cat_rows, metric_keys), "missing": missing,
          "unreadable": unreadable}


def markdown(result: dict[str, Any]) -> str:
  keys = M.METRIC_KEYS[result["protocol"]]
  head = ["category", "n"] + list(keys) + ["paper woDC PSNR/SSIM", "paper PSNR/SSIM"]
  lines = [f"Protocol `{result['protocol']}`; paper: Table 1 (V-Bridge without / with drift "
           f"correction).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def fmt(vals: dict[str, float]) -> list[str]:
    return [f"{vals[k]:.4f}" if k.startswith("ssim") else f"{vals[k]:.2f}" for k in keys]

  def paper(name: str | None) -> list[str]:
    if name not in TABLE1:
      return ["", ""]
    return [f"{p:.2f} / {s:.4f}" for p, s in TABLE1[name]]

  for cat, vals in result["per_category"].items():
    name = table1_name(cat)
    label = (cat or "(root)") + (f" ({name})" if name and name != cat else "")
    lines.append("| " + " | ".join([label, str(vals["count"])] + fmt(vals) + paper(name)) + " |")
  if result["per_image"]:
    n = str(len(result["per_image"]))
    lines.append("| " + " | ".join(["average per image", n] + fmt(result["average_per_image"])
                                   + paper("Average")) + " |")
    lines.append("| " + " | ".join(["average per category", n]
                                   + fmt(result["average_per_category"]) + ["", ""]) + " |")
  return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
  keys = M.METRIC_KEYS[result["protocol"]]
  with open(out / "metrics.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["category", "name", *keys])
    for r in result["per_image"]:
      w.writerow([r["category"], r["name"], *(repr(r[k]) for k in keys)])
  (out / "metrics.md").write_text(markdown(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", metavar="FILE[:VARIANT]",
                      help="settings from configs/evaluate.py (flags override; --config.KEY=VALUE too)")
  parser.add_argument("--pred", type=Path, help="restored images (a folder tree); required")
  parser.add_argument("--gt", type=Path, help="ground truth (a folder tree); required")
  parser.add_argument("--protocol", default="vbridge", choices=list(M.PROTOCOLS))
  parser.add_argument("--out", type=Path, help="folder for metrics.json/.csv/.md; required")
  return cli_config.parse(parser, sys.argv[1:] if argv is None else list(argv),
                          required=["pred", "gt", "out"])


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    result = evaluate(args.pred, args.gt, args.protocol)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  write(result, args.out)
  for side, names in result["missing"].items():
    if names:
      other = "ground truth" if side == "gt" else "prediction"
      print(f"warning: {len(names)} image(s) without a {other}: {', '.join(names[:5])}"
            + (" ..." if len(names) > 5 else ""), file=sys.stderr)
  for line in result["unreadable"]:
    print(f"error: cannot read {line}", file=sys.stderr)
  print(markdown(result), end="")
  print(f"wrote {args.out}/metrics.json, metrics.csv, metrics.md")
  return 1 if result["unreadable"] or not result["per_image"] else 0


if __name__ == "__main__":
  sys.exit(main())
