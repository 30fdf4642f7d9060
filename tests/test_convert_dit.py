"""DiT conversion from both PyTorch layouts, the 5B parameter tree, and bad checkpoints."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from tests.dit_reference import diffusers_kwargs, inputs, make_torch_dit, max_rel_err, torch_forward, wan_config_json
from vbridge_jax.checkpoints import convert_path, load_dit
from vbridge_jax.checkpoints.dit import conversion_plan, inverse_key_map
from vbridge_jax.models import DiTConfig, WanDiT
from vbridge_jax.utils.errors import CheckpointError

REPO = Path(__file__).resolve().parent.parent
CFG = DiTConfig.tiny(num_layers=3, text_len=512)  # diffusers configs carry no text_len: 512


@pytest.fixture(scope="module")
def ref():
  return make_torch_dit(CFG, seed=11)


def write_wan_layout(model, cfg: DiTConfig, folder: Path, shards: int = 2, edit=None) -> Path:
  """The original Wan2.2 layout: config.json + sharded safetensors with an index."""
  folder.mkdir(parents=True, exist_ok=True)
  names = inverse_key_map(cfg.num_layers)
  sd = {names[k]: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  if edit:
    edit(sd)
  keys = sorted(sd)
  weight_map = {}
  for s in range(shards):
    fname = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: sd[k] for k in keys[s::shards]}
    save_file(part, str(folder / fname))
    weight_map.update({k: fname for k in part})
  (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  (folder / "config.json").write_text(json.dumps(wan_config_json(cfg)))
  return folder


def _check_loaded(dit, ref, cfg=CFG):
  x, t, ctx = inputs(cfg, per_token=True)
  want = torch_forward(ref, x, t, ctx, cfg.text_len)
  assert max_rel_err(nnx.jit(lambda m, *a: m(*a))(dit, x, t, ctx), want) <= 1e-4


def test_wan_layout_through_cli(ref, tmp_path):
  src = write_wan_layout(ref, CFG, tmp_path / "Wan2.2-TI2V-5B")
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, str(REPO / "convert" / "wan_to_jax.py"), "--src", str(src),
                         "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "dit: wan layout" in proc.stdout
  _check_loaded(load_dit(out), ref)
  _check_loaded(load_dit(out / "dit", scan_layers=False), ref)


def test_diffusers_repo_root(ref, tmp_path):
  """A diffusers repository root: transformer/ is found and converted (sharded save)."""
  ref.save_pretrained(tmp_path / "repo" / "transformer", max_shard_size="200KB")
  assert list((tmp_path / "repo" / "transformer").glob("*.index.json"))
  written = convert_path(tmp_path / "repo", tmp_path / "out", log=lambda _: None)
  assert [p.name for p in written] == ["dit"]
  _check_loaded(load_dit(tmp_path / "out"), ref)


def test_bfloat16_storage(ref, tmp_path):
  ref.save_pretrained(tmp_path / "transformer")
  convert_path(tmp_path / "transformer", tmp_path / "out", dtype="bfloat16", log=lambda _: None)
  dit = load_dit(tmp_path / "out")
  kernel = nnx.state(dit)["blocks"]["attn1"]["to_q"]["kernel"][...]
  assert kernel.dtype == jax.numpy.bfloat16
  x, t, ctx = inputs(CFG)
  want = torch_forward(ref, x, t, ctx, CFG.text_len)
  assert max_rel_err(nnx.jit(lambda m, *a: m(*a))(dit, x, t, ctx), want) <= 3e-2


def test_ti2v_5b_tree_matches_reference():
  """eval_shape of ti2v_5b(): every tensor's shape and the total count equal diffusers' model."""
  cfg = DiTConfig.ti2v_5b()
  real_config = dict(patch_size=[1, 2, 2], num_attention_heads=24, attention_head_dim=128,
                     in_channels=48, out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336,
                     num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                     rope_max_seq_len=1024)
  assert DiTConfig.from_diffusers(real_config) == cfg
  assert diffusers_kwargs(cfg) == real_config | {"patch_size": (1, 2, 2)}
  from diffusers import WanTransformer3DModel
  with torch.device("meta"):
    ref = WanTransformer3DModel(**real_config)
  ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  ref_count = sum(math.prod(s) for s in ref_shapes.values())

  abstract = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  ours = {path: tuple(a.shape) for path, a in
          jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(abstract)))[0]}
  ours = {tuple(str(getattr(k, "key", k)) for k in path): s for path, s in ours.items()}
  assert sum(math.prod(s) for s in ours.values()) == ref_count
  assert ref_count == 4_999_787_712

  plan = conversion_plan(cfg, "diffusers")
  assert set(plan) == set(ours)
  assert {k for r in plan.values() for k in r.keys} == set(ref_shapes)
  for target, rule in plan.items():
    src_shape = ref_shapes[rule.keys[0]]
    assert src_shape == rule.shape, rule.keys[0]
    probe = np.broadcast_to(np.zeros((), np.float32), src_shape)
    got = (rule.fn(probe) if rule.fn else probe).shape
    assert ((len(rule.keys),) + got if rule.stacked else got) == ours[target], target


# -------------------------------------------------------------------------------------------
# Bad checkpoints: a named one-line error, exit 1, nothing written.
# -------------------------------------------------------------------------------------------


def _drop(key):
  return lambda sd: sd.pop(key)


def _add(key):
  return lambda sd: sd.__setitem__(key, torch.zeros(3))


def _reshape(key):
  return lambda sd: sd.__setitem__(key, torch.zeros(5, 7))


BAD = {
    "missing": (_drop("blocks.1.cross_attn.norm_k.weight"), "missing tensor.*blocks.1.cross_attn.norm_k.weight"),
    "unexpected": (_add("blocks.0.extra.weight"), "unexpected tensor.*blocks.0.extra.weight"),
    "shape": (_reshape("head.head.weight"), r"'head.head.weight' has shape \(5, 7\)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tensors_named(ref, tmp_path, case):
  edit, pattern = BAD[case]
  src = write_wan_layout(ref, CFG, tmp_path / "src", edit=edit)
  out = tmp_path / "out"
  with pytest.raises(CheckpointError, match=pattern):
    convert_path(src, out, log=lambda _: None)
  assert not out.exists()  # no dit/, no staging folder, no empty --out (issue 16.10)


def test_bad_config_truncated_file_and_cli_exit(ref, tmp_path):
  src = write_wan_layout(ref, CFG, tmp_path / "src")
  cfg = json.loads((src / "config.json").read_text())
  del cfg["eps"]
  (src / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"config.json: .*lacks eps"):
    convert_path(src, tmp_path / "out", log=lambda _: None)

  src2 = write_wan_layout(ref, CFG, tmp_path / "src2", shards=1)
  shard = next(src2.glob("*.safetensors"))
  shard.write_bytes(shard.read_bytes()[:-100])
  out = tmp_path / "out2"
  out.mkdir()
  (out / "dit").mkdir()
  (out / "dit" / "keep.txt").write_text("an earlier conversion")
  proc = subprocess.run([sys.executable, str(REPO / "convert" / "wan_to_jax.py"), "--src", str(src2),
                         "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and shard.name in lines[0] and "truncated" in lines[0], proc.stderr
  assert (out / "dit" / "keep.txt").read_text() == "an earlier conversion"
  assert sorted(p.name for p in out.iterdir()) == ["dit"]


def test_nothing_to_convert(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="holds no Wan2.2 component"):
    convert_path(tmp_path / "empty", tmp_path / "out", log=lambda _: None)
  with pytest.raises(CheckpointError, match="no converted 'dit' component"):
    load_dit(tmp_path / "empty")


def test_restore_params_sharded_and_named_mismatches(tmp_path, monkeypatch):
  """`restore_params` reads straight into shardings and names any parameter that differs."""
  import orbax.checkpoint as ocp

  from vbridge_jax.checkpoints import io
  monkeypatch.setattr(io, "CHUNK_BYTES", 64)  # 16 float32s: the stored tensor is chunked
  rng = np.random.default_rng(0)
  params = {"blocks": {"w": rng.standard_normal((8, 6)).astype(np.float32)},
            "bias": rng.standard_normal(4).astype(np.float32)}
  want = {"blocks": {"w": params["blocks"]["w"].copy()}, "bias": params["bias"].copy()}
  io.write_component(tmp_path, "dit", {}, params)
  folder = tmp_path / "dit"
  with ocp.StandardCheckpointer() as ck:
    stored = ck.metadata(folder / "params").item_metadata.tree
  assert math.prod(stored["blocks"]["w"].storage.chunk_shape) <= 16

  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), devices=jax.devices()[:8])
  sharded = jax.NamedSharding(mesh, jax.P("fsdp", "tensor"))
  abstract = {"blocks": {"w": jax.ShapeDtypeStruct((8, 6), jax.numpy.bfloat16, sharding=sharded)},
              "bias": jax.ShapeDtypeStruct((4,), np.float32)}
  got = io.restore_params(folder, abstract)
  assert got["blocks"]["w"].sharding == sharded and got["blocks"]["w"].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(np.asarray(got["blocks"]["w"], np.float32),
                                want["blocks"]["w"].astype(jax.numpy.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(got["bias"]), want["bias"])

  cases = [({"blocks": abstract["blocks"]}, r"holds parameter\(s\) 'bias' the model does not have"),
           (abstract | {"extra": abstract["bias"]}, r"lacks parameter\(s\) 'extra' of the model"),
           (abstract | {"bias": jax.ShapeDtypeStruct((5,), np.float32)},
            r"parameter bias has shape \(4,\), the model \(5,\)")]
  for tree, pattern in cases:
    with pytest.raises(CheckpointError, match=pattern):
      io.restore_params(folder, tree)
