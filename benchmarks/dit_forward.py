"""WanDiT forward (Flax, jitted) against diffusers' forward (PyTorch), side by side on this CPU.

  python benchmarks/dit_forward.py [--layers 4] [--heads 8] [--head-dim 64] [--ffn 2048]
                                   [--frames 2] [--size 64] [--text 512] [--runs 5]

Both models hold the same random weights (fp32). Each is warmed up, then timed over `--runs`
calls; the table gives the median times, their ratio, the achieved GFLOP/s from an analytic
FLOP count, and that rate as a fraction of the JAX fp32 matmul peak measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def forward_flops(cfg, frames: int, height: int, width: int, text_len: int) -> float:
  """Multiply-adds x 2 of one forward (matmuls and attention; element-wise work ignored)."""
  pt, ph, pw = cfg.patch_size
  L = (frames // pt) * (height // ph) * (width // pw)
  D, F, T, patch = cfg.dim, cfg.ffn_dim, cfg.text_len, pt * ph * pw
  per_block = (
      4 * L * D * D          # self-attention q, k, v, o
      + 2 * L * L * D        # q k^T and p v
      + 2 * L * D * D        # cross-attention q, o
      + 2 * T * D * D        # cross-attention k, v over the padded text
      + 2 * L * T * D        # cross-attention scores and values
      + 2 * L * D * F        # FFN
  )
  once = (L * patch * cfg.in_channels * D + L * D * patch * cfg.out_channels
          + T * (cfg.text_dim * D + D * D) + cfg.freq_dim * D + D * D + 6 * D * D)
  return 2.0 * (cfg.num_layers * per_block + once)


def median_time(fn, runs: int) -> float:
  fn()  # warm-up (compiles for JAX)
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak(runs: int) -> float:
  """GFLOP/s of a jitted 2048^3 fp32 matmul in JAX."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / median_time(lambda: f(a).block_until_ready(), runs) / 1e9


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--ffn", type=int, default=2048)
  p.add_argument("--frames", type=int, default=2)
  p.add_argument("--size", type=int, default=64, help="latent height and width")
  p.add_argument("--text", type=int, default=512)
  p.add_argument("--runs", type=int, default=5)
  args = p.parse_args()

  import jax
  import numpy as np
  import torch
  from flax import nnx

  from tests.dit_reference import inputs, jax_from_torch, make_torch_dit, max_rel_err, torch_forward
  from vbridge_jax.models import DiTConfig

  torch.set_num_threads(os.cpu_count() or 1)
  cfg = DiTConfig(dim=args.heads * args.head_dim, ffn_dim=args.ffn, num_heads=args.heads,
                  num_layers=args.layers, text_len=args.text)
  ref = make_torch_dit(cfg)
  dit = jax_from_torch(ref, cfg)
  x, t, ctx = inputs(cfg, batch=1, frames=args.frames, height=args.size, width=args.size,
                     text=args.text, per_token=True)
  fwd = nnx.jit(lambda m, *a: m(*a))
  xj, tj, cj = (jax.device_put(a) for a in (x, t, ctx))

  jax_s = median_time(lambda: fwd(dit, xj, tj, cj).block_until_ready(), args.runs)
  torch_s = median_time(lambda: torch_forward(ref, x, t, ctx, cfg.text_len), args.runs)
  err = max_rel_err(np.asarray(fwd(dit, xj, tj, cj)), torch_forward(ref, x, t, ctx, cfg.text_len))
  peak = matmul_peak(args.runs)
  gflop = forward_flops(cfg, args.frames, args.size, args.size, args.text) / 1e9

  tokens = args.frames * (args.size // 2) ** 2
  print(f"WanDiT forward: {args.layers} layers, {args.heads}x{args.head_dim} heads, ffn {args.ffn}, "
        f"{args.frames}x{args.size}x{args.size} latents ({tokens} tokens), {args.text} text tokens, fp32, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores; median of {args.runs}")
  print(f"analytic cost {gflop:.1f} GFLOP per forward; JAX fp32 matmul peak {peak:.1f} GFLOP/s; "
        f"max |jax - torch| / max|torch| = {err:.1e}")
  print()
  print("| implementation | median ms | vs diffusers | GFLOP/s | of JAX matmul peak |")
  print("|---|---:|---:|---:|---:|")
  for name, s in (("diffusers (PyTorch)", torch_s), ("vbridge_jax (jit)", jax_s)):
    print(f"| {name} | {s * 1e3:.0f} | {torch_s / s:.2f}x | {gflop / s:.1f} | {gflop / s / peak:.0%} |")


if __name__ == "__main__":
  main()
