"""Both protocols against independent float64 computations (numpy/scipy/scikit-image) on real photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import color, data
from skimage import metrics as skm

from vbridge_jax import evaluate
from vbridge_jax.configs import evaluate as evaluate_config
from vbridge_jax.evaluation import metrics as M
from vbridge_jax.evaluation import protocols


def _run(**fields) -> int:
  """`python -m vbridge_jax.evaluate --config.KEY=VALUE ...` in-process."""
  c = evaluate_config.get_config()
  c.progress = False
  for k, v in fields.items():
    c[k] = str(v) if isinstance(v, Path) else v
  return evaluate.run(c)


def _degrade(img, seed):
  """A realistic prediction: blurred, noisy, JPEG-compressed."""
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(img.astype(np.float64), sigma=(1.2, 1.2, 0)) + rng.normal(0, 6, img.shape)
  x = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))
  import io
  buf = io.BytesIO()
  x.save(buf, format="JPEG", quality=40)
  return np.asarray(Image.open(buf).convert("RGB"))


def _photos():
  out = []
  for i, name in enumerate(("astronaut", "chelsea", "coffee")):
    gt = getattr(data, name)()[:200, :260]
    out.append((name, _degrade(gt, i), gt))
  return out


def ref_vbridge(pred, gt):
  p, g = pred.astype(np.float64), gt.astype(np.float64)
  y_p = color.rgb2ycbcr(pred)[..., 0]  # 16 + (65.481 R + 128.553 G + 24.966 B), R in [0, 1]
  y_g = color.rgb2ycbcr(gt)[..., 0]

  def ssim(a, b):
    _, full = skm.structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    return full[5:-5, 5:-5].mean()  # interior: the zero padding does not reach it

  return {"psnr_y": skm.peak_signal_noise_ratio(y_g, y_p, data_range=255),
          "ssim_y": ssim(y_p, y_g),
          "psnr_rgb": np.mean([skm.peak_signal_noise_ratio(g[..., c], p[..., c], data_range=255)
                               for c in range(3)]),
          "ssim_rgb": np.mean([ssim(p[..., c], g[..., c]) for c in range(3)])}


def ref_foundir(pred, gt):
  p, g = pred.astype(np.float64) / 255, gt.astype(np.float64) / 255
  psnr = 10 * np.log10(1 / (np.mean((p - g) ** 2) + 1e-8))
  yp = np.round(255 * (p @ np.array([0.299, 0.587, 0.114])))
  yg = np.round(255 * (g @ np.array([0.299, 0.587, 0.114])))
  f = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode="constant")[5:-5, 5:-5]
  mp, mg = f(yp), f(yg)
  spp, sgg, spg = f(yp * yp) - mp * mp, f(yg * yg) - mg * mg, f(yp * yg) - mp * mg
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cs = np.maximum((2 * spg + c2) / (spp + sgg + c2), 0)
  return {"psnr": psnr, "ssim": np.mean((2 * mp * mg + c1) / (mp ** 2 + mg ** 2 + c1) * cs)}


def _compare(ours, ref):
  for k, v in ref.items():
    tol = 1e-4 if k.startswith("psnr") else 1e-5
    assert abs(ours[k] - v) <= tol, (k, ours[k], v)


def test_window_is_fspecial():
  w = np.outer(M.gaussian_taps(), M.gaussian_taps())
  x = np.arange(-5, 6)
  ref = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * 1.5 ** 2))
  np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-12)


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_protocols_on_photos(protocol):
  ref_fn = {"vbridge": ref_vbridge, "foundir": ref_foundir}[protocol]
  for _, pred, gt in _photos():
    ours = M.compute(protocol, pred, gt)
    assert set(ours) == set(M.METRIC_KEYS[protocol])
    _compare(ours, ref_fn(pred, gt))
  # the clamp of the contrast-structure term matters on anti-correlated content
  gt = data.camera()[:64, :64, None].repeat(3, -1)
  inv = (255 - gt).astype(np.uint8)
  _compare(M.compute(protocol, inv, gt), ref_fn(inv, gt))


def test_foundir_samples(foundir_samples):
  """The real FoundIR pairs (LQ scored as the prediction), full size (one is 2720x1528)."""
  for lq in sorted(foundir_samples.glob("*/LQ/*")):
    gt = lq.parent.parent / "GT" / lq.name
    p = np.asarray(Image.open(lq).convert("RGB"))[:300, :400]
    g = np.asarray(Image.open(gt).convert("RGB"))[:300, :400]
    _compare(M.compute("vbridge", p, g), ref_vbridge(p, g))
    _compare(M.compute("foundir", p, g), ref_foundir(p, g))


def test_resize_when_sizes_differ():
  """The authors' resize: scipy zoom per channel of the uint8 image, order 3 (scipy rounds
  and clips to the integer output type)."""
  _, pred, gt = _photos()[1]
  small = np.asarray(Image.fromarray(pred).resize((130, 100), Image.BICUBIC))
  up = M.resize_to(small, *gt.shape[:2])
  f = (gt.shape[0] / 100, gt.shape[1] / 130)
  want = np.stack([ndimage.zoom(small[..., c].astype(np.float64), f, order=3) for c in range(3)], -1)
  np.testing.assert_array_equal(up, np.clip(np.round(want), 0, 255).astype(np.uint8))
  _compare(M.compute("vbridge", small, gt), ref_vbridge(up, gt))
  assert M.resize_to(gt, *gt.shape[:2]) is gt


def test_evaluate_cli_on_foundir_tree(tmp_path, foundir_samples):
  """A restore-style output tree (LQ/ folders, .png) scored against the FoundIR tree."""
  pred_root, gt_root = tmp_path / "pred", tmp_path / "gt"
  pairs = {}
  for i, lq in enumerate(sorted(foundir_samples.glob("*/LQ/*"))):
    cat = lq.parent.parent.name
    g = np.asarray(Image.open(lq.parent.parent / "GT" / lq.name).convert("RGB"))[:96, :128]
    p = _degrade(g, i)
    (gt_root / cat / "GT").mkdir(parents=True)
    (gt_root / cat / "LQ").mkdir(parents=True)
    Image.fromarray(g).save(gt_root / cat / "GT" / (lq.stem + ".jpg"), quality=100)
    Image.fromarray(g).save(gt_root / cat / "LQ" / (lq.stem + ".png"))  # ignored on the GT side
    g = np.asarray(Image.open(gt_root / cat / "GT" / (lq.stem + ".jpg")).convert("RGB"))
    (pred_root / cat / "LQ").mkdir(parents=True)
    Image.fromarray(p).save(pred_root / cat / "LQ" / (lq.stem + ".png"))
    pairs[(cat, lq.stem)] = (p, g)
  (pred_root / "01Blur" / "LQ" / "extra.png").write_bytes(
      (pred_root / "01Blur" / "LQ" / "0001.png").read_bytes())
  out = tmp_path / "out"
  assert _run(pred=pred_root, gt=gt_root, out=out) == 1  # the unpaired prediction: scored, listed, status 1
  res = json.loads((out / "metrics.json").read_text())
  assert res["protocol"] == "vbridge"
  assert len(res["per_image"]) == len(pairs)
  for row in res["per_image"]:
    _compare(row, ref_vbridge(*pairs[(row["category"], row["name"])]))
  assert res["missing"]["gt"] == ["01Blur/extra"] and res["resized"] == 0
  mean = np.mean([r["psnr_y"] for r in res["per_image"]])
  assert abs(res["average_per_image"]["psnr_y"] - mean) < 1e-9
  cats = res["per_category"]
  assert abs(res["average_per_category"]["ssim_rgb"] - np.mean([c["ssim_rgb"] for c in cats.values()])) < 1e-9
  md = (out / "metrics.md").read_text()
  assert "L+R" in md and "31.27" in md  # the paper's NightRain figure beside ours
  assert (out / "metrics.csv").read_text().startswith("category,name,psnr_y")
  (pred_root / "01Blur" / "LQ" / "extra.png").unlink()
  assert _run(pred=pred_root, gt=gt_root, out=out, protocol="foundir") == 0
  res = json.loads((out / "metrics.json").read_text())
  for row in res["per_image"]:
    _compare(row, ref_foundir(*pairs[(row["category"], row["name"])]))


def test_evaluate_names_the_unreadable_file(tmp_path):
  """A corrupt prediction or ground truth is reported by its own path; the rest are scored."""
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    for side in ("pred", "gt"):
      (tmp_path / side / "Blur").mkdir(parents=True, exist_ok=True)
      Image.fromarray(img).save(tmp_path / side / "Blur" / f"{name}.png")
  (tmp_path / "pred" / "Blur" / "a.png").write_bytes(b"not an image")
  (tmp_path / "gt" / "Blur" / "b.png").write_bytes(b"not an image")
  result = protocols.evaluate(tmp_path / "pred", tmp_path / "gt", progress=False)
  assert [r["name"] for r in result["per_image"]] == ["c"]
  bad = result["unreadable"]
  assert len(bad) == 2
  assert str(tmp_path / "pred" / "Blur" / "a.png") in bad[0] and "/gt/" not in bad[0]
  assert str(tmp_path / "gt" / "Blur" / "b.png") in bad[1] and "/pred/" not in bad[1]


# ------------------------------------------------------------------ evaluate's faults (#16)


def _tree(root, side, cat, name, img, ext=".png"):
  folder = root / cat / side if side else root / cat
  folder.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(folder / f"{name}{ext}")


def test_a_ground_truth_without_its_prediction_makes_the_status_1(tmp_path, capsys):
  """An image that was never restored is listed under `missing` and fails the command (its
  docstring: every problem makes the status 1), after the rest is scored and written."""
  rng = np.random.default_rng(2)
  for name in ("a", "b"):
    gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _tree(tmp_path / "gt", "GT", "Blur", name, gt)
    if name == "a":
      _tree(tmp_path / "pred", "LQ", "Blur", name, gt)
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "gt", out=out) == 1
  res = json.loads((out / "metrics.json").read_text())
  assert res["missing"]["pred"] == ["Blur/b"] and [r["name"] for r in res["per_image"]] == ["a"]
  assert "without a prediction" in capsys.readouterr().err


def test_a_resized_prediction_is_recorded_counted_and_can_be_an_error(tmp_path, capsys):
  """#16.6: a prediction cropped by 3 rows is resized, and says so; strict_size refuses it."""
  rng = np.random.default_rng(1)
  for name in ("a", "b"):
    gt = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    _tree(tmp_path / "gt", "GT", "Blur", name, gt)
    _tree(tmp_path / "pred", "LQ", "Blur", name, gt[:-3] if name == "a" else gt)
  out = tmp_path / "out"
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "gt", out=out) == 0
  res = json.loads((out / "metrics.json").read_text())
  rows = {r["name"]: r for r in res["per_image"]}
  assert rows["a"]["resized_from"] == [48, 37] and rows["b"]["resized_from"] is None
  assert res["resized"] == 1
  err = capsys.readouterr().err
  assert "warning: 1 prediction(s) differ in size" in err and "strict_size" in err
  assert "48x37" in (out / "metrics.csv").read_text()
  assert _run(pred=tmp_path / "pred", gt=tmp_path / "gt", out=out, strict_size=True) == 1
  res = json.loads((out / "metrics.json").read_text())
  assert [r["name"] for r in res["per_image"]] == ["b"]
  assert len(res["skipped"]) == 1 and res["skipped"][0]["pred"].endswith("a.png")
  assert "differs" in capsys.readouterr().err


