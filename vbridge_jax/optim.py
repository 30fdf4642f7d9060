"""The optimizer: AdamW with the paper's defaults, linear warm-up then constant, clipping.

V-Bridge (Table 7): lr 2e-5 constant after 100 warm-up steps, weight decay 3e-2, eps 1e-10,
max gradient norm 0.05. The warm-up is diffusers' `constant_with_warmup`: lr * step /
warmup for step < warmup, so the first update uses lr 0.
"""

from __future__ import annotations

from typing import Any, Mapping

import optax


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


def make_optimizer(cfg: Mapping[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`cfg`: lr, warmup_steps, weight_decay, b1, b2, eps, clip_norm (<= 0 disables)."""
  schedule = learning_rate_schedule(float(cfg["lr"]), int(cfg["warmup_steps"]))
  adamw = optax.adamw(schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                      eps=float(cfg.get("eps", 1e-10)),
                      weight_decay=float(cfg.get("weight_decay", 3e-2)))
  clip = float(cfg.get("clip_norm", 0.05))
  tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
  return tx, schedule
