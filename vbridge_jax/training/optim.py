"""The optimizer: AdamW with the paper's defaults, linear warm-up then constant, clipping.

V-Bridge (Table 7): lr 2e-5 constant after 100 warm-up steps, weight decay 3e-2, eps 1e-10,
max gradient norm 0.05. The warm-up is diffusers' `constant_with_warmup`: lr * step /
warmup for step < warmup, so the first update uses lr 0.

Clipping (`clip_schedule`): `authors` is the rule of the authors' training script (without
DeepSpeed; docs/fidelity.md): the limit decays linearly from `clip_initial_ratio` (5) x
`clip_norm` to `clip_norm` over the first `clip_warmup_steps` (1000) updates; after them, a
gradient whose norm exceeds `clip_spike_ratio` (5) x the limit is clipped to the limit
divided by min(norm / limit, `clip_max_shrink` (10)). `constant` clips at `clip_norm`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

CLIP_SCHEDULES = ("authors", "constant")


def learning_rate_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
  """lr * min(1, step / warmup_steps); constant lr without warm-up."""
  if lr <= 0:
    raise ValueError(f"learning rate must be > 0, got {lr}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if warmup_steps == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)], [warmup_steps])


def authors_clip_limit(norm: jax.Array, step: jax.Array, clip_norm: float, *,
                       warmup_steps: int = 1000, initial_ratio: float = 5.0,
                       spike_ratio: float = 5.0, max_shrink: float = 10.0) -> jax.Array:
  """The clipping limit of update `step` (0-based) for a gradient of global norm `norm`."""
  step = jnp.asarray(step, jnp.float32)
  start = clip_norm * initial_ratio
  if warmup_steps > 0:
    limit = jnp.where(step >= warmup_steps, clip_norm,
                      start + (clip_norm - start) / warmup_steps * jnp.maximum(step, 0.0))
  else:
    limit = jnp.asarray(clip_norm, jnp.float32)
  ratio = norm / limit
  spike = (ratio > spike_ratio) & (step > warmup_steps)
  return jnp.where(spike, limit / jnp.minimum(ratio, max_shrink), limit)


class AuthorsClipState(NamedTuple):
  count: jax.Array  # updates so far (int32)


def clip_by_authors_schedule(clip_norm: float, *, warmup_steps: int = 1000,
                             initial_ratio: float = 5.0, spike_ratio: float = 5.0,
                             max_shrink: float = 10.0) -> optax.GradientTransformation:
  """Scales the gradients to at most `authors_clip_limit(...)` in global norm, as torch's
  `clip_grad_norm_` does (coefficient `limit / (norm + 1e-6)`, capped at 1)."""
  if clip_norm <= 0:
    raise ValueError(f"clip_norm must be > 0, got {clip_norm}")

  def init(params):
    del params
    return AuthorsClipState(jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    limit = authors_clip_limit(norm, state.count, clip_norm, warmup_steps=warmup_steps,
                               initial_ratio=initial_ratio, spike_ratio=spike_ratio,
                               max_shrink=max_shrink)
    coef = jnp.minimum(limit / (norm + 1e-6), 1.0)
    updates = jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)
    return updates, AuthorsClipState(state.count + 1)

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: Mapping[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`cfg`: lr, warmup_steps, weight_decay, b1, b2, eps, clip_norm (<= 0 disables),
  clip_schedule (`authors` | `constant`; default `constant`) and the `authors` rule's
  clip_warmup_steps, clip_initial_ratio, clip_spike_ratio, clip_max_shrink."""
  schedule = learning_rate_schedule(float(cfg["lr"]), int(cfg["warmup_steps"]))
  adamw = optax.adamw(schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                      eps=float(cfg.get("eps", 1e-10)),
                      weight_decay=float(cfg.get("weight_decay", 3e-2)))
  clip = float(cfg.get("clip_norm", 0.05))
  kind = str(cfg.get("clip_schedule", "constant"))
  if kind not in CLIP_SCHEDULES:
    raise ValueError(f"optim.clip_schedule={kind!r} is not one of {', '.join(CLIP_SCHEDULES)}")
  if clip <= 0:
    return adamw, schedule
  if kind == "constant":
    return optax.chain(optax.clip_by_global_norm(clip), adamw), schedule
  clipper = clip_by_authors_schedule(
      clip, warmup_steps=int(cfg.get("clip_warmup_steps", 1000)),
      initial_ratio=float(cfg.get("clip_initial_ratio", 5.0)),
      spike_ratio=float(cfg.get("clip_spike_ratio", 5.0)),
      max_shrink=float(cfg.get("clip_max_shrink", 10.0)))
  return optax.chain(clipper, adamw), schedule


def restart_state(state):
  """`optim.restart_per_stage`: the trainer state `nnx.state((model, opt))` with its optimizer
  half (`state[1]`: the AdamW moments and counts, the schedule's and the clipping's counts,
  the optimizer's step) back at its init, the model untouched.

  Every state `make_optimizer` builds starts at zeros (tests/test_fidelity.py checks it), so
  zeros are the init: the next update runs at warm-up step 0 (lr 0), the clipping limit
  restarts its decay, and the moments restart, as a new launch of the authors' script from
  saved weights (`--transformer_path`) would. Shardings are kept.
  """
  opt = state[1]
  shardings = jax.tree.map(lambda x: x.sharding, opt)
  fresh = jax.jit(lambda t: jax.tree.map(jnp.zeros_like, t), out_shardings=shardings)(opt)
  out = jax.tree.map(lambda x: x, state)  # a new State; the model's arrays are shared
  out[1] = fresh
  return out
