"""HTML reports of scores (`report.html`): the one report writer of `evaluate`, the trainer's
held-out evaluation and the miniature.

A report is one self-contained page (inline style, a few lines of inline script to sort the
gallery, no fetched resource) apart from its pictures, which it links by paths relative to
its own folder, so the folder tree can be moved or copied whole and opened in a browser. It
holds:

- the per-category table beside the paper's Table 1 (V-Bridge without / with drift
  correction, `protocols.TABLE1`, matched by category name), both averages: per image
  (Table 1's own) and per category;
- a gallery, one row per image: LQ | restored (one column per restored row given) | GT,
  each picture with its scores and, where the input was scored, the gain over it; ordered
  worst first (by the last restored column's PSNR) and re-sortable by gain or name;
- the lists of what was resized, missing, skipped or unreadable.

Every number printed is tagged with where it comes from: `data-v` (its full value) and
`data-ref` (`FILE#/json/pointer`, the file relative to the report), or `data-diff`
(`REF_A|REF_B`: a gain, A - B), so a reader (and tests/test_report.py) can check each one
against the JSON written beside it. Standard library only (`html.escape`, `urllib.parse`).
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

from vbridge_jax.evaluation import protocols
from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import OutputError

NAME = "report.html"
LABELS = {
  "psnr_y": "PSNR-Y",
  "ssim_y": "SSIM-Y",
  "psnr_rgb": "PSNR-RGB",
  "ssim_rgb": "SSIM-RGB",
  "psnr": "PSNR",
  "ssim": "SSIM",
}
VIDEO_EXTS = (".mp4",)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
.gallery td{text-align:center}
.gallery img,.gallery video{width:224px;height:auto;display:block;margin:auto}
.pixelated .gallery img{image-rendering:pixelated}
.s{font-size:12px;color:#444}
.gain{font-weight:bold}
.neg{color:#b00}
.pos{color:#070}
"""
_SCRIPT = """
function sortGallery(k){
  var tb=document.getElementById('gallery').tBodies[0];
  var rows=Array.prototype.slice.call(tb.rows);
  rows.sort(function(a,b){
    if(k==='name'){return a.dataset.name<b.dataset.name?-1:(a.dataset.name>b.dataset.name?1:0);}
    var x=parseFloat(a.dataset[k]),y=parseFloat(b.dataset[k]);
    if(isNaN(x)){x=Infinity;} if(isNaN(y)){y=Infinity;}
    return x===y?0:(x<y?-1:1);
  });
  rows.forEach(function(r){tb.appendChild(r);});
}
"""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One picture of a gallery row: the file shown and its scores.

  `ref`: where `scores` sit, `FILE#/pointer` relative to the report; `gain`/`gain_ref`: the
  gain over the input per key and the input's `ref` (the gain is scores - input)."""

  image: str | os.PathLike | None
  scores: dict[str, float] | None = None
  ref: str = ""
  gain: dict[str, float] | None = None
  gain_ref: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
  """A gallery row: its name and one cell per column."""

  name: str
  cells: Sequence[Cell]


def pointer(file: str, *parts: Any) -> str:
  """`file#/a/b/0`, a JSON pointer (RFC 6901) into `file` (`file#`: the whole document)."""
  return f"{file}#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _data_value(x: float) -> str:
  """A float as both Python's float() and JavaScript's parseFloat() read it back."""
  x = float(x)
  if math.isnan(x):
    return "NaN"
  if math.isinf(x):
    return "Infinity" if x > 0 else "-Infinity"
  return repr(x)


def _fmt(key: str, x: float) -> str:
  x = float(x)
  if not math.isfinite(x):
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
  return protocols.fmt_score(key, x)


