"""`python -m vbridge_jax.export`: a trained tiny LoRA run as a model folder and as PyTorch.

One tiny LoRA run (3 steps, module-scoped) is exported in every format. Checked: the `jax`
export loads with `load_dit`/`load_vae`/`read_model_info` and computes the trained (unmerged)
function; exporting to the Wan2.2 and diffusers layouts and converting back gives the same
parameters bit for bit; diffusers' own `WanTransformer3DModel.from_pretrained` on the
`diffusers` export matches the JAX model; a further fine-tune starts from the export with
`init_from`; bad requests are one-line errors that leave nothing behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tests.dit_reference import inputs, max_rel_err, torch_forward
from vbridge_jax.checkpoints import convert_path, load_dit, load_vae
from vbridge_jax.checkpoints.model_info import read_model_info
from vbridge_jax.configs import curriculum
from vbridge_jax.training import export, setup, trainer

REPO = Path(__file__).resolve().parent.parent


def _tiny_config(data: Path):
  c = curriculum.get_config("tiny_wan")
  c.data.source = str(data)
  c.data.balance = False
  c.stages = "32"
  c.total_steps = 3
  c.log_every = 1
  c.progress = False
  c.samples.every_steps = -1
  c.checkpoint.every_steps = 2
  c.num_devices = 4
  c.compiler_options = {"xla_backend_optimization_level": 0}
  return c


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A 3-step tiny LoRA run with checkpoints at steps 2 and 3 (about 30 s)."""
  from vbridge_jax.data import fewshot
  old = jax.config.jax_exec_time_optimization_effort
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  root = tmp_path_factory.mktemp("export")
  fewshot.build(root / "demo", per_category=1, size=64, categories=("Blur", "Noise"))
  c = _tiny_config(root / "demo")
  c.finetune = "lora"
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.optim.lr = 1e-2  # adapters far enough from zero that merging them is visible
  c.optim.warmup_steps = 1
  trainer.train_and_evaluate(c, str(root / "run"))
  yield root / "run"
  jax.config.update("jax_exec_time_optimization_effort", old)


@pytest.fixture(scope="module")
def jax_export(lora_run):
  return export.export_run(lora_run, lora_run.parent / "model", log=lambda _: None)


def _params(dit) -> dict:
  return {"/".join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(dit))}


def _forward(dit, cfg):
  x, t, ctx = inputs(cfg, per_token=True)
  return np.asarray(nnx.jit(lambda m, *a: m(*a))(dit, x, t, ctx))


def test_jax_export_is_the_trained_model(lora_run, jax_export):
  assert sorted(p.name for p in jax_export.iterdir()) == ["dit", "model.json", "vae"]
  assert read_model_info(jax_export).frames == 5 and read_model_info(jax_export).codec == "wan22"
  assert read_model_info(jax_export).evaluated_with is None  # the run has no held-out evaluation
  dit = load_dit(jax_export)
  merged, config, step = export.load_run_model(lora_run)
  assert step == 3 and config.finetune == "lora"
  want = _params(merged)
  got = _params(dit)
  assert got.keys() == want.keys() and not any("lora" in k or "base" in k for k in got)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # The export computes the trained function: the base plus its adapters, unmerged.
  trained, _, _ = export.load_run_model(lora_run, merge=False)
  base_only = _forward(_without_adapters(trained), dit.config)
  ref = _forward(trained, dit.config)
  out = _forward(dit, dit.config)
  assert max_rel_err(out, ref) <= 1e-5
  assert max_rel_err(base_only, ref) > 1e-3  # the adapters matter, so the check has teeth

  # The VAE is the random one the run trained with, redrawn from its seed.
  vae = load_vae(jax_export)
  c = export.read_run_config(lora_run)
  ref_vae = setup.random_vae(setup.vae_config(c), int(c.seed) + 2)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(vae)), nnx.to_flat_state(nnx.state(ref_vae))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))

  # --step picks an earlier checkpoint.
  early = export.export_run(lora_run, lora_run.parent / "model_step2", step=2, log=lambda _: None)
  assert not np.array_equal(_params(load_dit(early))["blocks/attn1/to_q/kernel"],
                            want["blocks/attn1/to_q/kernel"])


