"""Memory and time of decoding one Wan2.2 VAE latent frame, tiled and untiled (full `wan22()`).

  python benchmarks/vae_memory.py                      # compile-only memory table (fast)
  python benchmarks/vae_memory.py --run --timeout 900  # also run each case (random weights)

Cases: one latent frame decoded to 1280x720 and to 3840x2160, untiled and tiled (tiles of
16 latents = 256 px, overlap 4 latents). Each case runs in its own process:

- `XLA temp` / `XLA args+out`: the compiled program's working and in/out buffers
  (`compiled.memory_analysis()`), for the whole image (untiled) or one tile (tiled);
  obtained without weights or running anything.
- with `--run`: the case's process builds the model with random fp32 weights (2.8 GB), decodes,
  and the parent samples its resident set size every 0.1 s: `peak RSS` over the whole process,
  `RSS before decode` once the weights are built, `peak RSS in decode` from then on (this
  includes compiling the decode function); `decode s` is the decode's wall time (compilation
  included). A case that passes `--rss-limit` GB or
  `--timeout` seconds is stopped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = {  # name: (latent height, latent width)
    "1280x720": (45, 80),
    "3840x2160": (135, 240),
}
TILE, OVERLAP = 16, 4  # latents


def _tiles(h: int, w: int) -> int:
  from vbridge_jax.models.wan_vae import _starts
  return len(_starts(h, min(TILE, h), OVERLAP)) * len(_starts(w, min(TILE, w), OVERLAP))


def child(case: str, tiled: bool, run: bool) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from vbridge_jax.checkpoints.loading import abstract_params, from_params
  from vbridge_jax.models.configs import VAEConfig
  from vbridge_jax.models.wan_vae import WanVAE

  cfg = VAEConfig.wan22()
  h, w = CASES[case]
  th, tw = (min(TILE, h), min(TILE, w)) if tiled else (h, w)
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  fn = jax.jit(lambda s, z: nnx.merge(graphdef, s)._decode_raw(z))
  t0 = time.time()
  compiled = fn.lower(state, jax.ShapeDtypeStruct((1, 1, th, tw, cfg.z_dim), jnp.float32)).compile()
  res = {"compile_s": time.time() - t0, "tiles": _tiles(h, w) if tiled else 1}
  ma = compiled.memory_analysis()
  if ma is not None:
    res["temp_gb"] = ma.temp_size_in_bytes / 2**30
    res["io_gb"] = (ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**30
  print("RESULT " + json.dumps(res), flush=True)  # kept if the run below is stopped
  if run:
    rng = np.random.default_rng(0)

    def fill(leaf):
      if len(leaf.shape) == 1:
        return np.ones(leaf.shape, np.float32)
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)

    model = from_params(cfg, jax.tree.map(fill, abstract_params(abstract)))
    z = rng.standard_normal((1, 1, h, w, cfg.z_dim), dtype=np.float32)
    print("READY", flush=True)
    t0 = time.time()
    out = model.decode(z, tile=TILE if tiled else None, overlap=OVERLAP)
    out = np.asarray(out)
    res["run_s"] = time.time() - t0
    res["shape"] = list(out.shape)
  return res


def parent(args) -> None:
  import psutil

  rows = []
  for case in args.cases:
    for tiled in (False, True):
      cmd = [sys.executable, __file__, "--child", case, "--tiled", str(int(tiled))] + (["--run"] if args.run else [])
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
      ps = psutil.Process(proc.pid)
      peak = base = during = 0
      status, t0 = "ok", time.time()
      lines = []
      import threading
      reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
      reader.start()
      while proc.poll() is None:
        try:
          rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
          break
        peak = max(peak, rss)
        if not base and any(l.startswith("READY") for l in lines):
          base = rss
        if base:
          during = max(during, rss)
        if rss > args.rss_limit * 2**30:
          status = f"stopped: RSS > {args.rss_limit} GB"
        elif time.time() - t0 > args.timeout:
          status = f"stopped: > {args.timeout} s"
        if status != "ok":
          proc.kill()
          break
        time.sleep(0.1)
      proc.wait()
      reader.join(timeout=5)
      res = {}
      for l in lines:
        if l.startswith("RESULT "):
          res = json.loads(l[7:])
      if status == "ok" and proc.returncode != 0:
        status = f"failed (exit {proc.returncode})"
      rows.append((case, "tiled" if tiled else "untiled", res, peak, base, during, status))
      print(_row(*rows[-1], args.run), flush=True) if args.verbose else None
  print(_table(rows, args.run))


def _row(case, mode, res, peak, base, during, status, run) -> str:
  f = lambda k, fmt: (fmt.format(res[k]) if k in res else "-")  # noqa: E731
  cells = [case, mode, str(res.get("tiles", "-")), f("temp_gb", "{:.2f}"), f("io_gb", "{:.2f}"),
           f("compile_s", "{:.0f}")]
  if run:
    gb = lambda v: f"{v / 2**30:.1f}" if v else "-"  # noqa: E731
    cells += [gb(peak), gb(base), gb(during), f("run_s", "{:.0f}")]
  cells.append(status)
  return "| " + " | ".join(cells) + " |"


def _table(rows, run) -> str:
  head = ["output", "mode", "tiles", "XLA temp GB", "XLA args+out GB", "compile s"]
  if run:
    head += ["peak RSS GB", "RSS before decode GB", "peak RSS in decode GB", "decode s"]
  head.append("status")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return "\n".join(lines + [_row(*r, run) for r in rows])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", action="store_true", help="also decode with random weights")
  p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
  p.add_argument("--timeout", type=float, default=900, help="seconds per case")
  p.add_argument("--rss-limit", type=float, default=16, help="GB per case")
  p.add_argument("--verbose", action="store_true", help="print each row as it finishes")
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--tiled", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print("RESULT " + json.dumps(child(args.child, bool(args.tiled), args.run)), flush=True)
  else:
    parent(args)


if __name__ == "__main__":
  main()
