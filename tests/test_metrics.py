"""Both protocols against independent float64 computations (numpy/scipy/scikit-image) on real photos."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import color, data, metrics as skm

from vbridge_jax import evaluate, metrics as M


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
  _, pred, gt = _photos()[1]
  small = np.asarray(Image.fromarray(pred).resize((130, 100), Image.BICUBIC))
  up = M.resize_to(small, *gt.shape[:2])
  assert up.shape == gt.shape and up.dtype == np.uint8
  _compare(M.compute("vbridge", small, gt), ref_vbridge(up, gt))


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
  assert evaluate.main(["--pred", str(pred_root), "--gt", str(gt_root), "--out", str(out)]) == 0
  res = json.loads((out / "metrics.json").read_text())
  assert res["protocol"] == "vbridge"
  assert len(res["per_image"]) == len(pairs)
  for row in res["per_image"]:
    _compare(row, ref_vbridge(*pairs[(row["category"], row["name"])]))
  assert res["missing"]["gt"] == ["01Blur/extra"]
  mean = np.mean([r["psnr_y"] for r in res["per_image"]])
  assert abs(res["average_per_image"]["psnr_y"] - mean) < 1e-9
  cats = res["per_category"]
  assert abs(res["average_per_category"]["ssim_rgb"] - np.mean([c["ssim_rgb"] for c in cats.values()])) < 1e-9
  md = (out / "metrics.md").read_text()
  assert "L+R" in md and "31.27" in md  # the paper's NightRain figure beside ours
  assert (out / "metrics.csv").read_text().startswith("category,name,psnr_y")
  assert evaluate.main(["--pred", str(pred_root), "--gt", str(gt_root), "--out", str(out),
                        "--protocol", "foundir"]) == 0
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
  result = evaluate.evaluate(tmp_path / "pred", tmp_path / "gt", progress=False)
  assert [r["name"] for r in result["per_image"]] == ["c"]
  bad = result["unreadable"]
  assert len(bad) == 2
  assert str(tmp_path / "pred" / "Blur" / "a.png") in bad[0] and "/gt/" not in bad[0]
  assert str(tmp_path / "gt" / "Blur" / "b.png") in bad[1] and "/pred/" not in bad[1]
