"""Mesh construction, logical-axis resolution and directly-sharded state creation."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vbridge_jax.parallel import sharding as sh


class _Toy(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    self.up = nnx.Linear(16, 32, kernel_init=init, rngs=rngs)
    self.table = nnx.Param(jnp.ones((6, 16)), out_sharding=("mod", "embed"))
    self.odd = nnx.Param(jnp.ones((3, 16)), out_sharding=("embed", "mlp"))  # 3 not divisible


def test_mesh_shape_fills_and_rejects():
  assert sh.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1, 1)
  assert sh.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 1, 2)
  with pytest.raises(ValueError, match="only one"):
    sh.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sh.mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sh.mesh_shape({"data": 4}, 8)
  mesh = sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}


def test_logical_to_spec_never_reuses_an_axis_and_respects_divisibility():
  mesh = sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sh.DEFAULT_RULES
  # Activations have their own names: the batch takes data+fsdp, the width stays whole
  # although the parameters' 'embed' is on fsdp.
  stream = ("activation_batch", "activation_length", "activation_embed")
  assert sh.logical_to_spec(stream, rules, shape=(4, 8, 16), mesh=mesh) == P(("data", "fsdp"))
  # A batch that data x fsdp does not divide is replicated, and the width still stays whole.
  assert sh.logical_to_spec(stream, rules, shape=(1, 8, 16), mesh=mesh) == P()
  # A name reused within one array: its second dimension takes no axis already taken.
  assert sh.logical_to_spec(("embed", "embed"), rules, shape=(16, 16), mesh=mesh) == P("fsdp")
  assert sh.logical_to_spec(("embed", "mlp"), rules, shape=(16, 32), mesh=mesh) == P("fsdp", "tensor")
  assert sh.logical_to_spec(("embed", "mlp"), rules, shape=(3, 32), mesh=mesh) == P(None, "tensor")
  # A second candidate rule is used when the first one's axis is taken.
  rules2 = (("embed", "fsdp"), ("mlp", "fsdp"), ("mlp", "tensor"))
  assert sh.logical_to_spec(("embed", "mlp"), rules2) == P("fsdp", "tensor")
  with pytest.raises(ValueError, match="mesh axis"):
    sh.rules_from_config([("embed", "model")])
  assert sh.rules_from_config([["embed", ["data", "fsdp"]]])[0] == ("embed", ("data", "fsdp"))


def test_rules_name_every_axis_and_old_configs_get_the_activation_defaults():
  """Every logical name has a default rule. A config saved before activations had their
  own names (its rule list as the trainer wrote it to config.json) gets the default
  activation rules, and resolves parameters and activations as the defaults do."""
  names = [n for n, _ in sh.DEFAULT_RULES]
  assert sorted(names) == sorted(sh.PARAM_AXES + sh.ACTIVATION_AXES)
  old = [["batch", ["data", "fsdp"]], ["length", "context"], ["text_length", None],
         ["layers", None], ["embed", "fsdp"], ["mlp", "tensor"], ["heads", "tensor"],
         ["kv", None], ["text_embed", "fsdp"], ["freq", None], ["patch_in", None],
         ["patch_out", None], ["mod", None], ["mod_embed", "tensor"]]
  rules = sh.rules_from_config(old)
  assert dict(rules)["embed"] == "fsdp"
  assert {n: t for n, t in rules if n in sh.ACTIVATION_AXES} == {
      n: t for n, t in sh.DEFAULT_RULES if n in sh.ACTIVATION_AXES}
  # An activation rule the config does give is kept (and not doubled by the default).
  custom = sh.rules_from_config([["activation_batch", "data"]])
  assert [t for n, t in custom if n == "activation_batch"] == ["data"]


def test_create_sharded_model_and_optimizer_are_born_sharded():
  mesh = sh.create_mesh({"fsdp": 4, "tensor": 2})

  def build():
    model = _Toy(nnx.Rngs(0))
    return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

  model, opt = sh.create_sharded(build, mesh, sh.DEFAULT_RULES)
  k = model.up.kernel.get_value()
  assert k.sharding.spec == P("fsdp", "tensor")
  assert k.addressable_shards[0].data.shape == (4, 16)
  assert model.table.get_value().sharding.spec == P(None, "fsdp")
  assert model.odd.get_value().sharding.spec == P(None, "tensor")
  mu = opt.opt_state[0].mu["up"]["kernel"].get_value()
  assert mu.sharding.spec == P("fsdp", "tensor")
  # Same values as an unsharded construction.
  with nnx.use_eager_sharding(False):
    ref = _Toy(nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(k), np.asarray(ref.up.kernel.get_value()))


def test_shard_batch_splits_leading_axis():
  mesh = sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  b = sh.shard_batch({"clip": np.zeros((4, 3, 2)), "category": np.arange(4)}, mesh)
  assert b["clip"].sharding.spec == P(("data", "fsdp"), None, None)
  assert b["clip"].addressable_shards[0].data.shape == (1, 3, 2)
  assert sh.batch_shards(mesh) == 4
  assert not sh.maybe_initialize_distributed({"enabled": False})
