"""Device mesh, logical-axis rules and directly-sharded state creation.

The mesh has four axes, `data, fsdp, context, tensor`; sizes come from the config and one
of them may be -1 (it takes the remaining devices). Model code names array dimensions
with logical axes ('embed', 'mlp', 'heads', 'batch', 'length', ...); the config's rules
map each logical name to mesh axes. The rules are an ordered list of
`(logical, mesh_axis | (mesh_axes...) | None)` pairs; a logical name may appear several
times, and the first candidate whose mesh axes are still free in that array (and divide
its dimension, when the shape is known) wins, as in flax linen and maxtext. So the
activation `('batch', 'length', 'embed')` never uses `fsdp` twice.

State is never materialised on one device: `create_sharded` traces the constructor once
with `nnx.eval_shape`, derives a `NamedSharding` per variable and runs the constructor
under `jax.jit` with those `out_shardings`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vbridge_jax.models.layers import logical_specs, logical_to_spec, mesh_axes  # noqa: F401 (re-exported)

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, Any]]
T = TypeVar("T")

# Parameters: FSDP over the model width, tensor parallel over FFN / attention width.
# Activations: batch over data x fsdp, video tokens over context, heads over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("text_length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("text_embed", "fsdp"),
    ("freq", None),
    ("patch_in", None),
    ("patch_out", None),
    ("mod", None),
    ("mod_embed", "tensor"),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves `{axis: size}` (one size may be -1) into a shape over `MESH_AXES`."""
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the axes are {', '.join(MESH_AXES)}")
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  fill = [i for i, s in enumerate(shape) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
  known = math.prod(s for s in shape if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide into mesh {dict(zip(MESH_AXES, shape))}")
    shape[fill[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                     f"{num_devices} are present")
  return tuple(shape)


def create_mesh(sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A `data, fsdp, context, tensor` mesh (auto axes) over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(dict(sizes), len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from JSON / ml_collections) into tuples of pairs."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"a logical-axis rule is (logical_name, mesh_axes), got {rule!r}")
    target = rule[1]
    if isinstance(target, (list, tuple)):
      target = tuple(target)
      for t in target:
        if t not in MESH_AXES:
          raise ValueError(f"rule {rule!r} names mesh axis {t!r}; axes: {', '.join(MESH_AXES)}")
    elif target is not None and target not in MESH_AXES:
      raise ValueError(f"rule {rule!r} names mesh axis {target!r}; axes: {', '.join(MESH_AXES)}")
    out.append((rule[0], target))
  return tuple(out)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """`NamedSharding`s for an (abstract) nnx state: logical names on each variable -> mesh."""
  def one(x):
    if isinstance(x, nnx.Variable):
      return x.replace(NamedSharding(mesh, x.get_value()))
    if hasattr(x, "shape"):
      return NamedSharding(mesh, PartitionSpec())
    return x
  specs = logical_specs(abstract_state, rules, mesh=mesh)
  return jax.tree.map(one, specs, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(constructor: Callable[[], T], mesh: Mesh, rules: Rules) -> T:
  """Runs `constructor()` (returning nnx objects) with every array born sharded.

  The constructor is traced once abstractly to read the logical names, then jitted with
  `out_shardings`; no device ever holds a full replica of a sharded variable.
  """
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(constructor)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    build = jax.jit(lambda: nnx.state(constructor()), out_shardings=shardings)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      state = build()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis over `data x fsdp` (size-1 axes dropped), the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
  lead = None if not axes else axes[0] if len(axes) == 1 else axes
  return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global arrays sharded over `data x fsdp`."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
  return out


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-process) global array, as numpy on every process.

  Every process must call it (a collective when there are several).
  """
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicated(mesh: Mesh, value: Any) -> jax.Array:
  """A host value (the same on every process) as a global array replicated over `mesh`."""
  return jax.device_put(np.asarray(value), NamedSharding(mesh, PartitionSpec()))


def maybe_initialize_distributed(cfg: Mapping[str, Any] | None = None) -> bool:
  """`jax.distributed.initialize` when the config or environment asks for it.

  `cfg` may hold `enabled` (`auto`: when `JAX_COORDINATOR_ADDRESS` is set | `on` | `off`,
  or a bool), `coordinator_address`, `num_processes`, `process_id` (empty / 0 / -1 leave
  them to JAX's cluster auto-detection). Returns whether initialisation ran. Must run
  before any other JAX call.
  """
  cfg = dict(cfg or {})
  enabled = cfg.get("enabled", "auto")
  if enabled in (None, "auto"):
    enabled = bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
  elif isinstance(enabled, str):
    if enabled not in ("on", "off"):
      raise ValueError(f"distributed.enabled={enabled!r} is not one of auto, on, off")
    enabled = enabled == "on"
  if not enabled:
    return False
  kwargs = {}
  if cfg.get("coordinator_address"):
    kwargs["coordinator_address"] = cfg["coordinator_address"]
  if cfg.get("num_processes", 0) and int(cfg["num_processes"]) > 0:
    kwargs["num_processes"] = int(cfg["num_processes"])
  if cfg.get("process_id") is not None and int(cfg["process_id"]) >= 0:
    kwargs["process_id"] = int(cfg["process_id"])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True


def activation_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
  """One mesh target per logical name, for `nnx.logical_axis_rules` around tracing.

  flax resolves names one by one (`from_sharding_rules`), so a name may not reuse the
  batch axes ('embed' -> fsdp would collide with 'batch' -> (data, fsdp) in
  `('batch', 'length', 'embed')`). Each non-batch name takes its first candidate that
  avoids the batch axes; the first 'batch' rule wins. Every name gets an entry (None
  replicates), so no logical name leaks through as a mesh axis.
  """
  batch = next((mesh_axes(t) for n, t in rules if n == "batch"), ())
  out: dict[str, Any] = {}
  for name, target in rules:
    if name in out:
      continue
    if name != "batch" and set(mesh_axes(target)) & set(batch):
      if not any(n == name and not set(mesh_axes(t)) & set(batch) for n, t in rules):
        out[name] = None
      continue
    out[name] = target
  return tuple(out.items())
