"""Restore scores what the trainer's held-out evaluation reported: the `evaluated_with` record
of model.json (checkpoints/model_info.py), written by export, resolved by restore (flag > record >
defaults; vbridge_jax/inference/restorer.py), and a tiny run trained, exported and restored."""

import json
from pathlib import Path

import numpy as np
import pytest

from vbridge_jax import restore
from vbridge_jax.checkpoints.model_info import (
  EvalSettings,
  ModelInfo,
  ModelInfoError,
  read_model_info,
  write_model_info,
)
from vbridge_jax.inference import folder

RECORD = dict(solver="euler", steps=4, shift=5.0, schedule="diffusers", guidance=1.0, cfg_skip=0.0,
              seed=7, dtype="float32", param_dtype="float32", vae_dtype="bfloat16",
              quantize="round")


# ------------------------------------------------------------------------------- model.json


def test_round_trip_with_and_without_the_record(tmp_path):
  write_model_info(tmp_path, ModelInfo(frames=9, codec="pixel"))
  assert json.loads((tmp_path / "model.json").read_text()) == {"frames": 9, "codec": "pixel"}
  assert read_model_info(tmp_path).evaluated_with is None
  info = ModelInfo(frames=5, codec="pixel", evaluated_with=EvalSettings(**RECORD))
  write_model_info(tmp_path, info)
  assert json.loads((tmp_path / "model.json").read_text())["evaluated_with"] == RECORD
  assert read_model_info(tmp_path) == info
  assert read_model_info(tmp_path / "dit") == info
  # A partial record holds what it holds; ints are accepted for float fields.
  (tmp_path / "model.json").write_text(json.dumps({"frames": 5, "evaluated_with": {"steps": 8,
                                                                                   "shift": 3}}))
  got = read_model_info(tmp_path).evaluated_with
  assert got.recorded() == {"steps": 8, "shift": 3.0} and isinstance(got.shift, float)


@pytest.mark.parametrize("record, field", [
    ({"solver": "heun"}, "evaluated_with.solver='heun'"),
    ({"steps": 0}, "evaluated_with.steps=0"),
    ({"steps": 4.5}, "evaluated_with.steps=4.5"),
    ({"steps": True}, "evaluated_with.steps=True"),
    ({"shift": "5"}, "evaluated_with.shift='5'"),
    ({"cfg_skip": 1.5}, "evaluated_with.cfg_skip=1.5"),
    ({"schedule": "linear"}, "evaluated_with.schedule='linear'"),
    ({"dtype": "float16"}, "evaluated_with.dtype='float16'"),
    ({"quantize": "floor"}, "evaluated_with.quantize='floor'"),
    ({"stpes": 4}, "evaluated_with.stpes: unknown field"),
    ([4], "evaluated_with=\\[4\\]"),
])
def test_bad_record_is_one_line_naming_file_and_field(tmp_path, record, field):
  (tmp_path / "model.json").write_text(json.dumps({"frames": 5, "evaluated_with": record}))
  with pytest.raises(ModelInfoError, match=f"model.json: {field}") as e:
    read_model_info(tmp_path)
  assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ resolution


def _folder(path: Path, record=None) -> Path:
  path.mkdir()
  write_model_info(path, ModelInfo(evaluated_with=None if record is None else EvalSettings(**record)))
  return path


def test_flag_wins_over_model_json_over_defaults(tmp_path):
  base = _folder(tmp_path / "base", RECORD)
  drift = _folder(tmp_path / "drift", dict(RECORD, steps=50, solver="unipc"))
  cfg, src = folder.resolve_settings(restore.parse(
      [f"--config.model={base}", f"--config.drift={drift}", "--config.steps=2",
       "--config.guidance=3"]))
  assert (cfg.steps, cfg.guidance) == (2, 3.0) and src["steps"] == src["guidance"] == "--config"
  where = str(base / "model.json")
  for k in ("solver", "shift", "schedule", "cfg_skip", "seed", "dtype", "param_dtype",
            "vae_dtype", "quantize"):
    assert cfg[k] == RECORD[k] and src[k] == where, k  # the base folder's, not the corrector's
  line = folder.settings_line(cfg, src)
  assert line.startswith("sampler: euler, 2 steps, shift 5.0, schedule diffusers, guidance 3.0")
  assert line.endswith(f"(from {where}; steps, guidance from --config)")
  from vbridge_jax.inference import restorer
  assert restorer.sampler_config(cfg).steps == 2

  # No record (old folders, converted checkpoints) or no model.json: today's defaults.
  from vbridge_jax.diffusion.sampler import SamplerConfig
  for model in (_folder(tmp_path / "old"), tmp_path / "none"):
    cfg, src = folder.resolve_settings(restore.parse([f"--config.model={model}"]))
    assert restorer.sampler_config(cfg) == SamplerConfig()
    assert (cfg.seed, cfg.dtype, cfg.param_dtype, cfg.vae_dtype, cfg.quantize) == (
        43, "bfloat16", "bfloat16", None, "truncate")
    assert set(src.values()) == {"the defaults"}
    assert folder.settings_line(cfg, src).endswith("(from the defaults)")

  # The tiny variant's values are explicit, so they win over a record too.
  cfg, src = folder.resolve_settings(restore.parse(
      [f"--config={restore.DEFAULT_CONFIG}:tiny", f"--config.model={base}"]))
  assert (cfg.steps, cfg.solver, cfg.dtype) == (4, "euler", "float32") and src["steps"] == "--config"


