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
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_data_helpers import make_tree, save, smooth_image
from vbridge_jax.data import prepare
from vbridge_jax.data.files import DataError

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
  from vbridge_jax.checkpoints.io import CheckpointError
  from vbridge_jax.models.wan_dit import load_dit
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
