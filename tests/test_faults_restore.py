"""Restore's faults that lost data or saved wrong results with exit status 0 (issue 23 items 2,
3, 4, 19, 21): files it did not write, non-finite results, outputs of other settings, stale
temporaries, model folders whose records cannot run. Each case failed on the code before."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_restore import _args, load_script, model_dir  # noqa: F401 (a fixture)
from vbridge_jax import restore
from vbridge_jax.checkpoints.model_info import FILENAME
from vbridge_jax.inference import jobs


def _image(path, value=90, size=(24, 40)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
  return path


def _run(model_dir, inp, out, capsys, *extra):  # noqa: F811
  rc = restore.main(_args(model_dir, inp, out, *extra))
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def test_never_replaces_a_file_it_did_not_write(model_dir, tmp_path, capsys):  # noqa: F811
  """LQ restored onto its GT folder: the GT is refused up front, untouched; overwrite=true."""
  lq = _image(tmp_path / "Blur" / "LQ" / "a.png")
  gt = _image(tmp_path / "Blur" / "GT" / "a.png", value=200)
  before = gt.read_bytes()
  rc, out, err = _run(model_dir, lq.parent, gt.parent, capsys)
  assert rc == 1 and "not written by restore" in err and str(gt) in err
  assert "overwrite=true" in err and "loading the model" not in out
  assert gt.read_bytes() == before
  rc, _, _ = _run(model_dir, lq.parent, gt.parent, capsys, "--config.overwrite=true")
  assert rc == 0 and gt.read_bytes() != before and jobs.sidecar(gt).exists()


def test_outputs_record_what_made_them(model_dir, tmp_path, capsys):  # noqa: F811
  """A finished output of another seed, step count or model is not "already restored"."""
  src = _image(tmp_path / "in" / "a.png")
  out = tmp_path / "out"
  assert _run(model_dir, src.parent, out, capsys)[0] == 0
  png = out / "a.png"
  first = png.read_bytes()
  rec = json.loads(jobs.sidecar(png).read_text())["settings"]
  assert rec["seed"] == 43 and rec["steps"] == 2 and rec["frames"] == 5
  assert rec["model_files"] and rec["solver"] and rec["guidance"] is not None
  assert rec["drift_files"] == "" and rec["drift_frames"] is None
  for flag, what in (("--config.seed=7", "seed 43 (now 7)"), ("--config.steps=3", "steps 2 (now 3)"),
                     (f"--config.drift={model_dir / 'drift'}", "drift_files '' (now '")):
    rc, log, err = _run(model_dir, src.parent, out, capsys, flag)
    assert rc == 1 and "restored with other settings" in err and what in err, (flag, err[-300:])
    assert "loading the model" not in log and png.read_bytes() == first
  other = tmp_path / "model_copy"  # a copy is the same model; once rewritten, another one
  shutil.copytree(model_dir / "model", other)
  assert "1 already restored" in _run(model_dir, src.parent, out, capsys,
                                      f"--config.model={other}")[1]
  (other / "dit" / "config.json").write_text((other / "dit" / "config.json").read_text() + " ")
  rc, _, err = _run(model_dir, src.parent, out, capsys, f"--config.model={other}")
  assert rc == 1 and "model_files" in err
  rc, log, _ = _run(model_dir, src.parent, out, capsys, "--config.seed=7", "--config.overwrite=true")
  assert rc == 0 and png.read_bytes() != first
  rc, log, _ = _run(model_dir, src.parent, out, capsys, "--config.seed=7")
  assert rc == 0 and "1 already restored, 0 to do" in log


@pytest.mark.parametrize("flag", ["--config.guidance=nan", "--config.shift=-1", "--config.shift=0",
                                  "--config.guidance=inf"])
def test_senseless_sampler_values_refused_up_front(model_dir, tmp_path, capsys, flag):  # noqa: F811
  src = _image(tmp_path / "a.png")
  rc, log, err = _run(model_dir, src, tmp_path / "out", capsys, flag)
  assert rc == 1 and flag.split(".")[1].split("=")[0] in err and "loading the model" not in log
  assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_non_finite_results_are_failures(model_dir, tmp_path, capsys):  # noqa: F811
  """A model holding one NaN weight: each image is a named failure, no PNG or sidecar, and a
  rerun does not skip it."""
  from vbridge_jax.checkpoints import convert_path
  tiny = load_script("tiny_repo")
  dit = tiny.tiny_dit(0)
  import torch
  with torch.no_grad():
    next(dit.parameters()).view(-1)[0] = float("nan")
  dit.save_pretrained(tmp_path / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(tmp_path / "repo" / "vae")
  convert_path(tmp_path / "repo", tmp_path / "nan_model", log=lambda _: None)
  for name in ("a.png", "b.png"):
    _image(tmp_path / "in" / name)
  out = tmp_path / "out"
  args = (f"--config.model={tmp_path / 'nan_model'}",)
  rc, log, err = _run(model_dir, tmp_path / "in", out, capsys, *args)
  assert rc == 1 and err.count("not finite") == 2 and "a.png" in err and "b.png" in err
  assert "restored 0, failed 2" in log
  assert not list(out.glob("*.png")) and not list(out.glob(".*.done"))
  summary = json.loads((out / jobs.SUMMARY).read_text())
  assert summary["failed"] == 2 and "not finite" in summary["failures"][0]
  rc, log, _ = _run(model_dir, tmp_path / "in", out, capsys, *args)
  assert "0 already restored, 2 to do" in log


def test_stale_temporaries_are_removed(model_dir, tmp_path, capsys):  # noqa: F811
  """A kill leaves `.NAME.PID.tmp.png` (and `.mp4`) files; the next start removes those of
  processes that are gone, and keeps a running process's."""
  src = _image(tmp_path / "in" / "a.png")
  out = tmp_path / "out"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = [out / f".a.{dead.pid}.tmp.png", out / "sub" / f".b.{dead.pid}.tmp.mp4",
           out / f"..a.png.{dead.pid}.tmp.done"]
  live = out / f".a.{os.getppid()}.tmp.png"  # the test runner's parent: running
  for f in [*stale, live]:
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"partial")
  assert _run(model_dir, src.parent, out, capsys)[0] == 0
  assert not any(f.exists() for f in stale) and live.exists()


