"""Scoring a folder of restored images against ground truth (the library of
`python -m vbridge_jax.evaluate`, whose help text describes the matching and the outputs).

`evaluate` pairs predictions with ground truth by category and stem and scores them with
one protocol (`vbridge`, `vbridge_mp4`, `foundir`); `check_out` refuses an output folder
that cannot be written before anything is scored; `write` writes metrics.json, .csv and
.md (`evaluation.report` the HTML report beside them); `report` prints the problems and
the table. Metrics: `evaluation.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from vbridge_jax.data import video
from vbridge_jax.data.files import GT_NAMES, IMAGE_EXTS, LQ_NAMES, image_size, is_side_folder, read_rgb
from vbridge_jax.evaluation import metrics as M
from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import DataError, OutputError

PROTOCOLS = ("vbridge", "vbridge_mp4", "foundir")
VIDEO_EXTS = (".mp4",)


def metric_keys(protocol: str) -> tuple[str, ...]:
  return M.METRIC_KEYS["vbridge" if protocol == "vbridge_mp4" else protocol]


# FoundIR folder name (without its number) -> Table 1 column name.
TABLE1_NAMES = {
    "Blur": "Blur", "Noise": "Noise", "JPEG": "JPEG", "Haze": "Haze", "Rain": "Rain",
    "Raindrop": "Raindrop", "Lowlight": "Lowlight", "Blur_Noise": "B+N", "Blur_JPEG": "B+J",
    "Noise_JPEG": "N+J", "Rain_Haze": "R+H", "Lowlight_Haze": "L+H", "NightRain": "L+R",
    "Lowlight_Blur": "L+B", "Lowlight_Noise": "L+N", "Lowlight_JPEG": "L+J",
    "Lowlight_Blur_Noise": "L+B+N", "Lowlight_Blur_JPEG": "L+B+J",
    "Lowlight_Noise_JPEG": "L+N+J", "Blur_Noise_JPEG": "B+N+J",
}
# Table 1 (docs/paper.md): V-Bridge without / with drift correction,
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
  """(category, name) of a relative path: side folders (GT/LQ names) and the extension
  ignored."""
  dirs = [p for p in rel.parts[:-1] if not is_side_folder(p)]
  category = dirs[0] if dirs else ""
  return category, "/".join(dirs[1:] + [rel.stem])


def scan(root: Path, skip: tuple[str, ...], exts=IMAGE_EXTS
         ) -> tuple[dict[tuple[str, str], Path], list[str]]:
  """Files with `exts` under root by pair key, files under a `skip` folder left out; and
  the pairs of files that share a key."""
  found: dict[tuple[str, str], Path] = {}
  dupes = []
  for f in sorted(root.rglob("*")):
    if not f.is_file() or f.suffix.lower() not in exts:
      continue
    rel = f.relative_to(root)
    if any(part in skip for part in rel.parts[:-1]):
      continue
    key = pair_key(rel)
    if key in found:
      dupes.append(f"{found[key]} and {f}")
      continue
    found[key] = f
  return found, dupes


def _mean(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def _read_cv2(path: Path) -> np.ndarray:
  """An image as the authors' eval.py reads its GT: cv2.imread (EXIF orientation applied),
  BGR -> RGB."""
  image_size(path)  # the one reader's checks first (a decompression bomb is named, not read)
  img = cv2.imread(os.fspath(path))
  if img is None:
    raise DataError(f"cannot read image {path} (OpenCV)")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _readers(protocol: str):
  if protocol != "vbridge_mp4":
    return read_rgb, read_rgb

  def last_frame(path):
    try:
      return video.last_frame(path)
    except video.VideoError as e:
      raise DataError(str(e)) from None
  return last_frame, _read_cv2


def _names(keys) -> list[str]:
  return [f"{c}/{n}" if c else n for c, n in sorted(keys)]


def evaluate(pred_root: Path, gt_root: Path, protocol: str = "vbridge", progress: bool = True,
             strict_size: bool = False, lq_root: Path | None = None) -> dict[str, Any]:
  """Scores every matched pair; returns the `metrics.json` dictionary. With `lq_root` (the
  restore's input tree) each pair's LQ image is found by the same key and scored against
  the GT too (`input` per image and `input_*` averages; `missing["lq"]` lists the pairs
  without one), so that the report shows the LQ and the gain over it."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
  for root in (pred_root, gt_root) + ((lq_root,) if lq_root else ()):
    if not Path(root).is_dir():
      raise FileNotFoundError(f"{root}: no such folder")
  preds, pdup = scan(Path(pred_root), skip=GT_NAMES,
                     exts=VIDEO_EXTS if protocol == "vbridge_mp4" else IMAGE_EXTS)
  gts, gdup = scan(Path(gt_root), skip=LQ_NAMES)
  lqs, ldup = scan(Path(lq_root), skip=GT_NAMES) if lq_root else ({}, [])
  if pdup or gdup or ldup:
    raise ValueError(f"two files match one pair: {(pdup + gdup + ldup)[0]}")
  keys = sorted(set(preds) & set(gts))
  missing = {"gt": _names(set(preds) - set(gts)), "pred": _names(set(gts) - set(preds))}
  if lq_root:
    missing["lq"] = _names(set(keys) - set(lqs))
  mkeys = metric_keys(protocol)
  mprotocol = "vbridge" if protocol == "vbridge_mp4" else protocol
  read_pred, read_gt = _readers(protocol)
  rows, unreadable, skipped = [], [], []
  it = keys
  if progress:
    it = tqdm(keys, desc=f"evaluate ({protocol})", unit="img")
  for key in it:
    try:
      pred, gt = read_pred(preds[key]), read_gt(gts[key])
    except DataError as e:  # its message names the file
      unreadable.append(str(e))
      continue
    try:
      M.check_pair(mprotocol, pred, gt)
    except M.MetricsError as e:
      skipped.append({"pred": str(preds[key]), "gt": str(gts[key]), "reason": str(e)})
      continue
    resized = pred.shape[:2] != gt.shape[:2]
    if resized and strict_size:
      skipped.append({"pred": str(preds[key]), "gt": str(gts[key]),
                      "reason": f"size {pred.shape[1]}x{pred.shape[0]} differs from the GT's "
                                f"{gt.shape[1]}x{gt.shape[0]} (strict_size)"})
      continue
    row = {"category": key[0], "name": key[1], **M.compute(mprotocol, pred, gt),
           "resized_from": [pred.shape[1], pred.shape[0]] if resized else None,
           "pred": str(preds[key]), "gt": str(gts[key])}
    if key in lqs:  # the input, scored as the prediction is (resized to the GT if it differs)
      try:
        lq = read_gt(lqs[key])
      except DataError as e:
        unreadable.append(str(e))
      else:
        row["lq"] = str(lqs[key])
        row["input"] = {**M.compute(mprotocol, lq, gt), "resized_from":
                        [lq.shape[1], lq.shape[0]] if lq.shape[:2] != gt.shape[:2] else None}
    rows.append(row)
  per_category = {}
  for cat in sorted({r["category"] for r in rows}):
    sub = [r for r in rows if r["category"] == cat]
    per_category[cat] = {**_mean(sub, mkeys), "count": len(sub)}
  cat_rows = list(per_category.values())
  result = {"protocol": protocol, "pred": str(pred_root), "gt": str(gt_root), "per_image": rows,
            "per_category": per_category, "average_per_image": _mean(rows, mkeys),
            "average_per_category": _mean(cat_rows, mkeys), "missing": missing,
            "unreadable": unreadable, "skipped": skipped,
            "resized": sum(r["resized_from"] is not None for r in rows)}
  if lq_root:
    inputs = [r["input"] for r in rows if "input" in r]
    in_cat = {}
    for cat in per_category:
      sub = [r["input"] for r in rows if r["category"] == cat and "input" in r]
      if sub:
        in_cat[cat] = {**_mean(sub, mkeys), "count": len(sub)}
    result |= {"lq": str(lq_root), "input_per_category": in_cat,
               "input_average_per_image": _mean(inputs, mkeys),
               "input_average_per_category": _mean(list(in_cat.values()), mkeys)}
  return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
  """The per-category table of `metrics.md` and `report.html`, one dict per row: `label`,
  `n`, `vals` (the scores) and `ref` (where they sit in metrics.json), `input` and
  `input_ref` (the LQ's scores, with `lq` given), `paper` (Table 1's V-Bridge (PSNR, SSIM)
  without / with drift correction, or None)."""
  rows = []
  for cat, vals in result["per_category"].items():
    name = table1_name(cat)
    rows.append({"label": (cat or "(root)") + (f" ({name})" if name and name != cat else ""),
                 "n": vals["count"], "vals": vals, "ref": ("per_category", cat),
                 "input": result.get("input_per_category", {}).get(cat),
                 "input_ref": ("input_per_category", cat), "paper": TABLE1.get(name)})
  if result["per_image"]:
    n = len(result["per_image"])
    for label, field, paper in (("average per image", "average_per_image", TABLE1["Average"]),
                                ("average per category", "average_per_category", None)):
      rows.append({"label": label, "n": n, "vals": result[field], "ref": (field,),
                   "input": result.get(f"input_{field}"), "input_ref": (f"input_{field}",),
                   "paper": paper})
  return rows


def fmt_score(key: str, value: float) -> str:
  """A score as the tables print it: SSIM to 4 places, PSNR to 2."""
  return f"{value:.4f}" if key.startswith("ssim") else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
  keys = metric_keys(result["protocol"])
  with_lq = "lq" in result
  head = (["category", "n"] + list(keys) + (["input PSNR/SSIM"] if with_lq else [])
          + ["paper woDC PSNR/SSIM", "paper PSNR/SSIM"])
  lines = [f"Protocol `{result['protocol']}`; paper: Table 1 (V-Bridge without / with drift "
           f"correction).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in table_rows(result):
    cells = [row["label"], str(row["n"])] + [fmt_score(k, row["vals"][k]) for k in keys]
    if with_lq:
      inp = row["input"]
      cells.append(" / ".join(fmt_score(k, inp[k]) for k in keys[:2]) if inp else "")
    cells += [f"{p:.2f} / {s:.4f}" for p, s in row["paper"]] if row["paper"] else ["", ""]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def check_out(out: Path) -> None:
  """Fails with one line (OutputError), before anything is scored, when `out` cannot take
  the outputs: a file in its place, a folder that cannot be created or written (a probe
  file is written and removed)."""
  out = Path(out)
  if out.exists() and not out.is_dir():
    raise OutputError(f"out {out} is an existing file, not a folder")
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"out {out}: cannot create the folder ({e.strerror or e})") from None
  try:
    tempfile.TemporaryFile(dir=out).close()  # also for root on a read-only mount
  except OSError as e:
    raise OutputError(f"out {out}: the folder is not writable ({e.strerror or e})") from None


def write_file(path: Path, text: str) -> Path:
  """`text` into `path` atomically; a failure (disk full) is one OutputError naming it."""
  try:
    return atomic.write_text(path, text)
  except OSError as e:
    raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def write(result: dict[str, Any], out: Path) -> None:
  """metrics.json, metrics.csv, metrics.md into `out` (each written atomically; a failed
  write is one OutputError naming the file)."""
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"out {out}: cannot create the folder ({e.strerror or e})") from None
  keys = metric_keys(result["protocol"])
  write_file(out / "metrics.json", json.dumps(result, indent=2) + "\n")
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["category", "name", *keys, "resized_from"])
  for r in result["per_image"]:
    size = r["resized_from"]
    w.writerow([r["category"], r["name"], *(repr(r[k]) for k in keys),
                f"{size[0]}x{size[1]}" if size else ""])
  write_file(out / "metrics.csv", buf.getvalue())
  write_file(out / "metrics.md", markdown(result))


