"""Training-step time and tokens/s for the tiny and a small config, printed as a table.

    python benchmarks/train_step.py [--sizes 64,128] [--steps 5] [--batch 4] [--frames 5]

A step is the trainer's jitted step (frozen VAE encode, flow-matching TI2V loss, backward,
AdamW) on synthetic clips, on all local devices (fsdp mesh). tokens/s counts DiT video
tokens: batch x latent frames x (S / 32)^2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

from vbridge_jax.configs import curriculum  # noqa: E402
from vbridge_jax.parallel import sharding as sh  # noqa: E402
from vbridge_jax.training import (
  setup,  # noqa: E402
  trainer,  # noqa: E402
)

SMALL_DIT = dict(dim=256, ffn_dim=1024, num_heads=4, num_layers=4)


def bench(name: str, config: ml_collections.ConfigDict, size: int, steps: int) -> dict:
  mesh = sh.create_mesh(dict(config.mesh))
  rules = sh.rules_from_config(config.logical_axis_rules)
  model, opt, vae, _ = setup.build_state(config, mesh, rules)
  dcfg = model.config
  wrt = nnx.LoRAParam if config.finetune == "lora" else nnx.Param
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  graphdef, state = nnx.split((model, opt))
  vg, vs = nnx.split(vae)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step_fn = trainer.make_train_step(graphdef, vg, config, patch_size=dcfg.patch_size, wrt=wrt,
                                    state_shardings=shardings,
                                    batch_sharding=sh.batch_sharding(mesh, 5))
  b, f = int(config.data.batch_size), int(config.data.frames)
  clip = jax.device_put(jax.random.uniform(jax.random.key(0), (b, f, size, size, 3), minval=-1.0),
                        sh.batch_sharding(mesh, 5))
  ctx = trainer._context(config, dcfg, mesh)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    t0 = time.perf_counter()
    state, m = step_fn(state, vs, clip, ctx, jnp.asarray(0, jnp.int32))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = step_fn(state, vs, clip, ctx, jnp.asarray(i + 1, jnp.int32))
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
  tokens = b * (1 + (f - 1) // 4) * (size // 32) ** 2
  return dict(config=name, params=n_params, size=size, batch=b, frames=f, tokens=tokens,
              compile_s=compile_s, step_s=dt, tokens_per_s=tokens / dt)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="64,128")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=5)
  p.add_argument("--configs", default="tiny,small")
  args = p.parse_args()
  rows = []
  for name in args.configs.split(","):
    for size in (int(s) for s in args.sizes.split(",")):
      c = curriculum.get_config("tiny_wan")
      c.data.batch_size, c.data.frames = args.batch, args.frames
      if name == "small":
        c.model.dit_overrides = ml_collections.ConfigDict(SMALL_DIT)
      elif name != "tiny":
        raise SystemExit(f"unknown config {name!r} (tiny, small)")
      rows.append(bench(name, c, size, args.steps))
  print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}")
  print("| config | DiT params | size | batch x frames | tokens/step | compile s | step s | tokens/s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['config']} | {r['params']:,} | {r['size']} | {r['batch']} x {r['frames']} | "
          f"{r['tokens']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} |")


if __name__ == "__main__":
  main()
