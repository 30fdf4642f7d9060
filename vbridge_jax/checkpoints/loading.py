"""Reading converted components (`OUT/<name>/{config.json, params/}`) into Flax NNX modules.

The one path by which converted weights reach a model. `read_into` fills an nnx state,
abstract or live, from a component folder; `load_module` builds a component's module from
its `config.json` and fills it with `read_into`. `models.load_dit` (plain, or straight into
a mesh's shardings), `models.load_vae` and the trainer's `init_from` are these two calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
from flax import nnx

from vbridge_jax.checkpoints import io

# Shardings for `read_into`: none (the default device), one for every variable, an nnx
# state of shardings like the target's, or a function of the abstract state giving one.
Shardings = Any


def read_into(folder: str | Path, state: nnx.State, shardings: Shardings = None) -> nnx.State:
  """`state` with every variable's value read from the converted `folder/params`.

  Only the variables' paths, shapes and dtypes matter: values are cast to the state's
  dtypes as they are read (so a dtype override needs nothing else). Paths are matched as
  strings with LoRA's `base` level dropped, so a LoRA-wrapped model reads the plain
  model's parameters (leave the adapters out of `state`). Each value is read into the
  sharding that `shardings` gives, else into the sharding its value already has (a live,
  sharded target), else onto the default device; with shardings each process reads only
  the stored chunks its devices hold, so a large model is never assembled on one host.
  Damaged folders and names or shapes that differ are `io.CheckpointError`s naming them.
  """
  flat = list(nnx.to_flat_state(state))
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    given = {path: shardings for path, _ in flat}
  else:
    given = {path: s.get_value() if isinstance(s, nnx.Variable) else s
             for path, s in nnx.to_flat_state(shardings)}
  keys = [tuple(str(k) for k in path if k != "base") for path, _ in flat]
  abstract: dict[str, Any] = {}
  for key, (path, var) in zip(keys, flat):
    value = var.get_value()
    sharding = given[path] if given.get(path) is not None else getattr(value, "sharding", None)
    node = abstract
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
  loaded = dict(io.flatten(io.restore_params(Path(folder), abstract)))
  return nnx.from_flat_state([(path, var.replace(loaded[key]))
                              for key, (path, var) in zip(keys, flat)])


def load_module(path: str | Path, name: str, config_cls: Any, module_cls: Callable[..., Any],
                shardings: Shardings = None, **overrides) -> Any:
  """The converted component `name` of `path` (`OUT` or `OUT/<name>`) as a `module_cls`.

  Its config is `config_cls.from_dict(config.json, **overrides)` (run-time switches such
  as `dtype`); the module is traced abstractly (nothing is initialised) and its values
  read by `read_into` into `shardings`, which may also be a function of the abstract
  state (e.g. the shardings that logical-axis rules give on a mesh).
  """
  folder = io.find_component(Path(path), name)
  config = config_cls.from_dict(io.read_component_config(folder), **overrides)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: module_cls(config, rngs=nnx.Rngs(0))))
  if callable(shardings):
    shardings = shardings(state)
  return nnx.merge(graphdef, read_into(folder, state, shardings))
