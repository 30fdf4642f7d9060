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
