"""How far each of the authors' bf16 inference pieces moves a restored image (tiny models, CPU).

    python benchmarks/authors_numerics.py [--size 128] [--steps 50] [--images 4] [--seed 43]

The tiny random DiT and VAE (`DiTConfig.tiny`, `VAEConfig.tiny`; 8 latent channels, 16x
spatial) restore `--images` synthetic pictures (smooth blobs and gradients, `--size` pixels
square) with the authors' sampling (UniPC, 50 steps, shift 5, guidance 6, the last 15%
unguided, 5 frames, seed 43) and the DiT in bf16 as restore's defaults, once with this
project's float32 numerics (`sampler.Numerics()`) and once per piece of
`sampler.Numerics.authors()` alone, then all of them (`precision = "authors"`). Per row: the
largest and the mean absolute difference from the float32 output in uint8 levels [0, 255],
the share of values that moved, and the PSNR between the two (dB, RGB, peak 255). A last row
gives the scale of an ordinary precision change: the DiT computing in float32 instead of bf16.
The weights are random, so the images are noise-like; the figures measure the numerics, not
restoration quality. Prints markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from vbridge_jax.diffusion.sampler import Numerics, SamplerConfig  # noqa: E402
from vbridge_jax.inference import restorer  # noqa: E402
from vbridge_jax.models import DiTConfig, VAEConfig, WanDiT, WanVAE  # noqa: E402
from vbridge_jax.parallel import sharding as sh  # noqa: E402

TEXT_DIM = 32
PIECES = ("vae_dtype", "latent_dtype", "noise_dtype", "timestep_dtype", "decode_dtype")


def pictures(n: int, size: int, seed: int) -> list[np.ndarray]:
  """Smooth synthetic uint8 pictures: a colour gradient and a few soft blobs each."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = []
  for _ in range(n):
    img = rng.uniform(0, 1, 3) * xx[..., None] + rng.uniform(0, 1, 3) * yy[..., None]
    for _ in range(4):
      cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
      blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
      img = img + rng.uniform(-1, 1, 3) * blob[..., None]
    img = (img - img.min()) / (np.ptp(img) + 1e-6)
    out.append((img * 255).astype(np.uint8))
  return out


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float]:
  a = np.stack(ref).astype(np.float64)
  b = np.stack(got).astype(np.float64)
  d = np.abs(a - b)
  mse = float((d ** 2).mean())
  psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
  return dict(max_abs=float(d.max()), mean_abs=float(d.mean()), moved=float((d > 0).mean()),
              psnr=psnr)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", type=int, default=128, help="picture side in pixels (a multiple of 32)")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--images", type=int, default=4)
  p.add_argument("--seed", type=int, default=43)
  a = p.parse_args()
  if a.size < 32 or a.size % 32:
    sys.exit(f"error: --size={a.size} must be a positive multiple of 32")

  mesh = sh.create_mesh({"data": 1}, jax.local_devices()[:1])
  rules = sh.DEFAULT_RULES
  place = lambda m: restorer.place(m, mesh, rules)

  def dit(dtype):
    return place(WanDiT(DiTConfig.tiny(dtype=dtype, param_dtype="bfloat16"), rngs=nnx.Rngs(0)))

  vae32 = WanVAE(VAEConfig.tiny(), rngs=nnx.Rngs(1))
  graph16, _ = nnx.split(nnx.eval_shape(lambda: WanVAE(VAEConfig.tiny(dtype="bfloat16"),
                                                       rngs=nnx.Rngs(1))))
  vaes = {None: place(vae32), "bfloat16": place(nnx.merge(graph16, nnx.state(vae32)))}
  dits = {"bfloat16": dit("bfloat16")}
  rng = np.random.default_rng(a.seed)
  pos, neg = (rng.standard_normal((n, TEXT_DIM)).astype(np.float32) for n in (7, 5))
  images = pictures(a.images, a.size, a.seed)
  names = [f"{i}.png" for i in range(a.images)]
  base = SamplerConfig(steps=a.steps)

  def run(num: Numerics, dit_dtype: str = "bfloat16") -> list[np.ndarray]:
    if dit_dtype not in dits:
      dits[dit_dtype] = dit(dit_dtype)
    engine = restorer.Restorer(dits[dit_dtype], vaes[num.vae_dtype], pos, neg,
                               dataclasses.replace(base, numerics=num), frames=5,
                               seed=a.seed, mesh=mesh, rules=rules)
    return engine.restore(images, names)

  authors = Numerics.authors()
  rows = [(f"`{k}` alone", Numerics(**{k: getattr(authors, k)})) for k in PIECES]
  rows.append(("all (`precision = \"authors\"`)", authors))
  t0 = time.time()
  ref = run(Numerics())
  print(f"{a.images} pictures of {a.size}x{a.size}, {a.steps} UniPC steps, guidance 6, 5 frames, "
        f"seed {a.seed}, tiny random DiT (bf16) and VAE; against float32 numerics\n")
  print("| setting | max abs | mean abs | values moved | PSNR (dB) |")
  print("|---|---|---|---|---|")
  out = rows + [("for scale: the DiT in float32, not bf16", None)]
  for label, num in out:
    got = run(num) if num is not None else run(Numerics(), "float32")
    m = compare(ref, got)
    print(f"| {label} | {m['max_abs']:.0f} | {m['mean_abs']:.3f} | {100 * m['moved']:.1f}% | "
          f"{m['psnr']:.1f} |", flush=True)
  print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
  main()
