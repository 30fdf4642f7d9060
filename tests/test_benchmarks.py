"""Smoke test of the prepared GPU benchmark: `benchmarks/gpu_step.sh --tiny` runs every phase
(matmul, restore, LoRA and full training steps, table) on the tiny config on this CPU, so
the script that a lent GPU runs once is known to work before it gets there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_step_script_runs_tiny(tmp_path):
  out = tmp_path / "rows.jsonl"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_step.sh"), "--tiny", f"--out={out}"],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["phase"] for r in rows] == ["matmul", "restore", "train-lora", "train-full"]
  assert not [r for r in rows if "error" in r], rows
  assert rows[0]["measured_bf16_flops"] > 0 and rows[1]["finite"]
  for r in rows[2:]:
    assert r["step_s"] > 0 and r["model_flops"] > 0 and r["tokens"] == 2 * (64 // 32) * (128 // 32)  # latent frames x patches
  assert rows[2]["remat"] == "none"  # the first candidate fits (no memory limit on the CPU)
  table = proc.stdout
  assert "| train-lora |" in table and "| train-full |" in table and "| restore |" in table