def _model_copy(model_dir, tmp_path, name, **info):  # noqa: F811
  dst = tmp_path / name
  shutil.copytree(model_dir / "model", dst)
  (dst / FILENAME).write_text(json.dumps(info))
  return dst


@pytest.mark.parametrize("info, what", [
    (dict(frames=4), "frames=4 must be 1 + 4k"), (dict(frames=2.5), "frames=2.5"),
    (dict(frames=True), "frames=True"), (dict(frames=5, codec="mp3"), "codec='mp3'")])
def test_model_records_checked_before_loading(model_dir, tmp_path, capsys, info, what):  # noqa: F811
  model = _model_copy(model_dir, tmp_path, "m", **info)
  src = _image(tmp_path / "a.png")
  rc, log, err = _run(model_dir, src, tmp_path / "out", capsys, f"--config.model={model}")
  assert rc == 1 and what in err and FILENAME in err, err
  assert "loading the model" not in log and "Traceback" not in err


def test_corrector_and_prompts_checked_before_loading(model_dir, tmp_path, capsys):  # noqa: F811
  src = _image(tmp_path / "a.png")
  drift = _model_copy(model_dir, tmp_path, "d", frames=5, codec="pixel")
  rc, log, err = _run(model_dir, src, tmp_path / "out", capsys, f"--config.drift={drift}")
  assert rc == 1 and "the corrector's codec 'pixel' is not the base model's 'wan22'" in err
  assert "loading the model" not in log
  long = tmp_path / "long.npz"  # one token longer than the DiT takes
  cfg = json.loads((model_dir / "model" / "dit" / "config.json").read_text())["config"]
  np.savez(long, positive=np.zeros((cfg["text_len"] + 1, cfg["text_dim"]), np.float32),
           negative=np.zeros((3, cfg["text_dim"]), np.float32))
  rc, log, err = _run(model_dir, src, tmp_path / "out", capsys, f"--config.prompts={long}")
  assert rc == 1 and "long.npz" in err and "loading the model" not in log, err