def num(key: str, value: float, ref: str = "", *, diff: str = "") -> str:
  """A score as a tagged span (`data-v`, and `data-ref` or `data-diff`)."""
  attrs = f' data-k="{html.escape(key)}" data-v="{_data_value(value)}"'
  if ref:
    attrs += f' data-ref="{html.escape(ref)}"'
  if diff:
    sign = "+" if float(value) >= 0 else ""
    cls = "gain pos" if float(value) > 0 else "gain neg" if float(value) < 0 else "gain"
    return f'<span class="{cls}"{attrs} data-diff="{html.escape(diff)}">{sign}{_fmt(key, value)}</span>'
  return f'<span class="v"{attrs}>{_fmt(key, value)}</span>'


def href(report_dir: str | os.PathLike, target: str | os.PathLike) -> str:
  """The link from a report in `report_dir` to `target`: relative, posix, %-quoted."""
  rel = os.path.relpath(os.path.abspath(target), os.path.abspath(report_dir))
  return quote(Path(rel).as_posix())


def _picture(report_dir: Path, image, alt: str) -> str:
  if image is None:
    return '<span class="s">(none)</span>'
  link = html.escape(href(report_dir, image))
  if Path(image).suffix.lower() in VIDEO_EXTS:
    return f'<video src="{link}" controls muted preload="metadata"></video>'
  return f'<a href="{link}"><img src="{link}" alt="{html.escape(alt)}" loading="lazy"></a>'


def _scores_line(cell: Cell, keys: Sequence[str]) -> str:
  if not cell.scores:
    return ""
  parts = [f"{LABELS.get(k, k)} {num(k, cell.scores[k], pointer_key(cell.ref, k))}" for k in keys]
  if cell.gain is not None:
    k = keys[0]
    parts.append(
      num(k, cell.gain[k], diff=f"{pointer_key(cell.ref, k)}|{pointer_key(cell.gain_ref, k)}")
      + (" dB" if k.startswith("psnr") else "")
    )
  return '<div class="s">' + " &middot; ".join(parts) + "</div>"