def _without_adapters(model):
  """A copy of a LoRA model with every `lora_b` zeroed (the frozen base alone)."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x, state)
  flat = [(p, v.replace(np.zeros_like(v.get_value())) if p[-1] == "lora_b" else v)
          for p, v in nnx.to_flat_state(state)]
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.mark.parametrize("fmt", ["wan", "diffusers"])
def test_pytorch_layout_converts_back_bit_identical(lora_run, jax_export, tmp_path, fmt):
  out = export.export_run(lora_run, tmp_path / fmt, fmt=fmt, max_shard_bytes=100_000,
                          log=lambda _: None)
  folder = out / "transformer" if fmt == "diffusers" else out
  shards = sorted(p.name for p in folder.glob("*.safetensors"))
  assert len(shards) > 1 and (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
  meta = json.loads((out / "model.json").read_text())
  (out / "model.json").write_text(json.dumps(meta | {"frames": 9}))  # carried over by convert
  back = tmp_path / f"{fmt}_back"
  if fmt == "wan":  # through the command line
    proc = subprocess.run([sys.executable, str(REPO / "convert" / "wan_to_jax.py"), "--src", str(out),
                           "--out", str(back)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dit: wan layout" in proc.stdout
  else:
    convert_path(out, back, log=lambda _: None)
  assert read_model_info(back).frames == 9
  want, got = _params(load_dit(jax_export)), _params(load_dit(back))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_diffusers_from_pretrained_matches_jax(lora_run, jax_export, tmp_path):
  from diffusers import WanTransformer3DModel
  out = export.export_run(lora_run, tmp_path / "diffusers", fmt="diffusers", log=lambda _: None)
  ref = WanTransformer3DModel.from_pretrained(out / "transformer").eval()
  dit = load_dit(jax_export)
  x, t, ctx = inputs(dit.config, per_token=True)
  want = torch_forward(ref, x, t, ctx, dit.config.text_len)
  assert max_rel_err(_forward(dit, dit.config), want) <= 1e-4

  bf16 = export.export_run(lora_run, tmp_path / "bf16", fmt="diffusers", dtype="bfloat16",
                           log=lambda _: None)
  header = (bf16 / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
  assert b'"BF16"' in header[:20000] and b'"F32"' not in header[:20000]


def test_converter_records_frames(jax_export, tmp_path):
  from vbridge_jax.utils.errors import CheckpointError
  src = tmp_path / "src"
  export.export_run(jax_export.parent / "run", src, fmt="diffusers", log=lambda _: None)
  (src / "model.json").unlink()
  convert_path(src, tmp_path / "a", log=lambda _: None)
  assert read_model_info(tmp_path / "a").frames == 5  # the released checkpoint's default
  convert_path(src, tmp_path / "b", frames=9, log=lambda _: None)
  assert json.loads((tmp_path / "b" / "model.json").read_text()) == {"frames": 9, "codec": "wan22"}
  with pytest.raises(CheckpointError, match="--frames 4"):
    convert_path(src, tmp_path / "c", frames=4, log=lambda _: None)


def test_bad_requests(lora_run, jax_export, tmp_path):
  quiet = dict(log=lambda _: None)
  cases = [
      (lambda: export.export_run(tmp_path, tmp_path / "m", **quiet), "config.json: not found"),
      (lambda: export.export_run(lora_run, tmp_path / "m", step=7, **quiet),
       "no checkpoint at step 7 \\(have 2, 3\\)"),
      (lambda: export.export_run(lora_run, tmp_path / "m", fmt="onnx", **quiet), "--format 'onnx'"),
      (lambda: export.export_run(lora_run, tmp_path / "m", dtype="float16", **quiet), "--dtype"),
      (lambda: export.export_run(lora_run, lora_run / "model", **quiet), "overlaps the run"),
      (lambda: export.export_run(lora_run, lora_run.parent, **quiet), "overlaps the run"),
      (lambda: export.export_run(lora_run, jax_export, **quiet), "exists; pass --overwrite"),
  ]
  for fn, pattern in cases:
    with pytest.raises(export.ExportError, match=pattern):
      fn()
  assert not (lora_run / "model").exists() and not (tmp_path / "m").exists()
  assert not [p for p in lora_run.parent.iterdir() if p.name.startswith(".")]  # no staging left

  proc = subprocess.run([sys.executable, "-m", "vbridge_jax.export", "--workdir", str(lora_run),
                         "--out", str(tmp_path / "m"), "--step", "7"],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "no checkpoint at step 7" in lines[0], proc.stderr


@pytest.mark.usefixtures("low_compile_effort")
def test_export_trains_further_with_init_from(lora_run, jax_export, tmp_path):
  """The drift corrector's start: a full fine-tune from the exported model (2 steps)."""
  c = _tiny_config(Path(export.read_run_config(lora_run).data.source))
  c.init_from = str(jax_export)
  c.random_init = False
  np.savez(tmp_path / "prompts.npz", positive=np.zeros((4, 32), np.float32))
  c.prompts = str(tmp_path / "prompts.npz")
  c.total_steps = 2
  c.checkpoint.every_steps = 1
  result = trainer.train_and_evaluate(c, str(tmp_path / "run2"))
  assert result["step"] == 2 and np.isfinite(result["loss"])
  # The first update has lr 0 (warm-up): step 1 still holds the exported weights, and
  # step 2 has moved away from them.
  want = _params(load_dit(jax_export))
  for step, same in ((1, True), (2, False)):
    got = _params(export.load_run_model(tmp_path / "run2", step)[0])
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want) == same, step
  # Its own export copies the VAE folder it started from.
  out = export.export_run(tmp_path / "run2", tmp_path / "model2", log=lambda _: None)
  for a, b in ((load_vae(out), load_vae(jax_export)),):
    for (p, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
      np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(p))
  with pytest.raises(export.ExportError, match="overlaps the run's init_from"):
    export.export_run(tmp_path / "run2", jax_export / "sub", log=lambda _: None)


