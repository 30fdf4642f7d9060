"""Wan2.2 VAE encode and decode (Flax, jitted) against diffusers' AutoencoderKLWan, side by side.

  python benchmarks/vae_speed.py [--sizes 256,512] [--runs 3] [--convs]

Both hold the same random weights at the real Wan2.2 widths (fp32). The cases are the
restore's: encode one image `(1, 1, S, S, 3)`, decode two latent frames `(1, 2, S/16, S/16,
48)` into 5 frames. Median wall times after a warm-up (compilation excluded), their ratio,
and the largest difference between the two outputs relative to the output scale.

`--convs` adds where the time goes: one 3x3x3 causal convolution layer at the decoder's
shapes (the bulk of its FLOPs), as XLA's 3D convolution, as this project's sum of 2D
convolutions over the time taps, and as PyTorch's conv3d, with the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def median_time(fn, runs: int) -> float:
  fn()  # warm-up (compiles for JAX)
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def conv_rows(runs: int) -> list[tuple[str, float, float, float, float]]:
  """(shape, GFLOP, XLA conv3d s, XLA 2D taps s, torch conv3d s) per decoder conv shape."""
  import jax
  import numpy as np
  import torch
  from flax import nnx

  from vbridge_jax.models.configs import VAEConfig
  from vbridge_jax.models.vae_blocks import Conv, Runtime

  rt = Runtime.of(VAEConfig.wan22())
  rows = []
  for t, hw, c in ((6, 32, 1024), (6, 64, 512), (6, 128, 256)):  # 4 frames out + 2 cached
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, t, hw, hw, c), np.float32)
    conv = Conv(c, c, (3, 3, 3), rt, rngs=nnx.Rngs(0))
    w = np.asarray(conv.kernel[...])
    xj = jax.device_put(x)
    taps = nnx.jit(lambda m, a: m(a))
    whole = jax.jit(lambda a, k: jax.lax.conv_general_dilated(
        a, k, (1, 1, 1), [(0, 0), (1, 1), (1, 1)], dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        precision=rt.precision))
    wj = jax.device_put(w)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)))
    with torch.no_grad():
      s_t = median_time(lambda: torch.nn.functional.conv3d(xt, wt, padding=(0, 1, 1)), runs)
    s_3d = median_time(lambda: whole(xj, wj).block_until_ready(), runs)
    s_taps = median_time(lambda: taps(conv, xj).block_until_ready(), runs)
    gflop = 2 * 27 * c * c * hw * hw * (t - 2) / 1e9
    rows.append((f"{t - 2}x{hw}x{hw}x{c}", gflop, s_3d, s_taps, s_t))
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="256,512")
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--convs", action="store_true", help="also time one decoder conv layer three ways")
  args = p.parse_args()

  import jax
  import numpy as np
  import torch

  from benchmarks.restore import torch_vae
  from vbridge_jax.checkpoints.loading import from_params
  from vbridge_jax.checkpoints.vae import convert_state_dict
  from vbridge_jax.models.configs import VAEConfig

  torch.set_num_threads(os.cpu_count() or 1)
  ref = torch_vae("wan22")
  cfg = VAEConfig.wan22(latents_mean=tuple(ref.config.latents_mean),
                        latents_std=tuple(ref.config.latents_std))
  vae = from_params(cfg, convert_state_dict(ref.state_dict(), cfg))
  load = os.getloadavg()
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    rng = np.random.default_rng(size)
    video = rng.uniform(-1, 1, (1, 1, size, size, 3)).astype(np.float32)
    z = rng.standard_normal((1, 2, size // 16, size // 16, cfg.z_dim)).astype(np.float32)
    for op, x, ours, theirs in (
        ("encode", video, lambda a: vae.encode(a),
         lambda a: ref.encode(a).latent_dist.mode()),
        ("decode", z, lambda a: vae.decode(a), lambda a: ref.decode(a).sample)):
      xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
      xj = jax.device_put(x)
      with torch.no_grad():
        s_t = median_time(lambda: theirs(xt), args.runs)
        want = theirs(xt).permute(0, 2, 3, 4, 1).numpy()
      s_j = median_time(lambda: ours(xj).block_until_ready(), args.runs)
      err = float(np.abs(np.asarray(ours(xj)) - want).max() / np.abs(want).max())
      rows.append((op, size, tuple(x.shape), s_t, s_j, err))

  print(f"Wan2.2 VAE (real widths, random weights, fp32), {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at "
        f"end; median of {args.runs}")
  print()
  print("| op | image | input | diffusers ms | vbridge_jax ms | vs diffusers | max err / scale |")
  print("|---|---|---|---:|---:|---:|---:|")
  for op, size, shape, s_t, s_j, err in rows:
    print(f"| {op} | {size}² | {shape} | {s_t * 1e3:.0f} | {s_j * 1e3:.0f} | {s_t / s_j:.2f}x | {err:.1e} |")
  if args.convs:
    print()
    print("One 3x3x3 decoder convolution (4 output frames, 2 cached), GFLOP/s:")
    print()
    print("| frames x H x W x C | GFLOP | XLA conv3d ms | XLA 2D taps ms | torch conv3d ms | conv3d / taps / torch GFLOP/s |")
    print("|---|---:|---:|---:|---:|---|")
    for shape, gf, a, b, c in conv_rows(args.runs):
      print(f"| {shape} | {gf:.0f} | {a * 1e3:.0f} | {b * 1e3:.0f} | {c * 1e3:.0f} | "
            f"{gf / a:.0f} / {gf / b:.0f} / {gf / c:.0f} |")


if __name__ == "__main__":
  main()
