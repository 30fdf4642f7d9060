"""Device mesh, logical-axis rules, their resolution, and directly-sharded state creation.

The mesh has four axes, `data, fsdp, context, tensor`; sizes come from the config and one
of them may be -1 (it takes the remaining devices). Model code names array dimensions with
logical axes and nothing else: parameters by `PARAM_AXES` ('embed', 'mlp', 'heads', ...),
activations by `ACTIVATION_AXES` ('activation_batch', 'activation_length', ...), as in
maxtext and maxdiffusion, so one list of rules serves both and an activation's rule never
has to give way to a parameter's (FSDP shards the parameters' 'embed' but not the
activations'). The rules are an ordered list of `(logical, mesh_axis | (mesh_axes...) |
None)` pairs. Resolution is this module's own (`logical_to_spec`), not flax's: flax maps
each name through a dict independently, whereas here a name may have several candidate
rules and the first whose mesh axes are still free in that array (and, given the shape
and mesh, divide its dimension) wins; a dimension no rule fits is replicated.

Models call `constrain(x, names)` on activations, which resolves against the rules set
with `nnx.logical_axis_rules(rules)` and the mesh set with `jax.set_mesh(mesh)`.

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
from flax.core import spmd as core_spmd
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, Any]]
Names = Sequence[str | None]
T = TypeVar("T")

# Every logical axis name the models use; a name the rules leave out is replicated.
PARAM_AXES = ("layers", "embed", "mlp", "heads", "mod", "mod_embed", "freq", "text_embed",
              "patch_in", "patch_out")
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_text_length",
                   "activation_embed", "activation_text_embed", "activation_heads",
                   "activation_kv", "activation_mlp", "activation_mod")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Parameters: FSDP over the model width, tensor parallel over FFN / attention width.
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("text_embed", "fsdp"),
    ("freq", None),
    ("patch_in", None),
    ("patch_out", None),
    ("mod", None),
    ("mod_embed", "tensor"),
    # Activations: batch over data x fsdp, video tokens over context, heads and the FFN's
    # hidden width over tensor; the model width stays whole (the batch holds fsdp).
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    ("activation_text_length", None),
    ("activation_embed", None),
    ("activation_text_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_mod", None),
)


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from JSON / ml_collections) into tuples of pairs.

  An activation name (`ACTIVATION_AXES`) the rules do not mention takes its entry in
  `DEFAULT_RULES`. So a config saved before activations had their own names (whose
  'batch', 'length', 'text_length' and 'kv' rules now name nothing) still loads, and its
  activations are sharded as the default rules sharded them then.
  """
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
  named = {name for name, _ in out}
  out += [(name, target) for name, target in DEFAULT_RULES
          if name in ACTIVATION_AXES and name not in named]
  return tuple(out)


# ---------------------------------------------------------------------------------------------
# Resolution: logical names -> PartitionSpec
# ---------------------------------------------------------------------------------------------


def mesh_axes(target) -> tuple[str, ...]:
  """A rule's target as a tuple of mesh axes (None: none)."""
  if target is None:
    return ()
  return tuple(target) if isinstance(target, (tuple, list)) else (target,)


def logical_to_spec(names: Names, rules: Rules, *, shape: Sequence[int] | None = None,
                    mesh=None) -> PartitionSpec:
  """Resolves logical names with ordered `rules`: `(logical, mesh axis | axes | None)` pairs.

  Dimensions are resolved left to right. A name may have several candidate rules; the
  first whose mesh axes are not yet used by an earlier dimension of the same array (and,
  given `shape` and `mesh`, whose total size divides that dimension) wins; when none
  qualifies the dimension is replicated rather than failing. Names without a rule, and
  `None`, are replicated; with a `mesh`, axes of size 1 are dropped.
  """
  used: set[str] = set()
  out: list = []
  for i, name in enumerate(names):
    chosen: tuple[str, ...] = ()
    for logical, target in (rules if name is not None else ()):
      if logical != name:
        continue
      axes = mesh_axes(target)
      if mesh is not None:
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if used.intersection(axes):
        continue
      if shape is not None and mesh is not None and axes:
        if shape[i] % math.prod(mesh.shape[a] for a in axes):
          continue
      chosen = axes
      break
    used.update(chosen)
    out.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
  while out and out[-1] is None:
    out.pop()
  return PartitionSpec(*out)


def logical_specs(tree, rules: Rules, mesh=None):
  """A PartitionSpec for every `nnx.Variable` in `tree` (an nnx State or module), from the
  logical names in its `out_sharding` metadata (shape-aware when `mesh` is given)."""
  def spec(v):
    names = v.get_metadata().get("out_sharding") or ()
    return v.replace(logical_to_spec(names, rules, shape=v.shape, mesh=mesh))
  return jax.tree.map(spec, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def current_spec(names: Names, shape: Sequence[int]) -> PartitionSpec | None:
  """`names` resolved by the rules and mesh in effect while tracing (those of
  `nnx.logical_axis_rules` and `jax.set_mesh`); None without rules or without a mesh."""
  rules = core_spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh is None or mesh.empty:
    return None
  return logical_to_spec(names, rules, shape=shape, mesh=mesh)


def constrain(x: jax.Array, names: Names) -> jax.Array:
  """A sharding constraint by logical names; a no-op without rules or without a mesh.

  The models are written for meshes whose axes are `AxisType.Auto` (the compiler
  propagates shardings between the constraints); on an explicit mesh the array is
  resharded instead.
  """
  spec = current_spec(names, x.shape)
  if spec is None:
    return x
  if jax.sharding.get_abstract_mesh().are_all_axes_explicit:
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


# ---------------------------------------------------------------------------------------------
# Meshes, sharded state and batches
# ---------------------------------------------------------------------------------------------


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
