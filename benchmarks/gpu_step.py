"""One-GPU measurement of the full 5B model (random weights): restore and training steps.

    python benchmarks/gpu_step.py --phase=matmul|restore|train [--finetune=full|lora] --out=FILE
    python benchmarks/gpu_step.py --phase=table --out=FILE

`--tiny` runs the same code on the tiny config at 64x128 on any backend (a smoke test of
the script, run by tests/test_benchmarks.py; its numbers mean nothing).

Each phase runs in its own process (benchmarks/gpu_step.sh calls them in turn) so that
peak memory is per phase and a phase that runs out of memory does not poison the next;
each appends one JSON line to `--out`; `--phase=table` prints them as a table.

- matmul: the card's measured bf16 matmul rate (8192^3 bf16 matmuls, fp32 accumulation),
  the denominator of MFU beside the datasheet peak (`vbridge_jax.parallel.flops.DEVICES`).
- restore: one 1280x704 image, 5 frames: VAE encode of frame 0, 50 UniPC steps with CFG
  (guidance 6, last 15% unguided), VAE decode (the path of `vbridge_jax.restore`).
- train: one step at 5 frames 704x1280 (1,760 tokens) on latents, the trainer's loss and
  AdamW, LoRA (rank 64) or full fine-tune. The remat policy and master-weight dtype are the
  first of the candidates whose compiled memory (XLA's memory analysis, before any weight
  is created) fits the card; the full fine-tune in fp32 master weights and Adam needs
  80 GB of state, so on an 80 GB card it falls back to bf16 weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vbridge_jax import aot  # noqa: E402
from vbridge_jax.parallel import flops
from vbridge_jax.parallel import sharding as sh  # noqa: E402
from vbridge_jax.training import setup  # noqa: E402

H, W, FRAMES = 704, 1280, 5
TINY = False  # --tiny: the tiny config at 64x128 on any backend
CANDIDATES = {  # (param_dtype, remat), tried in order
    "lora": [("float32", "none"), ("float32", "save_dots"), ("float32", "full"), ("bfloat16", "full")],
    "full": [("float32", "save_dots"), ("float32", "full"), ("bfloat16", "save_dots"),
             ("bfloat16", "full")],
}


def _sync(x):
  return jax.block_until_ready(x)


def _timed(fn, *args, repeats: int = 1):
  out = _sync(fn(*args))
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = _sync(fn(*args))
  return out, (time.perf_counter() - t0) / repeats


def _peak_bytes() -> int:
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats.get("peak_bytes_in_use", 0))


def _limit_bytes() -> int:
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats.get("bytes_limit", 0))


def measure_matmul(n: int = 8192, repeats: int = 20) -> dict:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)

  @jax.jit
  def chain(a, b):
    def body(i, acc):
      return acc + jnp.dot(a, b, preferred_element_type=jnp.float32)[:1, :1]
    return jax.lax.fori_loop(0, repeats, body, jnp.zeros((1, 1), jnp.float32))

  _, dt = _timed(chain, a, b, repeats=3)
  return {"phase": "matmul", "measured_bf16_flops": 2 * n ** 3 * repeats / dt}


def _config(finetune: str, param_dtype: str, remat: str):
  from vbridge_jax.configs import curriculum
  if TINY:
    c = curriculum.get_config("tiny_wan")
    c.finetune = finetune
    c.model.param_dtype, c.model.remat = param_dtype, remat
  else:
    c = curriculum.get_config("lora" if finetune == "lora" else None)
    c.model.param_dtype, c.model.remat, c.model.attention = param_dtype, remat, "cudnn"
    c.model.dtype = c.model.vae_dtype = "bfloat16"
  c.mesh.fsdp = 1
  return c


def bench_train(finetune: str) -> dict:
  mesh = sh.create_mesh({"fsdp": 1}, devices=jax.local_devices()[:1])
  limit = _limit_bytes()
  tried = []
  for param_dtype, remat in CANDIDATES[finetune]:
    config = _config(finetune, param_dtype, remat)
    rules = sh.rules_from_config(config.logical_axis_rules)
    st = aot.abstract_state(config, mesh, rules)
    graphdef, state = st.train
    dcfg = st.dit_config
    lat = (1, 1 + (FRAMES - 1) // 4, H // 16, W // 16, dcfg.in_channels)
    fn = aot.train_step_fn(graphdef, None, config, dcfg, st.wrt,
                           jax.tree.map(lambda s: s.sharding, state), mesh, vae=False)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      t0 = time.perf_counter()
      step_no = aot._replicated(mesh, (), jnp.int32)
      compiled = fn.lower(state, None, aot._batched(mesh, lat),
                          aot._replicated(mesh, (2, dcfg.text_len, dcfg.text_dim)), step_no,
                          step_no).compile()
      compile_s = time.perf_counter() - t0
    m = aot._memory(compiled)
    need = m["argument"] + m["output"] - m["alias"] + m["temp"]
    tried.append(f"{param_dtype}/{remat}: {need / flops.GiB:.1f} GiB")
    if limit and need > 0.97 * limit:
      continue
    build, _, _, _, _ = setup.state_builder(config)
    model, opt = sh.create_sharded(build, mesh, rules)
    state = nnx.state((model, opt))
    del model, opt
    x0 = jax.random.normal(jax.random.key(1), lat, jnp.float32)
    ctx = jax.random.normal(jax.random.key(2), (2, dcfg.text_len, dcfg.text_dim), jnp.float32) * 0.1
    times = []
    for i in range(3):
      t0 = time.perf_counter()
      state, metrics = compiled(state, None, x0, ctx, jnp.asarray(i, jnp.int32),
                                jnp.asarray(-1, jnp.int32))
      _sync(metrics)
      times.append(time.perf_counter() - t0)
    tokens = flops.video_tokens(FRAMES, H, W, dcfg.patch_size)
    sf = flops.train_step_flops(dcfg, tokens, 1, finetune=finetune, lora_rank=int(config.lora.rank),
                                time_rows=lat[1])  # per-frame timesteps
    return {"phase": f"train-{finetune}", "param_dtype": param_dtype, "remat": remat,
            "compile_s": compile_s, "step_s": float(np.median(times[1:])), "first_s": times[0],
            "model_flops": sf.model, "hardware_flops": sf.hardware, "tokens": tokens,
            "peak_bytes": _peak_bytes(), "xla_bytes": need, "loss": float(metrics["loss"]),
            "tried": tried}
  return {"phase": f"train-{finetune}", "error": "no candidate fits: " + "; ".join(tried)}


def bench_restore() -> dict:
  config = _config("full", "bfloat16", "none")
  mesh = sh.create_mesh({"fsdp": 1}, devices=jax.local_devices()[:1])
  rules = sh.rules_from_config(config.logical_axis_rules)
  _, dcfg, vcfg, _, _ = setup.state_builder(config)
  from vbridge_jax.diffusion.sampler import guided_steps
  from vbridge_jax.models.wan_dit import WanDiT
  from vbridge_jax.models.wan_vae import WanVAE
  dit = sh.create_sharded(lambda: WanDiT(dcfg, rngs=nnx.Rngs(params=0)), mesh, rules)
  vae = sh.create_sharded(lambda: WanVAE(vcfg, rngs=nnx.Rngs(params=1)), mesh, rules)
  dg, ds = nnx.split(dit)
  vg, vs = nnx.split(vae)
  fn, _ = aot.restore_step_lowering(dg, vg, dcfg, rules, vae=True)
  image = jax.random.uniform(jax.random.key(0), (1, H, W, 3), jnp.float32, -1, 1)
  lat = (1, 1 + (FRAMES - 1) // 4, H // 16, W // 16, dcfg.in_channels)
  noise = jax.random.normal(jax.random.key(1), lat, jnp.float32)
  pos = jax.random.normal(jax.random.key(2), (1, dcfg.text_len, dcfg.text_dim)) * 0.1
  neg = jax.random.normal(jax.random.key(3), (1, dcfg.text_len, dcfg.text_dim)) * 0.1
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    compiled = fn.lower(ds, vs, image, noise, pos, neg).compile()
  compile_s = time.perf_counter() - t0
  out, run_s = _timed(compiled, ds, vs, image, noise, pos, neg)
  tokens = flops.video_tokens(FRAMES, H, W, dcfg.patch_size)
  guided = int(guided_steps(50, 0.15).sum())
  return {"phase": "restore", "compile_s": compile_s, "step_s": run_s, "tokens": tokens,
          "model_flops": flops.sampling_flops(dcfg, tokens, 1, steps=50, guided_steps=guided),
          "peak_bytes": _peak_bytes(), "finite": bool(jnp.isfinite(out).all())}


def table(rows: list[dict]) -> str:
  dev = jax.local_devices()[0] if jax.devices() else None
  spec = flops.device_spec(dev.device_kind) if dev is not None else None
  measured = next((r["measured_bf16_flops"] for r in rows if r["phase"] == "matmul"), 0.0)
  head = (f"device: {dev.device_kind if dev else '?'}; measured bf16 matmul "
          f"{measured / 1e12:.0f} TFLOP/s; datasheet "
          f"{spec.peak_bf16_flops / 1e12 if spec else float('nan'):.0f} TFLOP/s")
  cols = ("phase", "weights/remat", "compile s", "step s", "tokens/s", "model TFLOP",
          "MFU (measured)", "MFU (datasheet)", "peak GiB")
  lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    if r["phase"] == "matmul":
      continue
    if "error" in r:
      lines.append(f"| {r['phase']} | {r['error']} |")
      continue
    s = r["step_s"]
    mfu_m = r["model_flops"] / (s * measured) if measured else float("nan")
    mfu_d = r["model_flops"] / (s * spec.peak_bf16_flops) if spec else float("nan")
    wr = f"{r.get('param_dtype', 'bfloat16')}/{r.get('remat', '-')}"
    lines.append(f"| {r['phase']} | {wr} | {r['compile_s']:.0f} | {s:.3f} | "
                 f"{r['tokens'] / s:,.0f} | {r['model_flops'] / 1e12:.1f} | {100 * mfu_m:.0f}% | "
                 f"{100 * mfu_d:.0f}% | {r['peak_bytes'] / flops.GiB:.1f} |")
  return "\n".join(lines)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--phase", required=True, choices=["matmul", "restore", "train", "table"])
  p.add_argument("--finetune", default="lora", choices=["lora", "full"])
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help="tiny config at 64x128, any backend")
  a = p.parse_args()
  global TINY, H, W
  if a.tiny:
    TINY, H, W = True, 64, 128
  if a.phase == "table":
    rows = [json.loads(l) for l in Path(a.out).read_text().splitlines() if l.strip()]
    print(table(rows))
    return 0
  if jax.default_backend() != "gpu" and not TINY:
    print(f"error: no GPU (backend {jax.default_backend()}); this benchmark needs one H100/H200",
          file=sys.stderr)
    return 1
  try:
    row = {"matmul": (lambda: measure_matmul(256, 2)) if TINY else measure_matmul,
           "restore": bench_restore,
           "train": lambda: bench_train(a.finetune)}[a.phase]()
  except Exception as e:  # record and go on to the next phase
    row = {"phase": a.phase if a.phase != "train" else f"train-{a.finetune}",
           "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
  row["device"] = jax.local_devices()[0].device_kind
  with open(a.out, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
  print(json.dumps(row), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  sys.exit(main())
