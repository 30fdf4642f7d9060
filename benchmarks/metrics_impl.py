"""Which implementation scores faster: OpenCV filtering (vbridge_jax.evaluation.metrics), scipy
filtering, or the jitted JAX version the project had before (one compile per image size).

    python benchmarks/metrics_impl.py [--images 20]

Scores `--images` random pairs of FoundIR sizes (mostly 1920x1080, some 2720x1528 and
other sizes, as the test split mixes them) under both protocols with each implementation,
compiles included, and checks that every implementation gives the same figures. Prints a
markdown table of seconds and the ratio to OpenCV, all measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vbridge_jax.evaluation import metrics as M  # noqa: E402

SIZES = [(1080, 1920)] * 12 + [(1528, 2720)] * 3 + [(1080, 1440), (1200, 1600), (1024, 1536),
                                                     (1280, 1920), (720, 1280)]


# ------------------------------------------------------------------ scipy filtering variant


def _scipy_filter(x):
  from scipy.ndimage import correlate1d
  taps = M.gaussian_taps()
  return correlate1d(correlate1d(x, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")


def scipy_compute(protocol, pred, gt):
  old = M._filter
  M._filter = _scipy_filter
  try:
    return M.compute(protocol, pred, gt)
  finally:
    M._filter = old


# ------------------------------------------------- the earlier jitted JAX version, verbatim


def _jax_fns():
  import jax
  import jax.numpy as jnp

  def filter_valid(x, taps):
    k = len(taps)
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = sum(float(taps[i]) * x[i:i + h] for i in range(k))
    return sum(float(taps[j]) * rows[:, j:j + w] for j in range(k))

  def ssim_maps(a, b, pad, clamp_cs):
    taps = M.gaussian_taps()
    if pad:
      r = M.WINDOW // 2
      a = jnp.pad(a, ((r, r), (r, r), (0, 0)))
      b = jnp.pad(b, ((r, r), (r, r), (0, 0)))
    c1, c2 = (M.K1 * M.PEAK) ** 2, (M.K2 * M.PEAK) ** 2
    mu_a, mu_b = filter_valid(a, taps), filter_valid(b, taps)
    s_aa = filter_valid(a * a, taps) - mu_a * mu_a
    s_bb = filter_valid(b * b, taps) - mu_b * mu_b
    s_ab = filter_valid(a * b, taps) - mu_a * mu_b
    cs = (2.0 * s_ab + c2) / (s_aa + s_bb + c2)
    if clamp_cs:
      cs = jnp.maximum(cs, 0.0)
    return (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs

  def y_m(rgb):
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0

  @jax.jit
  def vbridge(pred, gt):
    p, g = pred.astype(jnp.float64), gt.astype(jnp.float64)
    p4 = jnp.concatenate([y_m(p)[..., None], p], axis=-1)
    g4 = jnp.concatenate([y_m(g)[..., None], g], axis=-1)
    psnr = 20.0 * jnp.log10(M.PEAK / jnp.sqrt(jnp.mean((p4 - g4) ** 2, axis=(0, 1))))
    t = M.VBRIDGE_TRIM
    ssim = jnp.mean(ssim_maps(p4, g4, pad=True, clamp_cs=False)[t:-t, t:-t], axis=(0, 1))
    return {"psnr_y": psnr[0], "ssim_y": ssim[0], "psnr_rgb": jnp.mean(psnr[1:]),
            "ssim_rgb": jnp.mean(ssim[1:])}

  @jax.jit
  def foundir(pred, gt):
    p, g = pred.astype(jnp.float64) / 255.0, gt.astype(jnp.float64) / 255.0
    psnr = 10.0 * jnp.log10(1.0 / (jnp.mean((p - g) ** 2) + 1e-8))
    y = lambda x: jnp.round(255.0 * (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]))
    ssim = jnp.mean(ssim_maps(y(p)[..., None], y(g)[..., None], pad=False, clamp_cs=True))
    return {"psnr": psnr, "ssim": ssim}

  def compute(protocol, pred, gt):
    with jax.enable_x64(True):
      out = {"vbridge": vbridge, "foundir": foundir}[protocol](jnp.asarray(pred), jnp.asarray(gt))
      return {k: float(out[k]) for k in M.METRIC_KEYS[protocol]}

  return compute


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=20)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  pairs = []
  for h, w in (SIZES * (a.images // len(SIZES) + 1))[:a.images]:
    gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pred = np.clip(gt.astype(np.int16) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
    pairs.append((pred, gt))
  impls = {"opencv (vbridge_jax.evaluation.metrics)": M.compute, "scipy correlate1d": scipy_compute,
           "jax jit (earlier)": _jax_fns()}
  times: dict[tuple[str, str], float] = {}
  results: dict[tuple[str, str], list] = {}
  for protocol in M.PROTOCOLS:
    for name, fn in impls.items():
      t0 = time.perf_counter()
      results[(name, protocol)] = [fn(protocol, pr, g) for pr, g in pairs]
      times[(name, protocol)] = time.perf_counter() - t0
    ref = results[("opencv (vbridge_jax.evaluation.metrics)", protocol)]
    for name in impls:
      for r, q in zip(ref, results[(name, protocol)]):
        for k in r:
          assert abs(r[k] - q[k]) < 1e-6, (name, protocol, k, r[k], q[k])
  n_sizes = len({g.shape for _, g in pairs})
  print(f"{a.images} pairs, {n_sizes} distinct sizes (mostly 1920x1080); seconds for all of "
        f"them, compiles included; every implementation agrees to 1e-6\n")
  print("| implementation | vbridge s | foundir s | total s | x OpenCV |")
  print("|---|---|---|---|---|")
  base = sum(times[("opencv (vbridge_jax.evaluation.metrics)", pr)] for pr in M.PROTOCOLS)
  for name in impls:
    v, f = times[(name, "vbridge")], times[(name, "foundir")]
    print(f"| {name} | {v:.1f} | {f:.1f} | {v + f:.1f} | {(v + f) / base:.1f} |")


if __name__ == "__main__":
  main()