def test_a_gt_below_the_ssim_window_is_named_skipped_and_the_rest_scored(tmp_path, capsys):
  """#16.7: a 1x1 GT no longer aborts the evaluation."""
  rng = np.random.default_rng(2)
  _tree(tmp_path / "gt", "GT", "Noise", "tiny", np.zeros((1, 1, 3), np.uint8))
  _tree(tmp_path / "pred", "LQ", "Noise", "tiny", np.zeros((1, 1, 3), np.uint8))
  img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  _tree(tmp_path / "gt", "GT", "Noise", "ok", img)
  _tree(tmp_path / "pred", "LQ", "Noise", "ok", img)
  out = tmp_path / "out"
  for protocol in ("vbridge", "foundir"):
    assert _run(pred=tmp_path / "pred", gt=tmp_path / "gt", out=out, protocol=protocol) == 1
    res = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in res["per_image"]] == ["ok"]
    assert res["skipped"][0]["gt"].endswith("tiny.png") and "minimum side" in \
        res["skipped"][0]["reason"]
    assert "tiny.png" in capsys.readouterr().err


def test_hq_and_lowercase_side_folders_follow_the_one_rule(tmp_path):
  """#16.3: an HQ/ ground-truth tree: the GT side skips lq/, the prediction side skips HQ/."""
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
  _tree(tmp_path / "gt", "HQ", "Rain", "x", img)
  _tree(tmp_path / "gt", "lq", "Rain", "x", 255 - img)  # never ground truth
  _tree(tmp_path / "pred", "lq", "Rain", "x", img)
  _tree(tmp_path / "pred", "HQ", "Rain", "x", 255 - img)  # a copied GT: not a prediction
  res = protocols.evaluate(tmp_path / "pred", tmp_path / "gt", progress=False)
  assert [(r["category"], r["name"]) for r in res["per_image"]] == [("Rain", "x")]
  assert res["per_image"][0]["psnr_y"] == float("inf")


