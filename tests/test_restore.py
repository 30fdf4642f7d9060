"""End to end: a tiny random Wan2.2 (diffusers layout) converted, a small tree restored, scored."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script
from vbridge_jax import evaluate, restore
from vbridge_jax.restore import plan_size

TEXT_DIM = 32
REPO = Path(__file__).resolve().parent.parent


def test_plan_size_is_the_authors_rule():
  p = plan_size(1080, 1920)
  assert (p.work_h, p.work_w, p.resize) == (1088, 1920, False)
  p = plan_size(1528, 2720)  # FoundIR 1118: above 1440 high -> resized to ~2560x1440 area
  assert p.resize and p.work_h % 32 == 0 and p.work_w % 32 == 0
  assert p.work_h * p.work_w <= 2560 * 1440 and (p.work_h, p.work_w) == (1408, 2560)  # floor(1439.0 / 32) * 32
  p = plan_size(33, 17)
  assert (p.work_h, p.work_w) == (64, 32)
  img = np.random.default_rng(0).integers(0, 256, (33, 17, 3), dtype=np.uint8)
  w = restore.to_work(img, p)
  assert w.shape == (64, 32, 3) and w.min() >= -1 and w.max() <= 1
  np.testing.assert_array_equal(restore.from_work(w, p), img)  # pad/crop round trip is exact


def _tiny_repo():
  """convert/tiny_repo.py, the README's tiny random model (diffusers layout)."""
  return load_script("tiny_repo")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """diffusers-layout tiny transformer + VAE, converted with convert/wan_to_jax.py's library.

  The drift corrector has the base model's architecture (as in the paper) and its own
  weights, so both share one compiled sampling loop.
  """
  from vbridge_jax.checkpoints import convert_path

  tiny = _tiny_repo()
  root = tmp_path_factory.mktemp("e2e")
  tiny.tiny_dit(0).save_pretrained(root / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(root / "repo" / "vae")
  convert_path(root / "repo", root / "model", log=lambda _: None)
  tiny.tiny_dit(1).save_pretrained(root / "drift_repo" / "transformer")
  convert_path(root / "drift_repo", root / "drift", log=lambda _: None)
  rng = np.random.default_rng(0)
  np.savez(root / "prompts.npz", positive=rng.standard_normal((7, TEXT_DIM)).astype(np.float32),
           negative=rng.standard_normal((5, TEXT_DIM)).astype(np.float32))
  return root


def _tree(root):
  """A FoundIR-like tree (`<category>/{LQ,GT}/<id>`) with odd sizes and one corrupt file."""
  rng = np.random.default_rng(3)
  # odd sizes, one working size (64x64) so that one compilation serves them all
  sizes = {"01Blur/LQ/a.png": (40, 50), "01Blur/LQ/b.jpg": (33, 64), "05Noise/LQ/c.png": (47, 35)}
  for rel, (h, w) in sizes.items():
    gt = root / "tree" / rel.replace("/LQ/", "/GT/")
    for f in (root / "tree" / rel, gt):
      f.parent.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "tree" / rel, quality=95)
    Image.fromarray(img).save(gt, quality=95)
  (root / "tree" / "05Noise" / "LQ" / "broken.png").write_bytes(b"not an image")
  return sizes


def _args(model_dir, inp, out, *extra):
  return ["--config", str(REPO / "configs" / "restore.py:tiny"), "--model", str(model_dir / "model"),
          "--prompts", str(model_dir / "prompts.npz"), "--input", str(inp), "--output", str(out),
          "--steps", "2", *extra]