def test_pixel_codec_folder(tmp_path):
  """A run on the pixel codec exports `vae/config.json` alone, as the codec's contract says."""
  c = curriculum.get_config("tiny")
  c.init_from = ""  # a random DiT on the pixel codec (a run's config.json holds no `prior:`)
  c.model.vae = "pixel"
  assert export._write_vae(c, tmp_path) == "pixel"
  assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json"]
  assert json.loads((tmp_path / "vae" / "config.json").read_text()) == {
      "_class_name": "PixelCodec", "patch": 4, "temporal": 4, "scale": 2.0}
  assert type(load_vae(tmp_path)).__name__ == "PixelCodec"


def test_records_the_held_out_evaluation_settings():
  """A run with `config.eval.source` gets its evaluation's restore settings in model.json
  (`training.heldout.restore_settings`); one without gets none."""
  c = curriculum.get_config("tiny")
  c.init_from = ""  # the random DiT's config (no prior to build)
  dcfg = setup.dit_config(c)
  got = export._evaluated_with(c, dcfg).recorded()
  assert got == dict(solver="euler", steps=4, shift=5.0, schedule="diffusers", guidance=1.0,
                     cfg_skip=0.0, seed=43, dtype="float32", param_dtype="float32",
                     quantize="truncate")  # the pixel codec has no compute dtype
  c = curriculum.get_config("")
  c.eval.source = "demo"
  c.model.dit = "tiny"
  got = export._evaluated_with(c, setup.dit_config(c)).recorded()
  assert (got["solver"], got["steps"], got["schedule"], got["dtype"], got["param_dtype"],
          got["vae_dtype"]) == ("unipc", 20, "wan", "bfloat16", "float32", "bfloat16")
  c.eval.source = ""
  assert export._evaluated_with(c, setup.dit_config(c)) is None