def _authors_score(frame, gt):
  """The authors' eval.py metrics, written out with OpenCV's 2-D filter as theirs are."""
  import cv2
  f = (gt.shape[0] / frame.shape[0], gt.shape[1] / frame.shape[1])
  frame = np.clip(np.stack([ndimage.zoom(frame[..., c], f, order=3) for c in range(3)], -1),
                  0, 255).astype(np.uint8)
  k = cv2.getGaussianKernel(11, 1.5)
  w = k @ k.T
  w /= w.sum()

  def ssim(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    flt = lambda x: cv2.filter2D(x, -1, w, borderType=cv2.BORDER_CONSTANT)[5:-5, 5:-5]
    ma, mb = flt(a), flt(b)
    saa, sbb, sab = flt(a * a) - ma * ma, flt(b * b) - mb * mb, flt(a * b) - ma * mb
    c1, c2 = 6.5025, 58.5225
    return np.mean((2 * ma * mb + c1) * (2 * sab + c2) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2)))

  def psnr(a, b):
    return 20 * np.log10(255 / np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))

  y = lambda x: 16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255
  fy, gy = y(frame.astype(np.float64)), y(gt.astype(np.float64))
  return {"psnr_y": psnr(fy, gy), "ssim_y": ssim(fy, gy),
          "psnr_rgb": np.mean([psnr(frame[..., c], gt[..., c].astype(np.float64)) for c in range(3)]),
          "ssim_rgb": np.mean([ssim(frame[..., c], gt[..., c]) for c in range(3)])}


