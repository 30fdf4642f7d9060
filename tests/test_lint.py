"""The tree passes its linter (`ruff check .`, configured in pyproject.toml)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
  # Beside this Python first: the test extra installs ruff into the same environment.
  ruff = shutil.which("ruff", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                    os.environ.get("PATH", "")]))
  if ruff is None:
    pytest.skip("ruff is not installed (it comes with the test extra)")
  result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
