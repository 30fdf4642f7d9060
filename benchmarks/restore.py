"""End-to-end restore against diffusers' Wan2.2 TI2V pipeline, side by side on this CPU.

  python benchmarks/restore.py [--sizes 256,512] [--steps 50] [--frames 5] [--runs 1]
                               [--layers 2] [--heads 4] [--head-dim 64] [--ffn 1024]
                               [--vae wan22|tiny]

One random model serves both sides: a small diffusers `WanTransformer3DModel` (every
parameter random, `--layers/--heads/--head-dim/--ffn`, 48 latent channels, 512 text tokens)
and an `AutoencoderKLWan` with the Wan2.2 widths (`--vae tiny`: narrow), saved in the
diffusers layout and converted with this project's converter (`checkpoints.convert_path`).

- diffusers: `WanImageToVideoPipeline(expand_timesteps=True)` (the Wan2.2 TI2V path),
  `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5)`, guidance 6 on every step.
- vbridge_jax: `restorer.Restorer` with the same solver, schedule (`diffusers`), shift and
  guidance and `cfg_skip=0`, so that both do the same work: 2 x steps DiT forwards, one
  VAE encode of the image, one decode of the 5-frame clip.

Per image size, one image at a time (batch 1): images/s of each, their ratio, and where the
time goes; vbridge_jax twice, with the guided passes as two forwards of batch 1 (the
default) and as one forward of batch 2 (`SamplerConfig(batched_cfg=True)`). Where the time goes (VAE encode + decode, DiT including the solver, the rest = host: pre/post-processing,
noise, transfers, Python). vbridge_jax's split comes from the sampler and VAE called one
after the other as `Restorer` calls them, each synchronised; diffusers' from timers around
its transformer and VAE calls. Compilation and first-call costs are excluded (one warm-up
restore per size and side, diffusers' with 2 steps).

Check: given the same initial latents (drawn once, handed to diffusers as `latents`), both give the same last frame: max |a - b| over the frame in [-1, 1] must be
below `--tol` (default 2e-3, about a quarter of one 8-bit level). That also checks the TI2V
first-frame conditioning (latent frame 0 = the encoded image, timestep 0 on its tokens)
against a third implementation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXT_LEN = 512


def torch_vae(kind: str, seed: int = 0):
  """diffusers' Wan2.2 VAE (48 latent channels; `tiny`: narrow widths), random weights at a
  scale that keeps activations in range (norm gains near 1, weights / sqrt(fan-in))."""
  import numpy as np
  import torch
  from diffusers import AutoencoderKLWan
  torch.manual_seed(seed)
  widths = dict(base_dim=160, decoder_base_dim=256) if kind == "wan22" else dict(base_dim=8, decoder_base_dim=12)
  rng = np.random.default_rng(seed)
  vae = AutoencoderKLWan(**widths, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                         patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                         latents_mean=list(rng.normal(0, 0.3, 48)),
                         latents_std=list(rng.uniform(0.5, 1.5, 48))).eval()
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
  return vae


def build(args, folder: Path):
  """(diffusers DiT, diffusers VAE, our DiT, our VAE): one random model, converted."""
  from tests.dit_reference import make_torch_dit
  from vbridge_jax.checkpoints import convert_path, load_dit, load_vae
  from vbridge_jax.models import DiTConfig

  cfg = DiTConfig(dim=args.heads * args.head_dim, ffn_dim=args.ffn, num_heads=args.heads,
                  num_layers=args.layers, text_dim=args.text_dim, text_len=TEXT_LEN)
  ref_dit, ref_vae = make_torch_dit(cfg, seed=0), torch_vae(args.vae)
  ref_dit.save_pretrained(folder / "repo" / "transformer")
  ref_vae.save_pretrained(folder / "repo" / "vae")
  convert_path(folder / "repo", folder / "model", log=lambda _: None)
  return ref_dit, ref_vae, load_dit(folder / "model", dtype="float32"), load_vae(folder / "model")


class Timers:
  """Accumulated wall time of wrapped callables, by name."""

  def __init__(self):
    self.s: dict[str, float] = {}

  def wrap(self, name: str, fn):
    def timed(*a, **k):
      t0 = time.perf_counter()
      try:
        return fn(*a, **k)
      finally:
        self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t0
    return timed


def diffusers_restore(pipe, image, noise_cl, pos, neg, args):
  """Last frame in [-1, 1] (H, W, 3) and {vae, dit, total} seconds."""
  import numpy as np
  import torch
  timers = Timers()
  saved = pipe.transformer.forward, pipe.vae.encode, pipe.vae.decode
  pipe.transformer.forward = timers.wrap("dit", saved[0])
  pipe.vae.encode, pipe.vae.decode = timers.wrap("vae", saved[1]), timers.wrap("vae", saved[2])
  h, w = image.shape[:2]
  img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None])  # [-1, 1]
  latents = torch.from_numpy(np.ascontiguousarray(noise_cl.transpose(0, 4, 1, 2, 3)))
  t0 = time.perf_counter()
  try:
    with torch.no_grad():
      video = pipe(image=img, prompt_embeds=pos, negative_prompt_embeds=neg, height=h, width=w,
                   num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   latents=latents, output_type="np").frames
  finally:
    pipe.transformer.forward, pipe.vae.encode, pipe.vae.decode = saved
  total = time.perf_counter() - t0
  return 2.0 * np.asarray(video[0][-1], np.float32) - 1.0, dict(timers.s, total=total)


def ours_split(sampler, vae, pos, neg, frames: int, image_u8):
  """`Restorer`'s stage from the public pieces (sampler, VAE), step by step and synchronised.

  Returns the last frame in [-1, 1], the initial noise and seconds. Uses no `Restorer`
  internals; its noise is drawn here (seeded), so diffusers can get the same."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from vbridge_jax.inference import restorer
  t0 = time.perf_counter()
  plan = restorer.plan_size(*image_u8.shape[:2])
  video = jax.device_put(restorer.to_work(image_u8, plan)[None, None])
  t1 = time.perf_counter()
  first = jax.block_until_ready(vae.normalize(vae.encode(video)))
  t2 = time.perf_counter()
  shape = (1, 1 + (frames - 1) // vae.config.scale_factor_temporal) + first.shape[2:]
  noise = jax.random.normal(jax.random.key(43), (int(np.prod(shape)),), jnp.float32).reshape(shape)
  noise = jax.block_until_ready(noise)
  t3 = time.perf_counter()
  latent = jax.block_until_ready(sampler(noise, pos[None], neg[None], first))
  t4 = time.perf_counter()
  decoded = jax.block_until_ready(vae.decode(vae.denormalize(latent)))
  t5 = time.perf_counter()
  last = np.asarray(decoded[0, -1], np.float32)
  restorer.from_work(last, plan)
  t6 = time.perf_counter()
  s = dict(vae=(t2 - t1) + (t5 - t4), dit=t4 - t3, total=t6 - t0)
  return last, np.asarray(noise), s


def test_image(size: int, seed: int = 0):
  """A smooth random uint8 picture (low-frequency colour fields plus a little noise)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  img = np.stack([np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy + rng.uniform()))
                  for _ in range(3)], -1)
  img = 127.5 * (img + 1) + rng.normal(0, 8, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="256,512", help="square image sizes in px, multiples of 32")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--frames", type=int, default=5)
  p.add_argument("--guidance", type=float, default=6.0)
  p.add_argument("--runs", type=int, default=1, help="timed restores per size and side")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--ffn", type=int, default=1024)
  p.add_argument("--text-dim", type=int, default=256)
  p.add_argument("--vae", default="wan22", choices=["wan22", "tiny"])
  p.add_argument("--tol", type=float, default=2e-3, help="max |last frame difference| in [-1, 1]")
  args = p.parse_args()

  import dataclasses

  import jax
  import numpy as np
  import torch
  from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

  from vbridge_jax.diffusion.sampler import Sampler, SamplerConfig
  from vbridge_jax.inference.restorer import Restorer

  warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers: images in [-1, 1]
  torch.set_num_threads(os.cpu_count() or 1)
  sizes = [int(s) for s in args.sizes.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    ref_dit, ref_vae, dit, vae = build(args, Path(tmp))
  rng = np.random.default_rng(1)
  pos = rng.standard_normal((TEXT_LEN, args.text_dim)).astype(np.float32)
  neg = np.zeros_like(pos)
  neg[:40] = rng.standard_normal((40, args.text_dim))  # a shorter negative, zero-padded to 512
  scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                      flow_shift=5.0)
  pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=ref_vae, scheduler=scheduler,
                                 transformer=ref_dit, expand_timesteps=True)
  pipe.set_progress_bar_config(disable=True)
  config = SamplerConfig(solver="unipc", steps=args.steps, shift=5.0, schedule="diffusers",
                         guidance=args.guidance, cfg_skip=0.0, patch_size=tuple(dit.config.patch_size))
  ours = {}
  for label, cfg in (("", config), (", CFG one batch", dataclasses.replace(config, batched_cfg=True))):
    ours[label] = (Restorer(dit, vae, pos, neg, cfg, frames=args.frames, seed=43), Sampler(dit, cfg))
  pos_t, neg_t = torch.from_numpy(pos[None]), torch.from_numpy(neg[None])

  load = os.getloadavg()
  rows, checks = [], []
  for size in sizes:
    image = test_image(size, seed=size)
    name = f"bench_{size}.png"
    work = image.astype(np.float32) / 127.5 - 1.0
    lasts, rows_here = {}, []
    for label, (restorer, sampler) in ours.items():
      restorer.restore([image], [name])  # warm-up: compiles
      ours_split(sampler, vae, pos, neg, args.frames, image)
      totals, parts_list = [], []
      for _ in range(args.runs):
        t0 = time.perf_counter()
        restorer.restore([image], [name])
        totals.append(time.perf_counter() - t0)
        lasts[label], noise, parts = ours_split(sampler, vae, pos, neg, args.frames, image)
        parts_list.append(parts)
      rows_here.append((f"vbridge_jax Restorer{label}", min(totals), min(parts_list, key=lambda p: p["total"])))
    diffusers_restore(pipe, work, noise, pos_t, neg_t, argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up
    ref_parts = []
    for _ in range(args.runs):
      ref_last, parts = diffusers_restore(pipe, work, noise, pos_t, neg_t, args)
      ref_parts.append(parts)
    for label, last in lasts.items():
      checks.append((f"{size}²{label}", float(np.max(np.abs(last - ref_last))), float(np.max(np.abs(ref_last)))))
    ref_s = min(p["total"] for p in ref_parts)
    rows.append((size, "diffusers (PyTorch)", ref_s, ref_s, min(ref_parts, key=lambda p: p["total"])))
    rows += [(size, impl, s, ref_s, parts) for impl, s, parts in rows_here]

  print(f"Restore, 1 image at a time: {args.frames} frames, UniPC {args.steps} steps, guidance "
        f"{args.guidance} on every step; DiT {args.layers} layers {args.heads}x{args.head_dim} "
        f"ffn {args.ffn}, VAE {args.vae}; fp32, {jax.devices()[0].device_kind}, {os.cpu_count()} "
        f"cores, load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; best of "
        f"{args.runs}")
  print()
  print("| image | implementation | s/image | images/s | vs diffusers | VAE | DiT | host |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for size, impl, s, ref_s, parts in rows:
    tot = parts["total"]
    host = max(0.0, tot - parts.get("vae", 0.0) - parts.get("dit", 0.0))
    print(f"| {size}² | {impl} | {s:.2f} | {1 / s:.3f} | {ref_s / s:.2f}x | "
          f"{parts.get('vae', 0) / tot:.0%} | {parts.get('dit', 0) / tot:.0%} | {host / tot:.0%} |")
  print()
  bad = False
  for size, err, scale in checks:
    ok = err <= args.tol
    bad |= not ok
    print(f"last frame {size}: max |vbridge_jax - diffusers| = {err:.2e} (max |diffusers| "
          f"{scale:.2f}; tolerance {args.tol:g}): {'ok' if ok else 'MISMATCH'}")
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
