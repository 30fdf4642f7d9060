"""Curriculum stages: the paper's 720 stage resizes to 720 and crops 704 (a multiple of 32)."""

import numpy as np
import pytest

from tests.test_data_helpers import make_tree
from tests.test_data_pipeline import KW, _take
from vbridge_jax.data import pipeline
from vbridge_jax.training.setup import crop_size, parse_stages
from vbridge_jax.utils.errors import ConfigError


def test_crop_sizes_are_multiples_of_32():
  assert [crop_size(s) for s in (512, 720, 960, 64, 100)] == [512, 704, 960, 64, 96]
  with pytest.raises(ConfigError, match="below 32"):
    parse_stages("512,16", 30)
  assert [s.size for s in parse_stages("512,720,960", 30)] == [512, 720, 960]


def test_pipeline_crop_after_resize(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 2}, h=40, w=60)
  b = _take(pipeline.make_dataset(tree, size=36, crop=32, **KW), 1)[0]
  assert b["clip"].shape[2:4] == (32, 32)
  with pytest.raises(ValueError, match="crop 40 is larger"):
    pipeline.make_dataset(tree, size=36, crop=40, **KW)
  same = _take(pipeline.make_dataset(tree, size=32, crop=32, **KW), 1)[0]
  full = _take(pipeline.make_dataset(tree, size=32, **KW), 1)[0]
  np.testing.assert_array_equal(same["clip"], full["clip"])