def test_vbridge_mp4_scores_as_the_authors_eval(tmp_path):
  """#12.4: MP4s written with imageio's defaults, scored as eval.py: last frame (OpenCV),
  zoomed to the GT size (odd sizes are padded to multiples of 16 by the writer)."""
  cv2 = pytest.importorskip("cv2")
  pytest.importorskip("imageio_ffmpeg")
  from vbridge_jax.data import video
  _, pred, gt = _photos()[0]
  pred, gt = pred[:90, :110], gt[:90, :110]
  _tree(tmp_path / "gt", "GT", "Blur", "p", gt)
  frames = [np.full_like(pred, 128), pred // 2, pred]
  path = video.write_mp4(tmp_path / "pred" / "Blur" / "LQ" / "p.mp4", frames)
  assert not [f for f in path.parent.iterdir() if f.name.startswith(".")]  # no temporary left
  back = video.read_frames(path)
  assert len(back) == 3 and back[-1].shape == (96, 112, 3)  # padded to macro blocks of 16
  last = video.last_frame(path)
  np.testing.assert_array_equal(last, back[-1])
  assert 25 < M.compute("vbridge", last, pred)["psnr_y"] < 60  # lossy, close
  res = protocols.evaluate(tmp_path / "pred", tmp_path / "gt", "vbridge_mp4", progress=False)
  row = res["per_image"][0]
  assert row["resized_from"] == [112, 96] and res["resized"] == 1
  gt_cv = cv2.cvtColor(cv2.imread(str(tmp_path / "gt" / "Blur" / "GT" / "p.png")), cv2.COLOR_BGR2RGB)
  _compare(row, _authors_score(last, gt_cv))
  with pytest.raises(video.VideoError, match="frame 1"):
    video.write_mp4(tmp_path / "bad.mp4", [pred, pred[:-1]])


def test_command_line_help_and_run(tmp_path):
  """absl + config_flags: --help lists the variants and every field and exits 0; a run."""
  import subprocess
  import sys
  repo = Path(__file__).resolve().parent.parent
  env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.evaluate", "--help"], cwd=tmp_path,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  for text in ("vbridge_mp4", "--config.strict_size=False", "--config.pred=''", "foundir"):
    assert text in r.stdout
  img = np.random.default_rng(4).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  _tree(tmp_path / "gt", "GT", "Blur", "a", img)
  _tree(tmp_path / "pred", "", "Blur", "a", img)
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.evaluate",
                      f"--config={repo / 'configs' / 'evaluate.py'}:foundir",
                      f"--config.pred={tmp_path / 'pred'}", f"--config.gt={tmp_path / 'gt'}",
                      f"--config.out={tmp_path / 'out'}", "--config.progress=false"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert json.loads((tmp_path / "out" / "metrics.json").read_text())["protocol"] == "foundir"
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.evaluate", "--config.nope=1"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and "nope" in r.stderr
