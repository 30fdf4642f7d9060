"""The data commands' and the command line's faults (issue 23 items 9, 13, 14, 17, 18).

Each test reproduces one fault and checks that it ends in one line naming the file, flag
or value at fault (exit status 1), or that the command goes on past it where it promises
to (restore, evaluate, `prepare --skip_bad`), and that nothing is mixed or lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script
from tests.test_data_helpers import make_tree, save, smooth_image
from vbridge_jax import evaluate, restore
from vbridge_jax.data import fewshot, files, prepare, prompts
from vbridge_jax.utils.errors import DataError, PromptError

REPO = Path(__file__).resolve().parent.parent
TEXT_DIM = 32  # convert/tiny_repo.py's DiT


def _one_error_line(err: str) -> str:
  lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _bomb(path: Path) -> Path:
  """A 14000 x 14000 1-bit PNG: about 24 KB on disk, 588 MB as RGB."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("1", (14000, 14000)).save(path)
  return path


# ---------------------------------------------------------------- 23.9 fewshot into a used --out


def test_fewshot_out_is_one_set(tmp_path, capsys):
  out = tmp_path / "set"
  args = ["--out", str(out), "--per_category", "1", "--size", "16"]
  assert fewshot.main(args + ["--categories", "Blur", "--seed", "1"]) == 0
  before = sorted(p.relative_to(out) for p in out.rglob("*"))
  capsys.readouterr()
  assert fewshot.main(args + ["--categories", "Noise", "--seed", "2"]) == 1  # another set
  line = _one_error_line(capsys.readouterr().err)
  assert str(out) in line and "--overwrite" in line
  assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # untouched
  assert fewshot.main(args + ["--categories", "Noise", "--seed", "2", "--overwrite"]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["Noise"]  # replaced whole: no Blur left
  assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging left beside
  fresh = tmp_path / "fresh"
  fewshot.build(fresh, per_category=1, size=16, categories=("Noise",), seed=2)
  assert {p.relative_to(fresh): p.read_bytes() for p in fresh.rglob("*.png")} == \
         {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
  empty = tmp_path / "empty"
  empty.mkdir()
  assert fewshot.main(["--out", str(empty), "--per_category", "1", "--size", "16",
                       "--categories", "Blur"]) == 0  # an empty folder is a new one


def test_fewshot_failed_overwrite_keeps_the_old_set(tmp_path, capsys):
  out = tmp_path / "set"
  assert fewshot.main(["--out", str(out), "--per_category", "1", "--size", "16",
                       "--categories", "Blur"]) == 0
  before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
  clean = tmp_path / "clean"
  clean.mkdir()  # no images: the build fails after the checks
  assert fewshot.main(["--out", str(out), "--clean", str(clean), "--overwrite"]) == 1
  assert "no images" in _one_error_line(capsys.readouterr().err)
  assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "set"]


def test_build_once_still_rebuilds_in_place(tmp_path):
  """The trainer's and the miniature's builder keeps its own rule: a folder holding other
  things (the miniature's drift/ set) is fine, a set of other settings is replaced."""
  root = tmp_path / "demo_data"
  (root / "drift").mkdir(parents=True)
  spec = dict(per_category=1, heldout=1, size=16, categories=("Blur",))
  fewshot.build_once(root, **spec)
  assert json.loads((root / fewshot.MARKER).read_text()) == json.loads(json.dumps(spec))
  assert (root / "train" / "Blur" / "GT" / "0000.png").is_file() and (root / "drift").is_dir()
  fewshot.build_once(root, **{**spec, "categories": ("Noise",)})
  assert [p.name for p in (root / "train").iterdir()] == ["Noise"]


# ------------------------------------------------------------------- 23.14, 23.18 fewshot bounds


@pytest.mark.parametrize("flag,value", [("--size", "100000"), ("--size", "-3"), ("--seed", "-1")])
def test_fewshot_bounds(tmp_path, capsys, flag, value):
  out = tmp_path / "set"
  assert fewshot.main(["--out", str(out), "--categories", "Blur", flag, value]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert flag in line and value in line
  assert not out.exists()
  assert str(fewshot.MAX_SIZE) in line or flag == "--seed"


# -------------------------------------------------------------------- 23.13 decompression bombs


def test_reader_names_a_decompression_bomb(tmp_path):
  bomb = _bomb(tmp_path / "bomb.png")
  assert bomb.stat().st_size < 100_000
  for read in (files.read_rgb, files.image_size, files.open_image,
               lambda p: files.open_image(p.read_bytes(), name=str(p))):  # the pipeline's bytes
    with pytest.raises(DataError, match="image too large: .*bomb.png"):
      read(bomb)
  # Between PIL's limit and twice it PIL only warns: the reader refuses those too.
  big = tmp_path / "big.png"
  Image.new("1", (files.MAX_PIXELS // 8000 + 1, 8000)).save(big)
  with pytest.raises(DataError, match="big.png .* over the limit of 89478485"):
    files.image_size(big)
  trunc = tmp_path / "trunc.png"
  data = (tmp_path / "ok.png")
  Image.fromarray(smooth_image(0, 64, 64)).save(data)
  trunc.write_bytes(data.read_bytes()[:200])
  with pytest.raises(DataError, match="trunc.png"):
    files.read_rgb(trunc)
  assert files.read_rgb(data).shape == (64, 64, 3)


def test_evaluate_names_a_bomb_and_scores_the_rest(tmp_path, capsys):
  img = smooth_image(1, 24, 24)
  for stem in ("a", "b"):
    save(tmp_path / "gt" / "Blur" / "GT" / f"{stem}.png", img)
  save(tmp_path / "pred" / "Blur" / "a.png", img)
  _bomb(tmp_path / "pred" / "Blur" / "b.png")
  rc = evaluate.main([f"--config.pred={tmp_path / 'pred'}", f"--config.gt={tmp_path / 'gt'}",
                      f"--config.out={tmp_path / 'out'}", "--config.progress=false"])
  assert rc == 1
  result = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert len(result["per_image"]) == 1 and "b.png" in result["unreadable"][0]
  assert "image too large" in capsys.readouterr().err


def test_prepare_skip_bad_skips_a_bomb(tmp_path, capsys):
  import tensorflow_datasets as tfds
  tree = make_tree(tmp_path / "tree", {"Blur": 2})
  _bomb(tree / "Blur" / "LQ" / "002.png")
  save(tree / "Blur" / "GT" / "002.png", smooth_image(9, 40, 56))
  args = ["--builder", "paired_folders", "--manual_dir", str(tree),
          "--data_dir", str(tmp_path / "tfds")]
  assert prepare.main(args) == 1
  assert "002.png" in _one_error_line(capsys.readouterr().err)
  assert prepare.main(args + ["--skip_bad"]) == 0
  out = tmp_path / "tfds" / "paired_folders" / "1.0.0"
  assert len(tfds.builder_from_directory(str(out)).as_data_source(split="train")) == 2


def test_training_data_names_a_bomb(tmp_path):
  """train reads a folder source through FolderRecords (headers checked while scanning)."""
  from vbridge_jax.data import pipeline
  tree = make_tree(tmp_path / "tree", {"Blur": 2})
  _bomb(tree / "Blur" / "LQ" / "002.png")
  save(tree / "Blur" / "GT" / "002.png", smooth_image(9, 40, 56))
  with pytest.raises(DataError, match="002.png"):
    pipeline.FolderRecords(tree)
  assert len(pipeline.FolderRecords(tree, skip_bad=True)) == 2


def test_fewshot_clean_names_a_bomb(tmp_path, capsys):
  clean = tmp_path / "clean"
  save(clean / "a.png", smooth_image(2, 32, 32))
  _bomb(clean / "b.png")
  assert fewshot.main(["--out", str(tmp_path / "set"), "--clean", str(clean),
                       "--per_category", "2", "--categories", "Blur"]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert "b.png" in line and "too large" in line
  assert not (tmp_path / "set").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
  from vbridge_jax.checkpoints import convert_path
  tiny = load_script("tiny_repo")
  root = tmp_path_factory.mktemp("tiny")
  tiny.tiny_dit(0).save_pretrained(root / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(root / "repo" / "vae")
  convert_path(root / "repo", root / "model", log=lambda _: None)
  rng = np.random.default_rng(0)
  prompts.save(root / "prompts.npz", positive=rng.standard_normal((3, TEXT_DIM)),
               negative=rng.standard_normal((2, TEXT_DIM)))
  return root


def test_restore_names_a_bomb_and_writes_its_summary(tiny_model, tmp_path, capsys):
  """The bomb fails by name and the run goes on to its summary (the other images of a run
  going on past a failed one: test_restore.py's broken.png)."""
  _bomb(tmp_path / "in" / "Blur" / "LQ" / "bomb.png")
  out = tmp_path / "out"
  rc = restore.main([f"--config={REPO / 'configs' / 'restore.py'}:tiny",
                     f"--config.model={tiny_model / 'model'}",
                     f"--config.prompts={tiny_model / 'prompts.npz'}",
                     f"--config.input={tmp_path / 'in'}", f"--config.output={out}",
                     "--config.progress=false"])
  assert rc == 1
  assert "bomb.png" in _one_error_line(capsys.readouterr().err)
  summary = json.loads((out / "restore_summary.json").read_text())
  assert summary["failed"] == 1 and "bomb.png" in json.dumps(summary)


# ------------------------------------------------------------------------- 23.17 prompt files


def _prompt_faults(tmp: Path) -> dict[str, tuple[Path, str]]:
  rng = np.random.default_rng(0)
  good = prompts.save(tmp / "good.npz", positive=rng.standard_normal((3, TEXT_DIM)),
                      negative=rng.standard_normal((2, TEXT_DIM)),
                      empty=rng.standard_normal((1, TEXT_DIM)))
  data = good.read_bytes()
  out = {}
  (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
  out["truncated"] = (tmp / "truncated.npz", "damaged")
  bad_crc = bytearray(data)
  bad_crc[200] ^= 0xFF  # inside the first member's data
  (tmp / "crc.npz").write_bytes(bytes(bad_crc))
  out["bad crc"] = (tmp / "crc.npz", "damaged")
  np.save(tmp / "one.npy", rng.standard_normal((3, TEXT_DIM)).astype(np.float32))
  out["npy"] = (tmp / "one.npy", ".npy")
  np.savez(tmp / "ints.npz", positive=np.ones((3, TEXT_DIM), np.int64),
           negative=np.ones((2, TEXT_DIM), np.int64), empty=np.ones((1, TEXT_DIM), np.int64))
  out["int dtype"] = (tmp / "ints.npz", "int64")
  np.savez(tmp / "complex.npz", positive=np.ones((3, TEXT_DIM), complex),
           negative=np.ones((2, TEXT_DIM)), empty=np.ones((1, TEXT_DIM)))
  out["complex dtype"] = (tmp / "complex.npz", "complex")
  np.savez(tmp / "nokey.npz", negative=np.ones((2, TEXT_DIM)), empty=np.ones((1, TEXT_DIM)))
  out["missing key"] = (tmp / "nokey.npz", "'positive'")
  np.savez(tmp / "shape.npz", positive=np.ones((3, TEXT_DIM + 1)), negative=np.ones((2, TEXT_DIM)),
           empty=np.ones((1, TEXT_DIM)))
  out["wrong shape"] = (tmp / "shape.npz", "shape")
  return out


@pytest.mark.parametrize("fault", ["truncated", "bad crc", "npy", "int dtype", "complex dtype",
                                   "missing key", "wrong shape"])
def test_prompt_file_faults_are_one_line(tmp_path, fault):
  path, needle = _prompt_faults(tmp_path)[fault]
  for read in (lambda: prompts.load_prompts(path, TEXT_DIM),  # restore's
               lambda: prompts.training_context(path, TEXT_DIM, 16, need_empty=True)):  # train's
    with pytest.raises(PromptError) as e:
      read()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and needle in msg


# --------------------------------------------------------------------- 23.18 the command line


def _run(args, cwd, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_unknown_variant_is_one_line_listing_the_known(tmp_path, capsys):
  assert restore.main(["--config=configs/restore.py:bogus"]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert "unknown variant 'bogus'" in line and "'tiny'" in line
  assert evaluate.main(["--config=configs/evaluate.py:bogus"]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert "unknown variant 'bogus'" in line and "'vbridge_mp4'" in line
  r = _run(["vbridge_jax.train", "--config=configs/curriculum.py:bogus", f"--workdir={tmp_path / 'w'}"],
           tmp_path)
  assert r.returncode == 1
  line = _one_error_line(r.stderr)
  assert "unknown variant 'bogus'" in line and "'tiny'" in line and "'lora'" in line
  assert restore.main(["--config=no_such.py"]) == 1
  assert "no_such.py: no such config file" in _one_error_line(capsys.readouterr().err)


def test_config_by_absolute_path_from_outside_the_clone(tmp_path):
  """A config file imports `vbridge_jax.configs`, never the clone's `configs` folder."""
  copy = tmp_path / "elsewhere" / "drift.py"
  copy.parent.mkdir()
  shutil.copy(REPO / "configs" / "drift.py", copy)
  for path in (copy, REPO / "configs" / "drift.py"):
    r = _run(["vbridge_jax.train", f"--config={path}", f"--workdir={tmp_path / 'w'}",
              "--config.no_such_field=1"], tmp_path)
    assert r.returncode == 1 and "ModuleNotFoundError" not in r.stderr
    assert "no_such_field" in _one_error_line(r.stderr)


def test_train_refuses_an_empty_workdir(tmp_path):
  r = _run(["vbridge_jax.train", "--config=configs/curriculum.py:tiny", "--workdir="], tmp_path)
  assert r.returncode == 1
  assert "--workdir" in _one_error_line(r.stderr)
  assert list(tmp_path.iterdir()) == []  # no demo_data/ built in the working folder


def test_prepare_clears_a_killed_prepares_leftovers_and_refuses_a_second(tmp_path, capsys):
  """A killed prepare left TFDS's `incomplete.*` folder, its `.prepare.*` staging and, killed
  mid-swap, the old set aside: the next start clears the first two and brings the set back."""
  import tensorflow_datasets as tfds

  from vbridge_jax.utils import lock
  tree = make_tree(tmp_path / "tree", {"Blur": 2})
  data = tmp_path / "tfds"
  args = ["--builder", "paired_folders", "--manual_dir", str(tree), "--data_dir", str(data)]
  assert prepare.main(args) == 0
  final = data / "paired_folders" / "1.0.0"
  leftovers = [data / "paired_folders" / "incomplete.AB12CD_1.0.0", data / ".prepare.x1y2"]
  for d in leftovers:
    (d / "junk").mkdir(parents=True)
  os.replace(final, final.with_name(".1.0.0.old"))  # killed between the swap's two renames
  assert prepare.main(args) == 0 and "wrote" in capsys.readouterr().out
  assert not any(d.exists() for d in leftovers) and not final.with_name(".1.0.0.old").exists()
  assert len(tfds.builder_from_directory(str(final)).as_data_source(split="train")) == 2
  with lock.exclusive(final.parent / ".1.0.0.prepare.lock", what="prepare"):  # one running
    assert prepare.main(args) == 1
  assert "another process is writing it" in _one_error_line(capsys.readouterr().err)
