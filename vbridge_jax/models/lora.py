"""LoRA adapters for the DiT's attention and FFN linears.

`apply_lora(model, rank=..., alpha=..., targets=...)` replaces the chosen `Dense` modules
in place with `LoRADense(base)`, which computes `base(x) + (alpha / rank) * x A B`. `A` is
drawn from a normal of std `1 / rank`, `B` is zero, so the wrapped model starts exactly
equal to the base. The adapters are `nnx.LoRAParam`s; train them alone with the filter
`nnx.LoRAParam` (the base `nnx.Param`s stay frozen). Blocks stacked on a leading
'layers' axis (the DiT's vmapped blocks) get stacked adapters, so `lax.scan` slices them
with the rest of the block.

Targets name linears by role: `q`, `k`, `v`, `o` (self- and cross-attention `to_q`,
`to_k`, `to_v`, `to_out`) and `ffn` (`fc1`, `fc2`).

`merge_lora(model)` undoes the wrapping for export: each `LoRADense` becomes its base
`Dense` with kernel `W + (alpha / rank) A B`, so the model has the plain parameter tree of
the base architecture (what `vbridge_jax.export` writes).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vbridge_jax.models.layers import Dense

TARGETS = {"q": ("to_q",), "k": ("to_k",), "v": ("to_v",), "o": ("to_out",), "ffn": ("fc1", "fc2")}


class LoRADense(nnx.Module):
  """A frozen `Dense` plus a low-rank update `(alpha / rank) * x @ lora_a @ lora_b`."""

  def __init__(self, base: Dense, rank: int, alpha: float, *, rngs: nnx.Rngs):
    kernel = base.kernel.get_value()
    lead, (din, dout) = kernel.shape[:-2], kernel.shape[-2:]
    names = base.kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
    lead_names, (in_name, out_name) = tuple(names[:-2]), tuple(names[-2:])
    dtype = kernel.dtype
    a = jax.random.normal(rngs.params(), lead + (din, rank), jnp.float32) / rank
    self.base = base
    self.lora_a = nnx.LoRAParam(a.astype(dtype), out_sharding=lead_names + (in_name, None),
                                eager_sharding=False)
    self.lora_b = nnx.LoRAParam(jnp.zeros(lead + (rank, dout), dtype),
                                out_sharding=lead_names + (None, out_name), eager_sharding=False)
    self.scale = float(alpha) / float(rank)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.base(x)
    dt = self.base.dtype
    h = jnp.dot(x.astype(dt), self.lora_a[...].astype(dt), preferred_element_type=jnp.float32)
    d = jnp.dot(h.astype(dt), self.lora_b[...].astype(dt), preferred_element_type=jnp.float32)
    return (y.astype(jnp.float32) + self.scale * d).astype(y.dtype)


def _target_names(targets: Iterable[str]) -> set[str]:
  names: set[str] = set()
  for t in targets:
    if t not in TARGETS:
      raise ValueError(f"LoRA target {t!r} is not one of {', '.join(TARGETS)}")
    names.update(TARGETS[t])
  return names


def apply_lora(model: nnx.Module, *, rank: int, alpha: float,
               targets: Sequence[str] = ("q", "k", "v", "o", "ffn"), seed: int = 0) -> int:
  """Wraps every target `Dense` of `model` in a `LoRADense`, in place; returns the count."""
  if rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  names = _target_names(targets)
  rngs = nnx.Rngs(params=seed)
  found = _find(model, lambda path, m: isinstance(m, Dense) and path[-1] in names)
  if not found:
    raise ValueError(f"no linear named {sorted(names)} found for LoRA in {type(model).__name__}")
  for parent, attr, module in found:
    setattr(parent, attr, LoRADense(module, rank, alpha, rngs=rngs))
  return len(found)


def _find(model: nnx.Module, pred) -> list[tuple[nnx.Module, str, nnx.Module]]:
  """(parent, attribute, module) for every submodule with `pred(path, module)`."""
  found = []
  for path, module in nnx.iter_graph(model):
    if not path or not pred(path, module):
      continue
    parent = model
    for key in path[:-1]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    found.append((parent, path[-1], module))
  return found


def merge_lora(model: nnx.Module) -> int:
  """Folds every `LoRADense` of `model` into its base `Dense`, in place; returns the count.

  The kernel becomes `W + (alpha / rank) * A @ B`, with the product and the sum in float32
  (HIGHEST precision) and the result cast back to the kernel's dtype; the bias is unchanged.
  The merged model computes the same function as the wrapped one, up to float rounding.
  """
  found = _find(model, lambda path, m: isinstance(m, LoRADense))
  for parent, attr, module in found:
    w = module.base.kernel.get_value()
    a = jnp.asarray(module.lora_a.get_value(), jnp.float32)
    b = jnp.asarray(module.lora_b.get_value(), jnp.float32)
    delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    module.base.kernel.set_value((w.astype(jnp.float32) + module.scale * delta).astype(w.dtype))
    setattr(parent, attr, module.base)
  return len(found)

