"""report.html (evaluation/report.py) of evaluate, the held-out evaluation and the miniature:
well-formed, every link resolves, every number equals the JSON beside it; and evaluate's
up-front check of `out` (a file, a read-only folder: no scoring) and its late write failure."""

import errno
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from vbridge_jax import evaluate as evaluate_cmd
from vbridge_jax import miniature
from vbridge_jax.configs import evaluate as evaluate_config
from vbridge_jax.evaluation import protocols, report
from vbridge_jax.training import heldout as E

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Parser(HTMLParser):
  """Checks that every tag is closed in order; collects links, tagged numbers, gallery rows."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.stack, self.errors, self.links, self.numbers, self.rows, self.papers = [], [], [], [], [], []
    self._span = None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag not in VOID:
      self.stack.append(tag)
    for k in ("src", "href"):
      if a.get(k):
        self.links.append(a[k])
    if tag == "span" and "data-v" in a:
      self._span = {**a, "text": ""}
    if tag == "span" and "data-paper" in a:
      self.papers.append(float(a["data-paper"]))
    if tag == "tr" and "data-name" in a:
      self.rows.append(a)

  def handle_startendtag(self, tag, attrs):
    self.handle_starttag(tag, attrs)
    if tag not in VOID:
      self.stack.pop()

  def handle_endtag(self, tag):
    if tag in VOID:
      return
    if not self.stack or self.stack[-1] != tag:
      self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
      return
    self.stack.pop()
    if tag == "span" and self._span is not None:
      self.numbers.append(self._span)
      self._span = None

  def handle_data(self, data):
    if self._span is not None:
      self._span["text"] += data


def _lookup(report_dir: Path, ref: str, cache: dict):
  file, ptr = ref.split("#", 1)
  path = report_dir / unquote(file)
  if path not in cache:
    cache[path] = json.loads(path.read_text())
  node = cache[path]
  for part in ptr.split("/")[1:]:
    part = part.replace("~1", "/").replace("~0", "~")
    node = node[int(part)] if isinstance(node, list) else node[part]
  return float(node)


def _same(a: float, b: float) -> bool:
  return (math.isnan(a) and math.isnan(b)) or a == b


def check_report(path: Path) -> _Parser:
  """The report parses with balanced tags, each link resolves to a file or folder, and each
  number equals its JSON value (a gain: the difference of two) and prints as it rounds."""
  p = _Parser()
  p.feed(path.read_text(encoding="utf-8"))
  p.close()
  assert not p.errors and not p.stack, (p.errors, p.stack)
  for link in p.links:
    target = os.path.normpath(os.path.join(path.parent, unquote(link)))
    assert os.path.exists(target), link
  cache: dict = {}
  for n in p.numbers:
    v = float(n["data-v"])
    if "data-ref" in n:
      assert _same(v, _lookup(path.parent, n["data-ref"], cache)), n
    else:
      a, b = n["data-diff"].split("|")
      assert _same(v, _lookup(path.parent, a, cache) - _lookup(path.parent, b, cache)), n
    if math.isfinite(v):
      places = 4 if n["data-k"].startswith("ssim") else 2
      assert float(n["text"]) == pytest.approx(v, abs=0.51 * 10**-places), n
  return p


def _img(path: Path, img: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(path)


def _tree(root: Path, names=("a 1&#", "b"), cats=("01Blur", "02Noise"), size=(40, 48)):
  """A FoundIR-style tree (root/tree/<cat>/{LQ,GT}/) and predictions (root/pred/<cat>/LQ/)."""
  rng = np.random.default_rng(0)
  for cat in cats:
    for i, name in enumerate(names):
      gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
      _img(root / "tree" / cat / "GT" / f"{name}.png", gt)
      _img(root / "tree" / cat / "LQ" / f"{name}.png", np.clip(gt.astype(int) + 40, 0, 255).astype(np.uint8))
      _img(root / "pred" / cat / "LQ" / f"{name}.png", np.clip(gt.astype(int) + 5 * (i + 1), 0, 255).astype(np.uint8))


def _run(**fields) -> int:
  c = evaluate_config.get_config()
  c.progress = False
  for k, v in fields.items():
    c[k] = str(v)
  return evaluate_cmd.run(c)


def test_evaluate_report_with_lq(tmp_path):
  _tree(tmp_path)
  out = tmp_path / "scores" / "deep"  # links climb two folders
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", lq=tmp_path / "tree", out=out) == 0
  res = json.loads((out / "metrics.json").read_text())
  p = check_report(out / "report.html")
  assert len(p.rows) == len(res["per_image"]) == 4
  scores = [float(r["data-score"]) for r in p.rows]
  assert scores == sorted(scores)  # worst first
  assert all(float(r["data-gain"]) > 0 for r in p.rows)
  # Every per-image score and input score is shown, and the per-category table's.
  refs = {n["data-ref"] for n in p.numbers if "data-ref" in n}
  for i in range(4):
    assert {f"metrics.json#/per_image/{i}/psnr_y", f"metrics.json#/per_image/{i}/input/ssim_y"} <= refs
  assert "metrics.json#/per_category/01Blur/psnr_rgb" in refs and "metrics.json#/average_per_image/psnr_y" in refs
  assert "metrics.json#/input_average_per_category/psnr_y" in refs
  # The LQ, restored and GT pictures of each image, with names that need escaping.
  links = {os.path.normpath(out / unquote(link)) for link in p.links}
  for r in res["per_image"]:
    assert {os.path.normpath(r[k]) for k in ("lq", "pred", "gt")} <= links
  assert res["per_image"][0]["lq"].endswith(os.path.join("01Blur", "LQ", "a 1&#.png"))
  # Table 1 from its one home, protocols.TABLE1, beside Blur and Noise and the average.
  want = [x for name in ("Blur", "Noise", "Average") for pair in protocols.TABLE1[name] for x in pair]
  assert p.papers == want
  assert res["input_average_per_image"]["psnr_y"] < res["average_per_image"]["psnr_y"]
  assert "| input PSNR/SSIM |" in (out / "metrics.md").read_text()


def test_evaluate_report_without_lq_lists_problems(tmp_path):
  _tree(tmp_path, names=("a", "b", "c"), cats=("Rain",))
  (tmp_path / "pred" / "Rain" / "LQ" / "c.png").unlink()  # missing prediction
  big = np.zeros((60, 72, 3), np.uint8)
  _img(tmp_path / "pred" / "Rain" / "LQ" / "b.png", big)  # resized to its GT
  _img(tmp_path / "pred" / "Rain" / "LQ" / "z.png", big)  # no GT
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", out=out) == 1
  p = check_report(out / "report.html")
  text = (out / "report.html").read_text()
  assert "<th>LQ</th>" not in text and "<th>restored</th>" in text and "data-gain" not in text
  assert len(p.rows) == 2
  assert "Rain/b: prediction 72x60 resized to the GT" in text
  assert "missing: without a prediction (1)" in text and "<li>Rain/c</li>" in text
  assert "missing: without a ground truth (1)" in text and "<li>Rain/z</li>" in text


def _counting(monkeypatch):
  calls = []
  real = evaluate_cmd.evaluate
  monkeypatch.setattr(evaluate_cmd, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
  return calls


def test_evaluate_refuses_an_out_that_is_a_file_before_scoring(tmp_path, monkeypatch, capsys):
  _tree(tmp_path, names=("a",), cats=("Rain",))
  calls = _counting(monkeypatch)
  (tmp_path / "out").write_text("keep me")
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", out=tmp_path / "out") == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: out {tmp_path / 'out'} is an existing file, not a folder"]
  assert calls == [] and (tmp_path / "out").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_refuses_a_read_only_out_before_scoring(tmp_path, monkeypatch, capsys):
  _tree(tmp_path, names=("a",), cats=("Rain",))
  calls = _counting(monkeypatch)
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    for out in (ro, ro / "sub"):
      assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", out=out) == 1
      err = capsys.readouterr().err.strip().splitlines()
      assert len(err) == 1 and err[0].startswith(f"error: out {out}: "), err
  finally:
    ro.chmod(0o755)
  assert calls == [] and not list(ro.iterdir())


def test_evaluate_refuses_an_out_on_a_read_only_mount_before_scoring(tmp_path, monkeypatch, capsys):
  """What root meets on a read-only file system: the probe file cannot be created."""
  _tree(tmp_path, names=("a",), cats=("Rain",))
  calls = _counting(monkeypatch)

  def read_only(*a, **k):
    raise OSError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(protocols.tempfile, "TemporaryFile", read_only)
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", out=out) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: out {out}: the folder is not writable (Read-only file system)"]
  assert calls == [] and not list(out.iterdir())


def test_evaluate_names_the_file_when_the_disk_fills_at_the_end(tmp_path, monkeypatch, capsys):
  _tree(tmp_path, names=("a",), cats=("Rain",))
  real = protocols.atomic.write_text

  def full(path, text, **kw):
    if Path(path).name == "metrics.csv":
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(path, text, **kw)

  monkeypatch.setattr(protocols.atomic, "write_text", full)
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", out=out) == 1
  cap = capsys.readouterr()
  assert cap.err.strip().splitlines() == [f"error: {out / 'metrics.csv'}: cannot write (No space left on device)"]
  assert "| Rain | 1 |" in cap.out  # the table was printed before the failed write
  assert json.loads((out / "metrics.json").read_text())["per_image"]  # what was written stays whole


class _Logger:
  def __init__(self):
    self.rows = []

  def log_scalars(self, step, row):
    self.rows.append((step, row))


def test_heldout_report(tmp_path):
  """Evaluator._write without a model: the report, its pictures, its numbers in step_N.json."""
  src = tmp_path / "heldout"
  for cat in ("Blur", "Noise"):
    for i in range(2):
      rng = np.random.default_rng(i)
      gt = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
      _img(src / cat / "GT" / f"{i:04d}.png", gt)
      _img(src / cat / "LQ" / f"{i:04d}.png", np.clip(gt.astype(int) + 30, 0, 255).astype(np.uint8))
  ev = object.__new__(E.Evaluator)
  ev.workdir, ev.logger = str(tmp_path / "run"), _Logger()
  ev.images = E.load_heldout(str(src), size=16)  # the report shows the images as scored: resized
  ev.inputs = E.score(ev.images, [im.lq for im in ev.images])
  preds = [np.clip(im.gt.astype(int) + 3 * i, 0, 255).astype(np.uint8) for i, im in enumerate(ev.images)]
  res = E.score(ev.images, preds)
  res["ceiling"] = E.score(ev.images, [im.gt for im in ev.images])
  ev._write(7, {"eval/psnr_y": res["average_per_image"]["psnr_y"]}, res, preds)
  path = tmp_path / "run" / "eval" / "step_0000007" / "report.html"
  p = check_report(path)
  assert len(p.rows) == 4 and [float(r["data-score"]) for r in p.rows] == sorted(float(r["data-score"]) for r in p.rows)
  refs = {n["data-ref"] for n in p.numbers if "data-ref" in n}
  assert "../step_0000007.json#/restored/per_image/3/psnr_y" in refs
  assert "../step_0000007.json#/input/per_category/Noise/ssim_y" in refs
  restored = np.asarray(Image.open(path.parent / "Noise" / "0001.png"))
  assert np.array_equal(restored, preds[3])  # the restored image as scored
  lq = np.asarray(Image.open(tmp_path / "run" / "eval" / "heldout" / "Blur" / "0000.lq.png"))
  assert lq.shape == (16, 16, 3) and np.array_equal(lq, ev.images[0].lq)
  assert "reproduction ceiling inf dB" in path.read_text()


def test_miniature_report(tmp_path):
  """miniature.report_html on scored folders (the miniature's scores/ layout), without training."""
  _tree(tmp_path, names=("0000",), cats=("Blur", "Noise"))
  heldout, scores = tmp_path / "tree", {}
  for key, _ in miniature.COLUMNS:
    pred = heldout if key == "input" else tmp_path / "restored" / f"heldout_{key}"
    if key != "input":
      shutil.copytree(tmp_path / "pred", pred)
    scores[key] = protocols.evaluate(pred, heldout, "vbridge", progress=False)
    protocols.write(scores[key], tmp_path / "scores" / key)
  (tmp_path / "table.md").write_text(miniature.table(scores))  # as the miniature writes it before
  p = check_report(miniature.report_html(tmp_path, scores))
  text = (tmp_path / "report.html").read_text()
  assert all(
    f"<th>{html_label}</th>" in text
    for html_label in ["LQ", "(a) prior alone", "(b) from scratch", "(c) from the prior", "(d) (c) + corrector", "GT"]
  )
  assert len(p.rows) == 2
  refs = {n["data-ref"] for n in p.numbers if "data-ref" in n}
  assert "scores/drift/metrics.json#/per_image/1/psnr_y" in refs
  assert "scores/input/metrics.json#/average_per_category/ssim_y" in refs


def test_report_helpers():
  assert report.pointer("a b.json", "per_category", "x/y~", 3) == "a b.json#/per_category/x~1y~0/3"
  assert report.href("/r/out", "/r/pred/a #1.png") == "../pred/a%20%231.png"
  assert report.num("psnr_y", float("inf"), "m.json#/x").endswith('data-v="Infinity" data-ref="m.json#/x">inf</span>')


def test_evaluate_lists_a_pair_without_its_input(tmp_path, capsys):
  """With `lq`, a pair whose LQ is not there is listed (missing.lq), shown without an LQ
  picture, and makes the exit status 1; the others show their LQ and gain."""
  _tree(tmp_path, names=("a", "b"), cats=("Rain",))
  shutil.copytree(tmp_path / "tree" / "Rain" / "LQ", tmp_path / "inputs" / "Rain")
  (tmp_path / "inputs" / "Rain" / "b.png").unlink()
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "tree", lq=tmp_path / "inputs", out=out) == 1
  assert "warning: 1 image(s) without an input (lq): Rain/b" in capsys.readouterr().err
  res = json.loads((out / "metrics.json").read_text())
  assert res["missing"]["lq"] == ["Rain/b"] and [("input" in r) for r in res["per_image"]] == [True, False]
  assert res["input_per_category"]["Rain"]["count"] == 1
  p = check_report(out / "report.html")
  assert {r["data-name"]: r["data-gain"] for r in p.rows}["Rain/b"] == "Infinity"  # no gain: sorted last
  assert "missing: without an input (lq) (1)" in (out / "report.html").read_text()
