"""The analytic FLOP count against the matmuls JAX actually traces, and the device table."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vbridge_jax.models.configs import DiTConfig
from vbridge_jax.models.lora import apply_lora
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.parallel import flops


def _dot_flops(jaxpr) -> float:
  """2 * prod(output) * prod(contracted) summed over every dot_general, scans unrolled."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
    mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for sub in jax.core.subjaxprs(eqn.params) if hasattr(jax.core, "subjaxprs") else _subs(eqn):
      total += mult * _dot_flops(sub)
  return total


def _subs(eqn):
  for v in eqn.params.values():
    for x in (v if isinstance(v, (list, tuple)) else (v,)):
      if hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):
        yield x.jaxpr
      elif hasattr(x, "eqns"):
        yield x


CFG = DiTConfig.tiny(num_layers=3)
SHAPE = (2, 3, 8, 12, CFG.in_channels)  # 3 * 4 * 6 = 72 tokens
TOKENS = 72


TIME_ROWS = {"token": None, "frame": SHAPE[1], "sample": 1}  # flops' time_rows per layout


def _inputs(rows: str):
  x = jnp.ones(SHAPE)
  t = jnp.full({"token": (2, TOKENS), "frame": (2, SHAPE[1]), "sample": (2,)}[rows], 500.0)
  ctx = jnp.ones((2, 5, CFG.text_dim))
  return x, t, ctx


@pytest.mark.parametrize("rows", list(TIME_ROWS))
def test_forward_matches_traced_matmuls(rows):
  graphdef, state = nnx.split(WanDiT(CFG, rngs=nnx.Rngs(0)))
  x, t, ctx = _inputs(rows)
  jaxpr = jax.make_jaxpr(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))(state, x, t, ctx).jaxpr
  want = flops.forward_flops(CFG, TOKENS, batch=2, time_rows=TIME_ROWS[rows])
  assert _dot_flops(jaxpr) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_full_finetune_step_matches_traced_matmuls(remat):
  cfg = CFG.replace(remat=remat)
  graphdef, state = nnx.split(WanDiT(cfg, rngs=nnx.Rngs(0)))
  x, t, ctx = _inputs("token")
  loss = lambda m: jnp.mean(m(x, t, ctx) ** 2)
  step = lambda s: nnx.value_and_grad(loss)(nnx.merge(graphdef, s))
  jaxpr = jax.make_jaxpr(step)(state).jaxpr
  got = _dot_flops(jaxpr)
  want = flops.train_step_flops(cfg, TOKENS, 2)
  assert got == pytest.approx(want.hardware, rel=1e-9)
  p = flops.forward_parts(cfg, TOKENS)
  skipped = p["patch"] + p["text1"] + p["time1"]  # no gradient into the inputs
  assert want.model == pytest.approx(2 * (3 * sum(p.values()) - skipped))
  if remat == "full":
    blocks = sum(p[k] for k in ("self_qkvo", "cross_qo", "cross_kv", "ffn", "attention"))
    assert want.hardware - want.model == pytest.approx(2 * blocks)


def test_lora_step_matches_traced_matmuls():
  model = WanDiT(CFG, rngs=nnx.Rngs(0))
  apply_lora(model, rank=4, alpha=4.0)
  graphdef, state = nnx.split(model)
  x, t, ctx = _inputs("token")
  loss = lambda m: jnp.mean(m(x, t, ctx) ** 2)
  grad = lambda s: nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
      nnx.merge(graphdef, s))
  got = _dot_flops(jax.make_jaxpr(grad)(state).jaxpr)
  want = flops.train_step_flops(CFG, TOKENS, 2, finetune="lora", lora_rank=4)
  assert got == pytest.approx(want.model, rel=1e-9)
  assert 1.5 * want.forward < want.model < 2.2 * want.forward


def test_video_tokens():
  assert flops.video_tokens(121, 704, 1280) == 27_280
  assert flops.video_tokens(9, 960, 960) == 3 * 30 * 30
  assert flops.video_tokens(5, 704, 1280) == 2 * 22 * 40
  with pytest.raises(ValueError, match="multiples of 32"):
    flops.video_tokens(9, 720, 720)
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    flops.video_tokens(8, 512, 512)


def test_5b_magnitudes():
  cfg = DiTConfig.ti2v_5b()
  # Per video token: 30 blocks x 2 x (12 D^2 + 2 D F) weights ~ 8.7 GFLOP.
  fwd = flops.forward_flops(cfg, 1, text_len=0, time_rows=1)
  assert 8.6e9 < fwd < 8.9e9
  step = flops.train_step_flops(cfg.replace(remat="full"), 2700, 32)
  assert step.hardware / step.model == pytest.approx(4 / 3, rel=0.02)


def test_device_table_and_mfu():
  assert flops.device_spec("TPU v5 lite").name == "TPU v5e"
  assert flops.device_spec("TPU v5").name == "TPU v5p"
  assert flops.device_spec("TPU v6 lite").peak_bf16_flops == 918e12
  assert flops.device_spec("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM"
  assert flops.device_spec("NVIDIA H200").hbm_bytes == 141e9
  assert flops.device_spec("NVIDIA A100-SXM4-40GB").hbm_bytes == 40e9
  assert flops.device_spec("cpu") is None
  assert flops.mfu(1e15, 2.0, 1e15, 1) == 0.5
  with pytest.raises(ValueError):
    flops.mfu(1.0, 0.0, 1e12)


def test_throughput_fields():
  step = flops.StepFlops(model=459e12, hardware=500e12, forward=153e12, tokens=2700)
  got = flops.throughput(2.0, step, "TPU v5", 4)
  assert got["tokens_per_sec"] == 5400 and got["mfu"] == pytest.approx(0.5)
  assert flops.throughput(2.0, step, "cpu", 8) == {"tokens_per_sec": 5400}
