"""model.json: the frame count and codec a model folder records for restoring."""

import json

import pytest

from vbridge_jax.checkpoints.model_info import ModelInfo, read_model_info, write_model_info
from vbridge_jax.utils.errors import ModelInfoError


def test_round_trip_and_component_folders(tmp_path):
  (tmp_path / "dit").mkdir()
  write_model_info(tmp_path, ModelInfo(frames=9, codec="pixel"))
  assert read_model_info(tmp_path) == ModelInfo(frames=9, codec="pixel")
  assert read_model_info(tmp_path / "dit") == ModelInfo(frames=9, codec="pixel")


def test_missing_file_reads_as_the_authors_default(tmp_path):
  assert read_model_info(tmp_path) == ModelInfo(frames=5, codec="wan22")


@pytest.mark.parametrize("text", ["{", '{"frames": "x"}', '{"frames": 0}', "[]"])
def test_bad_file_is_named(tmp_path, text):
  (tmp_path / "model.json").write_text(text)
  with pytest.raises(ModelInfoError, match="model.json"):
    read_model_info(tmp_path)
  assert json.dumps(ModelInfo().to_dict())
