"""The tree passes its linter (`ruff check .`, configured in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff is not installed (it comes with the test extra)")
  result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
