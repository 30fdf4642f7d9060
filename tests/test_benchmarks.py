"""Smoke tests of benchmarks: `benchmarks/gpu_step.sh --tiny` runs every phase (matmul,
restore, LoRA and full training steps, table) on the tiny config on this CPU, so the script
that a lent GPU runs once is known to work before it gets there; `authors_numerics.py` runs
at a tiny size."""

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


@pytest.mark.slow
def test_authors_numerics_script_runs_tiny():
  """`benchmarks/authors_numerics.py` at 32 x 32 and 2 steps: every row of its table, float32
  rounding nowhere, each bf16 piece moving the image (docs/fidelity.md has its full figures)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "authors_numerics.py"), "--size=32",
                         "--steps=2", "--images=1"], capture_output=True, text=True, env=env,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [l.split("|")[1:-1] for l in proc.stdout.splitlines() if l.startswith("| ")][1:]
  labels = [r[0].strip() for r in rows]
  assert [l.split("`")[1] for l in labels[:5]] == ["vae_dtype", "latent_dtype", "noise_dtype",
                                                   "timestep_dtype", "decode_dtype"]
  assert labels[5].startswith("all") and labels[6].startswith("for scale")
  for r in rows:
    max_abs, psnr = float(r[1]), float(r[4])
    assert max_abs >= 1 and 20 < psnr < 80, r