def _pngs(root):
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.slow
def test_restore_tree_then_evaluate(model_dir, tmp_path, capsys):
  sizes = _tree(tmp_path)
  inputs = {p: p.read_bytes() for p in sorted((tmp_path / "tree").rglob("*")) if p.is_file()}
  assert len(restore.find_inputs(tmp_path / "tree")) == 4  # GT/ folders are not restored
  out = tmp_path / "out"
  rc = restore.main(_args(model_dir, tmp_path / "tree", out))
  err = capsys.readouterr().err
  assert rc == 1 and "broken.png" in err  # reported by name, exit 1 at the end
  for rel, (h, w) in sizes.items():
    png = out / rel.replace(".jpg", ".png")
    assert Image.open(png).size == (w, h), rel  # odd sizes: padded to 64x64 and cropped back
  assert not (out / "05Noise" / "LQ" / "broken.png").exists()
  first = _pngs(out)
  assert len(first) == len(sizes) and not list(out.rglob("GT"))

  # existing outputs are skipped; --overwrite with the same seed gives the same bytes
  (tmp_path / "tree" / "05Noise" / "LQ" / "broken.png").unlink()
  del inputs[tmp_path / "tree" / "05Noise" / "LQ" / "broken.png"]
  assert restore.main(_args(model_dir, tmp_path / "tree", out)) == 0
  assert "0 to do" in capsys.readouterr().out
  assert restore.main(_args(model_dir, tmp_path / "tree", out, "--overwrite")) == 0
  assert _pngs(out) == first
  # another seed: other bytes
  other = _pngs_of_run(model_dir, tmp_path, "seed44", "--seed", "44")
  assert other.keys() == first.keys() and all(other[k] != first[k] for k in first)
  # the drift corrector after the base model (same seed): other bytes, same sizes
  drifted = _pngs_of_run(model_dir, tmp_path, "drift", "--drift", str(model_dir / "drift"))
  assert drifted.keys() == first.keys()
  for k in first:
    assert drifted[k] != first[k] and Image.open(tmp_path / "drift" / k).size == \
        Image.open(out / k).size
  # inputs never touched
  assert {p: p.read_bytes() for p in inputs} == inputs

  # evaluate the restored tree against the GT tree (LQ/GT names and extensions ignored)
  from configs import evaluate as evaluate_config
  ecfg = evaluate_config.get_config()
  ecfg.pred, ecfg.gt, ecfg.out = str(out), str(tmp_path / "tree"), str(tmp_path / "scores")
  assert evaluate.run(ecfg) == 0
  res = json.loads((tmp_path / "scores" / "metrics.json").read_text())
  assert {(r["category"], r["name"]) for r in res["per_image"]} == {
      ("01Blur", "a"), ("01Blur", "b"), ("05Noise", "c")}
  assert set(res["per_category"]) == {"01Blur", "05Noise"}
  assert all(np.isfinite(r["psnr_y"]) for r in res["per_image"])
  assert (tmp_path / "scores" / "metrics.csv").exists() and (tmp_path / "scores" / "metrics.md").exists()


def _pngs_of_run(model_dir, tmp_path, name, *extra):
  assert restore.main(_args(model_dir, tmp_path / "tree", tmp_path / name, *extra)) == 0
  return _pngs(tmp_path / name)


def test_noise_is_per_image_and_seeded():
  r = restore.Restorer.__new__(restore.Restorer)
  r.seed = 43
  a = np.asarray(r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 0))
  b = np.asarray(r.noise(["x/b.png"], (2, 4, 4, 8), 0))
  np.testing.assert_array_equal(a[1], b[0])  # independent of the batch it lands in
  assert not np.allclose(a[0], a[1])
  assert not np.allclose(a, np.asarray(r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 1)))
  r.seed = 44
  assert not np.allclose(a, np.asarray(r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 0)))


def test_restore_errors(model_dir, tmp_path, capsys):
  img = tmp_path / "x.png"
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
  assert restore.main(_args(model_dir, img, tmp_path)) == 1  # would overwrite its input
  assert "overwrite an input" in capsys.readouterr().err
  assert img.read_bytes()
  assert restore.main(_args(model_dir, tmp_path / "nope", tmp_path / "o")) == 1
  assert "no such file" in capsys.readouterr().err
  bad = tmp_path / "bad.npz"
  np.savez(bad, positive=np.zeros((3, 7), np.float32), negative=np.zeros((3, 7), np.float32))
  args = _args(model_dir, img, tmp_path / "o")
  args[args.index("--prompts") + 1] = str(bad)
  assert restore.main(args) == 1
  assert "bad.npz" in capsys.readouterr().err


def test_config_file(tmp_path, capsys):
  cfg = str(REPO / "configs" / "restore.py")
  need = ["--model", "m", "--prompts", "p.npz", "--input", "i"]
  a = restore.parse_args(["--config", cfg, *need, "--output", "o"])
  assert (a.steps, a.guidance, a.cfg_skip, a.seed, a.dtype, a.drift) == (50, 6.0, 0.15, 43, "bfloat16", None)
  a = restore.parse_args(["--config", cfg + ":tiny", "--config.seed=7", "--config.overwrite", "true",
                          "--config.output=o", "--steps", "3", *need])
  assert (a.steps, a.seed, a.dtype, a.overwrite, a.output) == (3, 7, "float32", True, Path("o"))
  assert restore.parse_args([*need, "--output", "o"]).steps == 50  # flags alone, as before
  for bad, msg in (([cfg + ":big"], "unknown variant"), ([cfg, "--config.stepz=3"], "no option"),
                   ([cfg, "--config.seed=x"], "not of type int"), ([cfg], "--output")):
    with pytest.raises(SystemExit):
      restore.parse_args(["--config", *bad, *need])
    assert msg in capsys.readouterr().err
  from configs import evaluate as evaluate_config  # evaluate takes absl config flags
  assert evaluate_config.get_config("foundir").protocol == "foundir"
