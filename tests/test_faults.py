"""The fault suite (issue 16): bad inputs, name collisions, damaged folders, full disks.

Each test reproduces one fault a careful user's worst day brings and checks that it ends
in one line naming the file, loses nothing, and never silently gives a wrong result. The
trainer's faults (run records, corrupt checkpoints, a failed save) are in
`test_faults_run.py`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data_helpers import make_tree, save, smooth_image
from vbridge_jax.data import prepare
from vbridge_jax.utils.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def _records(version_dir: str) -> int:
  import tensorflow_datasets as tfds
  return len(tfds.builder_from_directory(version_dir).as_data_source(split="train"))


# ------------------------------------------------------------------- 16.2 prepare, changed tree


def test_prepare_into_existing_data_dir_detects_a_changed_tree(tmp_path, capsys):
  tree = make_tree(tmp_path / "tree", {"A": 2})
  data_dir = str(tmp_path / "tfds")
  out = prepare.prepare("paired_folders", str(tree), data_dir)
  assert _records(out) == 2
  assert prepare.prepare("paired_folders", str(tree), data_dir) == out  # unchanged: reused
  make_tree(tmp_path / "tree", {"B": 1})  # the tree grows a category
  args = ["--builder", "paired_folders", "--manual_dir", str(tree), "--data_dir", data_dir]
  capsys.readouterr()  # the first build's progress bars
  assert prepare.main(args) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--overwrite" in err[0] and out in err[0]
  assert _records(out) == 2  # the old set is untouched
  assert prepare.main(args + ["--overwrite"]) == 0
  assert _records(out) == 3
  assert not [p for p in Path(data_dir).iterdir() if p.name.startswith(".")]


# ------------------------------------------------------- 16.9 damaged converted model folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
  """convert/tiny_repo.py's random DiT and VAE, converted (OUT/dit, OUT/vae)."""
  from tests.conftest import load_script
  from vbridge_jax.checkpoints import convert_path
  tmp = tmp_path_factory.mktemp("converted")
  tiny = load_script("tiny_repo")
  tiny.tiny_dit(0).save_pretrained(tmp / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(tmp / "repo" / "vae")
  convert_path(tmp / "repo", tmp / "model", log=lambda _: None)
  return tmp / "model"


def _largest_chunk(params: Path) -> Path:
  return max((p for p in params.rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("how,needle", [
    ("no params", "params/) are missing"),
    ("missing chunk", "chunk is missing or"),
    ("truncated chunk", "chunk is missing or"),
    ("truncated metadata", "metadata"),
    ("truncated config", "config.json"),
])
def test_damaged_model_folder_is_a_checkpoint_error_naming_it(converted, tmp_path, how, needle):
  import shutil

  from vbridge_jax.checkpoints import load_dit
  from vbridge_jax.utils.errors import CheckpointError
  model = tmp_path / "model"
  shutil.copytree(converted, model)
  params = model / "dit" / "params"
  if how == "no params":
    shutil.rmtree(params)
  elif how == "missing chunk":
    _largest_chunk(params).unlink()
  elif how == "truncated chunk":
    chunk = _largest_chunk(params)
    chunk.write_bytes(chunk.read_bytes()[:1000])
  elif how == "truncated metadata":
    (params / "_METADATA").write_text((params / "_METADATA").read_text()[:50])
  elif how == "truncated config":
    (model / "dit" / "config.json").write_text((model / "dit" / "config.json").read_text()[:50])
  with pytest.raises(CheckpointError) as e:
    load_dit(model)
  msg = str(e.value)
  assert "\n" not in msg and str(model / "dit") in msg and needle in msg, msg
  assert len(msg) < 600, msg


# ----------------------------------------------------------- 16.10 convert --out, umask


def _convert_cli(src: Path, out: Path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "convert/wan_to_jax.py", "--src", str(src), "--out",
                         str(out)], capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_convert_out_at_a_file_or_unwritable_place_is_one_line(converted, tmp_path):
  repo = converted.parent / "repo"
  a_file = tmp_path / "taken"
  a_file.write_text("mine")
  read_only = Path("/sys/vbridge_out") if os.geteuid() == 0 else tmp_path / "ro" / "out"
  if os.geteuid() != 0:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
  for out in (a_file, read_only, a_file / "sub"):
    r = _convert_cli(repo, out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-1500:]
    assert str(out) in lines[0]
  assert a_file.read_text() == "mine"


def test_convert_out_overlapping_src_is_refused_and_the_source_kept(converted, tmp_path):
  """`--out` at, inside or above `--src` could replace the source's own `vae/` (a diffusers
  repository converted onto itself lost its VAE, exit 0): refused in one line, nothing touched."""
  repo = tmp_path / "repo"
  shutil.copytree(converted.parent / "repo", repo)
  before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
  for out in (repo, repo / "vae", repo / "out", tmp_path):
    r = _convert_cli(repo, out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "overlaps --src" in lines[0], r.stderr[-1500:]
  after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
  assert after == before and not (repo / "out").exists()


def test_failed_convert_leaves_no_empty_out_folder(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
  (src / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
  out = tmp_path / "new" / "model"
  r = _convert_cli(src, out)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
  assert not out.exists() and not out.parent.exists()


def test_converted_folders_get_the_users_umask(converted):
  mask = os.umask(0o022)
  os.umask(mask)
  for comp in ("dit", "vae"):
    mode = (converted / comp).stat().st_mode & 0o777
    assert mode == 0o777 & ~mask, oct(mode)


# ------------------------------------------------------------ 16.10 demo_data on a full disk


def test_demo_data_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
  from vbridge_jax.configs import curriculum
  from vbridge_jax.training import setup

  def full_disk(self, fp, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", str(fp))

  monkeypatch.setattr(Image.Image, "save", full_disk)
  cfg = curriculum.get_config("tiny_wan")
  with pytest.raises(DataError) as e:
    setup.data_source(cfg, str(tmp_path))
  assert "\n" not in str(e.value) and "No space left" in str(e.value)
  assert "demo_data" in str(e.value)
  assert not (tmp_path / "demo_data" / ".complete").exists()


# ------------------------------------------------------------------------ 16.12 smaller faults


def test_skip_bad_skips_only_the_duplicate_stem_and_counts_once(tmp_path, caplog):
  tree = make_tree(tmp_path / "tree", {"A": 3, "B": 2})
  save(tree / "A" / "GT" / "001.jpg", smooth_image(9, 40, 56))  # a second 001 in A/GT
  with caplog.at_level("WARNING"):
    out = prepare.prepare("paired_folders", str(tree), str(tmp_path / "t"), skip_bad=True)
  assert _records(out) == 4  # A keeps 000 and 002; B is whole
  warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(warnings) == 1 and "skipped 1 bad item" in warnings[0], warnings


def test_dangling_symlinks_are_named(tmp_path):
  from vbridge_jax.data import fewshot
  from vbridge_jax.data.files import scan_paired_folders
  tree = make_tree(tmp_path / "tree", {"A": 2})
  (tree / "A" / "LQ" / "005.png").symlink_to(tmp_path / "gone.png")
  with pytest.raises(DataError, match="dangling symbolic link: .*005.png"):
    scan_paired_folders(tree)
  problems: list[str] = []
  assert len(scan_paired_folders(tree, skip_bad=True, problems=problems)) == 2
  assert len(problems) == 1 and "dangling" in problems[0]
  clean = tmp_path / "clean"
  save(clean / "a.png", smooth_image(0, 32, 32))
  (clean / "b.png").symlink_to(tmp_path / "gone.png")
  with pytest.raises(DataError, match="dangling symbolic link.*b.png"):
    fewshot.build(tmp_path / "out", clean=clean, per_category=1, categories=("Blur",))


def test_float_tiffs_in_0_1_are_scaled_and_others_refused(tmp_path):
  from vbridge_jax.data.files import read_rgb
  ramp = np.linspace(0, 1, 32 * 16, dtype=np.float32).reshape(16, 32)
  Image.fromarray(ramp, mode="F").save(tmp_path / "ok.tif")
  rgb = read_rgb(tmp_path / "ok.tif")
  assert rgb.shape == (16, 32, 3) and rgb.max() == 255 and rgb.min() == 0
  np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp * 255).astype(np.uint8))
  Image.fromarray(ramp * 300, mode="F").save(tmp_path / "hdr.tif")
  with pytest.raises(DataError, match=r"hdr.tif.*\[0, 1\]|\[0, 1\].*hdr.tif"):
    read_rgb(tmp_path / "hdr.tif")


def test_exif_orientation_is_applied_on_read(tmp_path):
  """A phone JPEG stored landscape with 'rotate 90' decodes as portrait, as OpenCV reads it;
  the header size check and the prepared set agree."""
  from vbridge_jax.data.files import image_size, read_rgb
  img = smooth_image(3, 40, 56)
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 clockwise to view
  Image.fromarray(img).save(tmp_path / "phone.jpg", quality=95, exif=exif)
  got = read_rgb(tmp_path / "phone.jpg")
  assert got.shape == (56, 40, 3) and image_size(tmp_path / "phone.jpg") == (40, 56)
  upright = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB").transpose(
      Image.Transpose.ROTATE_270))
  np.testing.assert_array_equal(got, upright)
  tree = tmp_path / "tree"
  (tree / "A" / "GT").mkdir(parents=True)
  (tree / "A" / "GT" / "001.jpg").write_bytes((tmp_path / "phone.jpg").read_bytes())
  save(tree / "A" / "LQ" / "001.png", 255 - got)
  import tensorflow_datasets as tfds
  out = prepare.prepare("paired_folders", str(tree), str(tmp_path / "t"))
  rec = tfds.builder_from_directory(out).as_data_source(split="train")[0]
  np.testing.assert_array_equal(rec["gt"], got)


def test_fewshot_out_overlapping_clean_is_refused(tmp_path):
  from vbridge_jax.data import fewshot
  clean = tmp_path / "clean"
  save(clean / "a.png", smooth_image(0, 32, 32))
  for out in (clean, clean / "set"):
    with pytest.raises(DataError, match="overlaps --clean"):
      fewshot.build(out, clean=clean, per_category=1, categories=("Blur",))
  assert sorted(p.name for p in clean.rglob("*")) == ["a.png"]


def test_legacy_non_zip_pth_converts(tmp_path):
  import torch

  from vbridge_jax.checkpoints.io import TorchPickleSource
  sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
  torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  src = TorchPickleSource(tmp_path / "legacy.pth")
  np.testing.assert_array_equal(src.get("w"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_malicious_text_encoder_bin_is_one_line_and_never_runs(tmp_path):
  """A pickle that would run a command, as text_encoder/pytorch_model.bin of a diffusers
  repo: refused by the weights-only loader, with one line through encode_prompts."""
  pytest.importorskip("transformers")
  from tests.conftest import load_script
  marker = tmp_path / "pwned"
  repo = tmp_path / "repo"
  (repo / "text_encoder").mkdir(parents=True)
  (repo / "text_encoder" / "config.json").write_text(json.dumps({
      "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": 8, "d_kv": 4,
      "d_ff": 16, "num_layers": 1, "num_heads": 2, "vocab_size": 64}))

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  import pickle
  (repo / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
  load_script("tiny_repo").tiny_tokenizer(repo / "tokenizer")
  r = subprocess.run([sys.executable, "convert/encode_prompts.py", "--text-encoder", str(repo),
                      "--out", str(tmp_path / "p.npz")], capture_output=True, text=True,
                     cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
  assert "pytorch_model.bin" in lines[0] or "text_encoder" in lines[0]
  assert not marker.exists() and not (tmp_path / "p.npz").exists()
