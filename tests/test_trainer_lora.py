"""LoRA adapters on the tiny DiT: exact start, stacked per layer, only adapters train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vbridge_jax.models import lora
from vbridge_jax.models.configs import DiTConfig
from vbridge_jax.models.wan_dit import WanDiT
from vbridge_jax.parallel import sharding as sh

pytestmark = pytest.mark.usefixtures("low_compile_effort")


def _inputs():
  x = jax.random.normal(jax.random.key(1), (2, 2, 4, 4, 8))
  return x, jnp.array([500.0, 100.0]), jax.random.normal(jax.random.key(2), (2, 4, 32))


def test_lora_starts_at_base_and_trains_only_adapters():
  model = WanDiT(DiTConfig.tiny(), rngs=nnx.Rngs(0))
  x, t, ctx = _inputs()
  base_out = model(x, t, ctx)
  n = lora.apply_lora(model, rank=4, alpha=8.0, targets=("q", "k", "v", "o", "ffn"))
  assert n == 10  # self/cross q, k, v, o + fc1, fc2 (each stacked over 2 layers)
  a = model.blocks.attn1.to_q.lora_a.get_value()
  assert a.shape == (2, 64, 4) and model.blocks.ffn.fc1.lora_b.get_value().shape == (2, 4, 128)
  assert model.blocks.attn1.to_q.lora_a.get_metadata()["out_sharding"] == ("layers", "embed", None)
  np.testing.assert_array_equal(np.asarray(model(x, t, ctx)), np.asarray(base_out))

  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)
  base_before = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  grads = nnx.grad(lambda m: jnp.mean(m(x, t, ctx) ** 2),
                   argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
  opt.update(model, grads)
  base_after = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  for u, v in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after)):
    np.testing.assert_array_equal(u, v)
  assert not np.allclose(np.asarray(model(x, t, ctx)), np.asarray(base_out))
  with pytest.raises(ValueError, match="LoRA target"):
    lora.apply_lora(WanDiT(DiTConfig.tiny(), rngs=nnx.Rngs(0)), rank=2, alpha=2, targets=("x",))


def test_lora_model_is_born_sharded():
  mesh = sh.create_mesh({"fsdp": 4, "tensor": 2})

  def build():
    m = WanDiT(DiTConfig.tiny(), rngs=nnx.Rngs(0))
    lora.apply_lora(m, rank=4, alpha=4.0, targets=("q", "ffn"))
    return m

  m = sh.create_sharded(build, mesh, sh.DEFAULT_RULES)
  spec = m.blocks.attn1.to_q.lora_a.get_value().sharding.spec
  assert spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert m.blocks.ffn.fc1.lora_b.get_value().sharding.spec == jax.sharding.PartitionSpec(
      None, None, "tensor")
