"""End to end: a tiny random Wan2.2 (diffusers layout) converted, a small tree restored, scored."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vbridge_jax import evaluate, restore
from vbridge_jax.restore import plan_size

TEXT_DIM = 32


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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """diffusers-layout tiny transformer + VAE, converted with convert/wan_to_jax.py's library."""
  pytest.importorskip("vbridge_jax.models.wan_vae", reason="the VAE port is not in this checkout")
  pytest.importorskip("vbridge_jax.checkpoints.vae", reason="the VAE converter is not in this checkout")
  from diffusers import AutoencoderKLWan, WanTransformer3DModel
  from vbridge_jax.checkpoints import convert_path

  root = tmp_path_factory.mktemp("e2e")
  torch.manual_seed(0)
  dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                              in_channels=8, out_channels=8, text_dim=TEXT_DIM, freq_dim=32,
                              ffn_dim=128, num_layers=2, rope_max_seq_len=1024)
  dit.save_pretrained(root / "repo" / "transformer")
  vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=8, dim_mult=[1, 2, 4, 4],
                         num_res_blocks=1, temperal_downsample=[False, True, True],
                         is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                         scale_factor_temporal=4, scale_factor_spatial=16,
                         latents_mean=[0.1] * 8, latents_std=[1.5] * 8)
  vae.save_pretrained(root / "repo" / "vae")
  convert_path(root / "repo", root / "model", log=lambda _: None)
  torch.manual_seed(1)
  drift = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                in_channels=8, out_channels=8, text_dim=TEXT_DIM, freq_dim=32,
                                ffn_dim=128, num_layers=1, rope_max_seq_len=1024)
  drift.save_pretrained(root / "drift_repo" / "transformer")
  convert_path(root / "drift_repo", root / "drift", log=lambda _: None)
  rng = np.random.default_rng(0)
  np.savez(root / "prompts.npz", positive=rng.standard_normal((7, TEXT_DIM)).astype(np.float32),
           negative=rng.standard_normal((5, TEXT_DIM)).astype(np.float32))
  return root


def _tree(root):
  """A FoundIR-like tree with odd sizes and one corrupt file."""
  rng = np.random.default_rng(3)
  # odd sizes, one working size (64x64) so that one compilation serves them all
  sizes = {"01Blur/LQ/a.png": (40, 50), "01Blur/LQ/b.jpg": (33, 64), "05Noise/LQ/c.png": (47, 35)}
  for rel, (h, w) in sizes.items():
    gt = root / "GT" / rel.replace("/LQ/", "/GT/")
    for f in (root / "LQ" / rel, gt):
      f.parent.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "LQ" / rel, quality=95)
    Image.fromarray(img).save(gt, quality=95)
  (root / "LQ" / "05Noise" / "LQ" / "broken.png").write_bytes(b"not an image")
  return sizes


def _args(model_dir, inp, out, *extra):
  return ["--model", str(model_dir / "model"), "--prompts", str(model_dir / "prompts.npz"),
          "--input", str(inp), "--output", str(out), "--steps", "2", "--dtype", "float32", *extra]


@pytest.mark.slow
def test_restore_tree_then_evaluate(model_dir, tmp_path, capsys):
  sizes = _tree(tmp_path)
  out = tmp_path / "out"
  rc = restore.main(_args(model_dir, tmp_path / "LQ", out))
  err = capsys.readouterr().err
  assert rc == 1 and "broken.png" in err  # reported by name, exit 1 at the end
  for rel, (h, w) in sizes.items():
    png = out / rel.replace(".jpg", ".png")
    assert Image.open(png).size == (w, h), rel
  assert not (out / "05Noise" / "LQ" / "broken.png").exists()
  first = {p: p.read_bytes() for p in sorted(out.rglob("*.png"))}

  # existing outputs are skipped; --overwrite with the same seed gives the same bytes
  (tmp_path / "LQ" / "05Noise" / "LQ" / "broken.png").unlink()
  assert restore.main(_args(model_dir, tmp_path / "LQ", out)) == 0
  assert "0 to do" in capsys.readouterr().out
  assert restore.main(_args(model_dir, tmp_path / "LQ", out, "--overwrite")) == 0
  assert {p: p.read_bytes() for p in sorted(out.rglob("*.png"))} == first
  # another seed, with the drift corrector after the base model: other bytes, same sizes
  other = tmp_path / "other"
  assert restore.main(_args(model_dir, tmp_path / "LQ", other, "--seed", "44", "--drift",
                            str(model_dir / "drift"))) == 0
  for p in first:
    q = other / p.relative_to(out)
    assert first[p] != q.read_bytes() and Image.open(q).size == Image.open(p).size

  # evaluate the restored tree against the GT tree (LQ/GT names and extensions ignored)
  assert evaluate.main(["--pred", str(out), "--gt", str(tmp_path / "GT"), "--out",
                        str(tmp_path / "scores")]) == 0
  res = json.loads((tmp_path / "scores" / "metrics.json").read_text())
  assert {(r["category"], r["name"]) for r in res["per_image"]} == {
      ("01Blur", "a"), ("01Blur", "b"), ("05Noise", "c")}
  assert set(res["per_category"]) == {"01Blur", "05Noise"}


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