def report(result: dict[str, Any], strict_size: bool = False) -> int:
  """Prints the problems on stderr and the table on stdout; returns the exit status."""
  for side, names in result["missing"].items():
    if names:
      other = {"gt": "a ground truth", "pred": "a prediction", "lq": "an input (lq)"}[side]
      print(f"warning: {len(names)} image(s) without {other}: {', '.join(names[:5])}"
            + (" ..." if len(names) > 5 else ""), file=sys.stderr)
  for line in result["unreadable"]:
    print(f"error: cannot read {line}", file=sys.stderr)
  for s in result["skipped"]:
    print(f"error: skipped {s['pred']}: {s['reason']}", file=sys.stderr)
  n = result["resized"]
  if n and result["protocol"] == "vbridge_mp4":
    print(f"note: {n} prediction(s) zoomed to their GT size, as the authors' eval.py does "
          f"(MP4 frames are padded to multiples of 16)", file=sys.stderr)
  elif n:
    print(f"warning: {n} prediction(s) differ in size from their GT and were resized to it "
          f"(cubic spline; listed under resized_from in metrics.json; "
          f"--config.strict_size=true makes this an error)", file=sys.stderr)
  print(markdown(result), end="")
  bad = (result["unreadable"] or result["skipped"] or not result["per_image"]
         or any(result["missing"].values()))  # an unpaired image is a problem too (module doc)
  return 1 if bad else 0
