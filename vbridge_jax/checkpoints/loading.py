"""Reading converted components (`OUT/<name>/{config.json, params/}`) into Flax NNX modules.

The one path by which converted weights reach a model. `read_into` fills an nnx state,
abstract or live, from a component folder; `load_module` builds a component's module from
its `config.json` and fills it with `read_into`. `load_dit` (plain, or straight into a
mesh's shardings), `load_vae` and the trainer's `init_from` are these two calls;
`from_params` builds a VAE from an in-memory converter-style tree (the parity tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vbridge_jax.checkpoints import io
from vbridge_jax.models import pixel_codec
from vbridge_jax.models.configs import DiTConfig, VAEConfig
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.models.wan_vae import WanVAE
from vbridge_jax.parallel import sharding as sh

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


def load_dit(path: str | Path, mesh=None, rules=None, **overrides) -> WanDiT:
  """Loads a converted DiT from `OUT` or `OUT/dit` (written by convert/wan_to_jax.py).

  `overrides` set run-time switches (`dtype`, `param_dtype`, `scan_layers`, `remat`,
  `attention`). Given a `mesh`, the parameters are read straight into the shardings that
  the logical-axis `rules` (default `sharding.DEFAULT_RULES`) give them there: each
  process reads only the chunks its devices hold, and the model is never whole on one host.
  """
  shardings = None
  if mesh is not None:
    rules = sh.rules_from_config(rules)
    shardings = lambda state: sh.state_shardings(state, mesh, rules)
  return load_module(path, "dit", DiTConfig, WanDiT, shardings, **overrides)


def abstract_params(model: nnx.Module) -> dict:
  """The parameter tree as the converter writes it: nested dicts with string keys."""
  _, state = nnx.split(model)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                      io.string_keys(state.to_pure_dict()))


def from_params(config: VAEConfig, params: dict) -> WanVAE:
  """A `WanVAE` holding `params` (a converter-style tree), built without random init."""
  abstract = nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  return nnx.merge(graphdef, _filled(state, params))


def _filled(state, params: dict):
  pure = state.to_pure_dict()
  cast = jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), pure, io.rekey_like(pure, params))
  nnx.replace_by_pure_dict(state, cast)
  return state


def load_vae(path: str | Path, sharding: Any = None, **overrides) -> WanVAE:
  """Loads the codec of a model folder `OUT` or `OUT/vae`: a converted VAE (written by
  convert/wan_to_jax.py), or the parameter-free `PixelCodec` when `vae/config.json` has
  `"_class_name": "PixelCodec"` (models/pixel_codec.py).

  `overrides` set run-time switches (`dtype`, `param_dtype`, `precision`, `attn_block`).
  `sharding` (e.g. replicated over a mesh that spans processes): every parameter is read
  straight into it, as a multi-process restore needs.
  """
  pixel = pixel_codec.read_config(path)
  if pixel is not None:
    return pixel_codec.PixelCodec(pixel)
  return load_module(path, "vae", VAEConfig, WanVAE, sharding, **overrides)