def test_bad_record_stops_the_command(tmp_path, capsys):
  model = tmp_path / "m"
  model.mkdir()
  (model / "model.json").write_text(json.dumps({"frames": 5, "evaluated_with": {"steps": -1}}))
  assert restore.main([f"--config.model={model}", "--config.prompts=p",
                           f"--config.input={tmp_path}", "--config.output=o"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "model.json: evaluated_with.steps=-1" in err
  assert len(err.splitlines()) == 1


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.usefixtures("low_compile_effort")
def test_restore_scores_what_the_trainer_reported(tmp_path, capsys):
  """configs/curriculum.py:tiny shrunk (6 steps at 32 px, two categories, one device), exported,
  its held-out split restored with no sampler flag (on 8 devices): the same PSNR-Y, per image
  to float precision, as the run's last held-out evaluation (about 25 s)."""
  from tests.conftest import set_fields
  from vbridge_jax.configs import curriculum
  from vbridge_jax.data import fewshot
  from vbridge_jax.evaluation import protocols
  from vbridge_jax.training import export, trainer

  # 32 px pairs and eval.size=32: restore keeps each input's size, so its score matches only
  # when the evaluation did not resize the held-out images (eval.size 0 or their own size).
  fewshot.build(tmp_path / "demo", per_category=1, heldout=1, size=32, categories=("Blur", "Noise"))
  heldout = tmp_path / "demo" / "heldout"
  c = curriculum.get_config("tiny")
  c.init_from = ""  # random init (no cached prior), as the other tiny tests
  if "ceiling" in c.eval:
    c.eval.ceiling = False
  set_fields(c, total_steps=6, stages="32", num_devices=1, progress=False, log_every=6,
             compiler_options={"xla_backend_optimization_level": 0}, random_init=True,
             **{"data.source": str(tmp_path / "demo" / "train"), "eval.source": str(heldout),
                "eval.size": 32, "checkpoint.use_async": False, "checkpoint.every_steps": 6})
  trainer.train_and_evaluate(c, str(tmp_path / "run"))
  model = export.export_run(tmp_path / "run", tmp_path / "model", log=lambda _: None)
  assert read_model_info(model).evaluated_with.recorded() == dict(
      solver="euler", steps=4, shift=5.0, schedule="diffusers", guidance=1.0, cfg_skip=0.0, seed=43,
      dtype="float32", param_dtype="float32", quantize="truncate")  # pixel codec: no vae_dtype

  from vbridge_jax.checkpoints import load_dit
  dcfg = load_dit(model).config
  zeros = np.zeros((dcfg.text_len, dcfg.text_dim), np.float32)  # the run's context (no prompts)
  np.savez(tmp_path / "prompts.npz", positive=zeros, negative=zeros)
  out = tmp_path / "restored"
  capsys.readouterr()
  assert restore.main([f"--config.model={model}", f"--config.prompts={tmp_path / 'prompts.npz'}",
                       f"--config.input={heldout}", f"--config.output={out}",
                       "--config.progress=false"]) == 0
  assert "sampler: euler, 4 steps, shift 5.0, schedule diffusers" in capsys.readouterr().out

  got = protocols.evaluate(out, heldout, "vbridge", progress=False)
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "eval/psnr_y" in r][-1]
  assert logged["step"] == 6
  assert abs(got["average_per_image"]["psnr_y"] - logged["eval/psnr_y"]) <= 1e-4  # logged: 4 places
  detail = json.loads((tmp_path / "run" / "eval" / "step_0000006.json").read_text())
  want = {r["name"]: r["psnr_y"] for r in detail["restored"]["per_image"]}
  have = {f"{r['category']}/{r['name']}": r["psnr_y"] for r in got["per_image"]}
  assert have.keys() == want.keys() and len(want) == 2
  for k in want:
    assert have[k] == pytest.approx(want[k], abs=1e-9), k