def pointer_key(ref: str, key: str) -> str:
  """`ref` (a pointer to a dict of scores) extended by `key`; "" stays ""."""
  return _join(ref, key) if ref else ""


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A table of ready HTML cells (escape text before)."""
  out = ["<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
  out += ["<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows]
  return "\n".join(out + ["</tbody>", "</table>"])


def _sort_value(x: float | None) -> float:
  return math.inf if x is None or math.isnan(x) else float(x)


def gallery(report_dir: str | os.PathLike, labels: Sequence[str], rows: Sequence[Row], keys: Sequence[str]) -> str:
  """The gallery: one row per image, one column per label; worst first by the last cell
  with scores (its `keys[0]`), re-sortable by gain and name."""
  report_dir = Path(report_dir)

  def main(row: Row) -> Cell | None:
    scored = [c for c in row.cells if c.scores]
    gained = [c for c in scored if c.gain is not None]
    return (gained or scored or [None])[-1]

  def score(row: Row) -> float | None:
    c = main(row)
    return c.scores[keys[0]] if c else None

  def gain(row: Row) -> float | None:
    c = main(row)
    return c.gain[keys[0]] if c and c.gain is not None else None

  order = sorted(rows, key=lambda r: (_sort_value(score(r)), r.name))
  with_gain = any(gain(r) is not None for r in rows)
  options = [("score", f"worst {LABELS.get(keys[0], keys[0])} first")]
  options += [("gain", "least gain first")] if with_gain else []
  options += [("name", "by name")]
  out = [
    '<p>order: <select id="order" onchange="sortGallery(this.value)">'
    + "".join(f'<option value="{v}">{html.escape(t)}</option>' for v, t in options)
    + "</select></p>",
    '<table class="gallery" id="gallery">',
    "<thead><tr><th>image</th>" + "".join(f"<th>{html.escape(lb)}</th>" for lb in labels) + "</tr></thead>",
    "<tbody>",
  ]
  for r in order:
    attrs = f' data-name="{html.escape(r.name)}" data-score="{_data_value(_sort_value(score(r)))}"'
    if with_gain:
      attrs += f' data-gain="{_data_value(_sort_value(gain(r)))}"'
    cells = "".join(
      f"<td>{_picture(report_dir, c.image, f'{r.name} {lb}')}{_scores_line(c, keys)}</td>"
      for c, lb in zip(r.cells, labels)
    )
    out.append(f"<tr{attrs}><td>{html.escape(r.name)}</td>{cells}</tr>")
  return "\n".join(out + ["</tbody>", "</table>", f"<script>{_SCRIPT}</script>"])


def lists(sections: dict[str, Sequence[str]]) -> str:
  """One heading and list per entry ("none" when empty)."""
  out = []
  for title, items in sections.items():
    out.append(f"<h3>{html.escape(title)} ({len(items)})</h3>")
    out.append(
      "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>" if items else '<p class="s">none</p>'
    )
  return "\n".join(out)


def page(title: str, parts: Sequence[str], *, pixelated: bool = False) -> str:
  """The whole page; `parts` are ready HTML. `pixelated`: small pictures enlarged without
  smoothing (the tiny models' images)."""
  cls = ' class="pixelated"' if pixelated else ""
  return "\n".join(
    [
      "<!DOCTYPE html>",
      '<html lang="en">',
      "<head>",
      '<meta charset="utf-8">',
      f"<title>{html.escape(title)}</title>",
      f"<style>{_STYLE}</style>",
      "</head>",
      f"<body{cls}>",
      f"<h1>{html.escape(title)}</h1>",
      *parts,
      "</body>",
      "</html>",
      "",
    ]
  )


def write_page(path: str | os.PathLike, title: str, parts: Sequence[str], *, pixelated: bool = False) -> Path:
  """`page(...)` into `path` atomically; a failed write is one OutputError naming it."""
  return protocols.write_file(Path(path), page(title, parts, pixelated=pixelated))


def save_png(path: str | os.PathLike, img: np.ndarray) -> Path:
  """A uint8 image as a PNG, atomically (its folder made); OutputError naming it on failure."""
  path = Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
      Image.fromarray(np.asarray(img, np.uint8)).save(tmp, format="PNG")
  except OSError as e:
    raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
  return path


def _pair_cell(vals: dict[str, float] | None, keys: Sequence[str], ref: str) -> str:
  if not vals:
    return ""
  return " / ".join(num(k, vals[k], pointer_key(ref, k)) for k in keys)


def _paper_cells(paper) -> list[str]:
  if not paper:
    return ["", ""]
  return [f'<span data-paper="{p!r}">{p:.2f}</span> / <span data-paper="{s!r}">{s:.4f}</span>' for p, s in paper]


# ------------------------------------------------------------------------------- evaluate


def evaluate_report(result: dict[str, Any], out: str | os.PathLike, json_name: str = "metrics.json") -> Path:
  """`out/report.html` for an `evaluate` result (written as `out/json_name`): the table beside
  Table 1, the gallery LQ (with `lq` given) | restored | GT, and the problem lists."""
  out = Path(out)
  keys = protocols.metric_keys(result["protocol"])
  with_lq = "lq" in result
  head = ["category", "n"] + [LABELS.get(k, k) for k in keys]
  head += [f"input {LABELS.get(keys[0])} / {LABELS.get(keys[1])}", "gain"] if with_lq else []
  head += ["paper woDC PSNR / SSIM", "paper PSNR / SSIM"]
  rows = []
  for r in protocols.table_rows(result):
    ref = pointer(json_name, *r["ref"])
    cells = [html.escape(r["label"]), str(r["n"])] + [num(k, r["vals"][k], pointer_key(ref, k)) for k in keys]
    if with_lq:
      iref = pointer(json_name, *r["input_ref"])
      inp = r["input"]
      cells.append(_pair_cell(inp, keys[:2], iref))
      cells.append(
        num(
          keys[0], r["vals"][keys[0]] - inp[keys[0]], diff=f"{pointer_key(ref, keys[0])}|{pointer_key(iref, keys[0])}"
        )
        if inp
        else ""
      )
    rows.append(cells + _paper_cells(r["paper"]))
  gallery_rows = []
  for i, r in enumerate(result["per_image"]):
    ref = pointer(json_name, "per_image", i)
    name = f"{r['category']}/{r['name']}" if r["category"] else r["name"]
    inp = r.get("input")
    cells = [Cell(r.get("lq"), inp, pointer(json_name, "per_image", i, "input"))] if with_lq else []
    gain = {k: r[k] - inp[k] for k in keys} if inp else None
    cells += [
      Cell(r.get("pred"), r, ref, gain, pointer(json_name, "per_image", i, "input") if inp else ""),
      Cell(r.get("gt")),
    ]
    gallery_rows.append(Row(name, cells))
  labels = (["LQ"] if with_lq else []) + ["restored", "GT"]
  folders = [("predictions", result.get("pred")), ("ground truth", result.get("gt"))]
  folders += [("inputs (LQ)", result["lq"])] if with_lq else []
  intro = (
    "<p>Protocol <code>"
    + html.escape(result["protocol"])
    + "</code>; "
    + "; ".join(f'{t}: <a href="{html.escape(href(out, p))}">{html.escape(str(p))}</a>' for t, p in folders if p)
    + f'. Scores: <a href="{quote(json_name)}">{html.escape(json_name)}</a>. Paper: Table 1, '
    "V-Bridge without / with drift correction.</p>"
  )
  parts = [
    intro,
    "<h2>Per category</h2>",
    table(head, rows),
    f"<h2>Images ({len(gallery_rows)})</h2>",
    gallery(out, labels, gallery_rows, keys[:2]),
    "<h2>Problems</h2>",
    lists(problem_lists(result)),
  ]
  return write_page(out / NAME, f"evaluate: {result.get('pred', '')}", parts)


def problem_lists(result: dict[str, Any]) -> dict[str, list[str]]:
  """The resized, missing, skipped and unreadable lists of an `evaluate` result."""

  def size(s):
    return f"{s[0]}x{s[1]}"

  resized = [
    f"{r['category']}/{r['name']}: prediction {size(r['resized_from'])} resized to the GT"
    for r in result["per_image"]
    if r.get("resized_from")
  ]
  resized += [
    f"{r['category']}/{r['name']}: input {size(r['input']['resized_from'])} resized to the GT"
    for r in result["per_image"]
    if (r.get("input") or {}).get("resized_from")
  ]
  names = {"pred": "without a prediction", "gt": "without a ground truth", "lq": "without an input (lq)"}
  out = {"resized": resized}
  out |= {f"missing: {names.get(side, side)}": list(v) for side, v in result["missing"].items()}
  out["skipped"] = [f"{s['pred']}: {s['reason']}" for s in result["skipped"]]
  out["unreadable"] = list(result["unreadable"])
  return out


# ------------------------------------------------------------------------------- held-out, miniature


@dataclasses.dataclass(frozen=True)
class Scored:
  """One column of a comparison: a label, its scores (`per_image` rows with `category` and
  `name`, `per_category`, both averages), where they sit (`ref`, a pointer relative to the
  report) and its pictures by full name (`<category>/<name>`)."""

  label: str
  result: dict[str, Any]
  ref: str
  images: dict[str, str | os.PathLike]


def full_name(row: dict[str, Any]) -> str:
  """`<category>/<name>` of a per-image row (the held-out rows' names already are)."""
  cat, name = row.get("category", ""), row["name"]
  return name if not cat or name.startswith(f"{cat}/") else f"{cat}/{name}"


def compare_report(
  path: str | os.PathLike,
  title: str,
  intro: str,
  inputs: Scored | None,
  columns: Sequence[Scored],
  gt: dict[str, str | os.PathLike],
  keys: Sequence[str] = ("psnr_y", "ssim_y"),
  extra: Sequence[str] = (),
  pixelated: bool = True,
) -> Path:
  """A report comparing restored columns with the input on one set: the table (per category
  and both averages: input, each column, the last column's gain, Table 1) and the gallery
  LQ | each column | GT, every picture with its scores and the gain over the input.
  `extra`: more HTML after the gallery."""
  path = Path(path)
  cols = ([inputs] if inputs else []) + list(columns)
  first = cols[0].result
  counts: dict[str, int] = {}
  for r in first["per_image"]:
    counts[r["category"]] = counts.get(r["category"], 0) + 1
  last = columns[-1] if columns else None
  head = ["category", "n"] + [f"{html.escape(c.label)} {LABELS[keys[0]]} / {LABELS[keys[1]]}" for c in cols]
  head += [f"gain of {html.escape(last.label)}"] if inputs and last else []
  head += ["paper woDC PSNR / SSIM", "paper PSNR / SSIM"]

  def gain_cell(ref_parts: tuple, vals_of) -> str:
    a, b = vals_of(last), vals_of(inputs)
    if not a or not b:
      return ""
    ra, rb = pointer_key(_join(last.ref, *ref_parts), keys[0]), pointer_key(_join(inputs.ref, *ref_parts), keys[0])
    return num(keys[0], a[keys[0]] - b[keys[0]], diff=f"{ra}|{rb}")

  rows = []
  for cat in first["per_category"]:
    vals_of = lambda c, cat=cat: c.result["per_category"].get(cat)
    cells = [html.escape(cat), str(counts.get(cat, 0))]
    cells += [_pair_cell(vals_of(c), keys, _join(c.ref, "per_category", cat)) for c in cols]
    cells += [gain_cell(("per_category", cat), vals_of)] if inputs and last else []
    rows.append(cells + _paper_cells(protocols.TABLE1.get(protocols.table1_name(cat))))
  for label, field, paper in (
    ("average per image", "average_per_image", protocols.TABLE1["Average"]),
    ("average per category", "average_per_category", None),
  ):
    vals_of = lambda c, field=field: c.result.get(field)
    cells = [f"<b>{label}</b>", str(len(first["per_image"]))]
    cells += [_pair_cell(vals_of(c), keys, _join(c.ref, field)) for c in cols]
    cells += [gain_cell((field,), vals_of)] if inputs and last else []
    rows.append(cells + _paper_cells(paper))

  def indexed(c: Scored) -> dict[str, tuple[int, dict[str, Any]]]:
    return {full_name(r): (i, r) for i, r in enumerate(c.result["per_image"])}

  by_col = [indexed(c) for c in cols]
  gallery_rows = []
  for name in (full_name(r) for r in first["per_image"]):
    inp = by_col[0].get(name) if inputs else None
    inp_ref = _join(inputs.ref, "per_image", inp[0]) if inp else ""
    cells = []
    for c, idx in zip(cols, by_col):
      i, r = idx.get(name, (None, None))
      ref = _join(c.ref, "per_image", i) if r is not None else ""
      gain = {k: r[k] - inp[1][k] for k in keys} if inp and r is not None and c is not inputs else None
      cells.append(Cell(c.images.get(name), r, ref, gain, inp_ref if gain else ""))
    gallery_rows.append(Row(name, cells + [Cell(gt.get(name))]))
  labels = (["LQ"] if inputs else []) + [c.label for c in columns] + ["GT"]
  parts = [
    intro,
    "<h2>Per category</h2>",
    table(head, rows),
    f"<h2>Images ({len(gallery_rows)})</h2>",
    gallery(path.parent, labels, gallery_rows, keys),
    *extra,
  ]
  return write_page(path, title, parts, pixelated=pixelated)


def _join(ref: str, *parts: Any) -> str:
  """A pointer `ref` extended by `parts`."""
  return ref + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
