"""TFDS builders (paired_folders, foundir, realce), the prepare CLI and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.test_data_helpers import make_tree, save, smooth_image
from vbridge_jax.data import prepare
from vbridge_jax.data.files import read_rgb

REPO = Path(__file__).resolve().parent.parent


def _read(version_dir: Path, split: str) -> tuple[list[str], list[dict]]:
  import tensorflow_datasets as tfds
  b = tfds.builder_from_directory(str(version_dir))
  src = b.as_data_source(split=split)
  recs = [src[i] for i in range(len(src))]
  return list(b.info.features["category"].names), recs


def test_paired_folders_mixed_extensions_roundtrip(tmp_path):
  tree = make_tree(tmp_path / "tree", {"Blur": 2, "my_cat": 3}, exts=(".png", ".jpg", ".JPG"))
  out = prepare.prepare("paired_folders", str(tree), str(tmp_path / "tfds"))
  assert sorted(p.name for p in Path(out).glob("*.array_record*"))
  names, recs = _read(Path(out), "train")
  assert names == ["Blur", "my_cat"] and len(recs) == 5
  for r in recs:
    cat, id_ = names[r["category"]], r["id"].decode()
    gt_file = next((tree / cat / "GT").glob(id_ + ".*"))
    np.testing.assert_array_equal(r["gt"], read_rgb(gt_file))  # stored bytes unchanged
    np.testing.assert_array_equal(r["lq"], read_rgb(tree / cat / "LQ" / f"{id_}.png"))


def test_foundir_layout_generated_and_real(tmp_path, foundir_samples):
  tree = make_tree(tmp_path / "f", {"02Blur_Noise": 1, "20Lowlight_Noise_JPEG": 2})
  names, recs = _read(Path(prepare.prepare("foundir", str(tree), str(tmp_path / "t"))),
                      "test")
  assert len(names) == 20
  assert sorted(names[r["category"]] for r in recs) == ["Blur_Noise"] + [
      "Lowlight_Noise_JPEG"] * 2
  names, recs = _read(Path(prepare.prepare("foundir", str(foundir_samples),
                                           str(tmp_path / "real"))), "test")
  got = {r["id"].decode(): (names[r["category"]], r["lq"].shape) for r in recs}
  assert got == {"0001": ("Blur", (1080, 1920, 3)), "1006": ("NightRain", (1080, 1920, 3)),
                 "1118": ("Lowlight", (1528, 2720, 3))}  # 1118: JPEG behind .png


def test_realce_layout(tmp_path):
  for split, n in (("train", 2), ("test", 1)):
    for i in range(n):
      gt = smooth_image(i, 32, 48)
      save(tmp_path / "rc" / split / "52mm" / f"im{i}.jpg", gt)
      save(tmp_path / "rc" / split / "26mm" / f"im{i}.jpg", gt // 2)
      save(tmp_path / "rc" / split / "13mm" / f"im{i}.jpg", gt // 4)
  out = Path(prepare.prepare("realce", str(tmp_path / "rc"), str(tmp_path / "t")))
  names, train = _read(out, "train")
  _, test = _read(out, "test")
  assert names == ["RealCE"] and len(test) == 2
  assert sorted(r["id"].decode() for r in train) == ["im0_x2", "im0_x4", "im1_x2",
                                                     "im1_x4"]


def _bad_trees(tmp: Path) -> dict[str, tuple[Path, str]]:
  """name -> (tree, a file or folder name the error must mention)."""
  trees = {}
  t = make_tree(tmp / "trunc", {"A": 2})
  f = t / "A" / "GT" / "001.png"
  f.write_bytes(f.read_bytes()[:200])
  trees["truncated"] = (t, "GT/001.png")
  t = make_tree(tmp / "corrupt", {"A": 2})
  (t / "A" / "LQ" / "000.png").write_bytes(b"\x89PNG garbage")
  trees["corrupt"] = (t, "LQ/000.png")
  t = make_tree(tmp / "mismatch", {"A": 2})
  save(t / "A" / "LQ" / "001.png", smooth_image(0, 20, 20))
  trees["size mismatch"] = (t, "A/LQ/001.png")
  t = make_tree(tmp / "orphan", {"A": 2})
  (t / "A" / "LQ" / "001.png").unlink()
  trees["GT without LQ"] = (t, "A/GT/001.png")
  t = make_tree(tmp / "emptycat", {"A": 1})
  (t / "B" / "LQ").mkdir(parents=True)
  (t / "B" / "GT").mkdir(parents=True)
  trees["empty category"] = (t, "emptycat/B")
  t = tmp / "empty"
  t.mkdir()
  trees["empty data set"] = (t, "empty")
  return trees


def test_bad_input_one_line_error_and_exit_1_or_skip(tmp_path, capsys):
  for case, (tree, needle) in _bad_trees(tmp_path).items():
    args = ["--builder", "paired_folders", "--manual_dir", str(tree), "--data_dir",
            str(tmp_path / "out" / case)]
    assert prepare.main(args) == 1, case
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], (case, err[-500:])
    if case in ("truncated", "corrupt", "size mismatch", "GT without LQ"):
      assert prepare.main(args + ["--skip_bad"]) == 0, case
      out = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("wrote ")
      _, recs = _read(Path(out), "train")
      assert len(recs) == 1, case


def test_prepare_command_exit_status(tmp_path):
  r = subprocess.run([sys.executable, "-m", "vbridge_jax.data.prepare", "--builder",
                      "foundir", "--manual_dir", str(tmp_path / "nope"), "--data_dir",
                      str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "nope" in r.stderr


def test_tensorflow_is_never_imported(tmp_path):
  """Prepare, read through tfds.data_source and the Grain pipeline while an import hook
  hides `tensorflow` (as if absent even where installed); it never gets imported."""
  tree = make_tree(tmp_path / "tree", {"A": 2, "B": 1})
  script = textwrap.dedent(f"""
      import sys
      tried = []
      class Block:  # a finder that finds no tensorflow
        def find_spec(self, name, path=None, target=None):
          if name == "tensorflow" or name.startswith("tensorflow."):
            tried.append(name)  # etils only probes with find_spec
          return None
      sys.meta_path.insert(0, Block())
      from vbridge_jax.data import prepare, pipeline
      prepare.prepare("paired_folders", {str(tree)!r}, {str(tmp_path / 't')!r})
      it = iter(pipeline.make_dataset("paired_folders", data_dir={str(tmp_path / 't')!r},
                                      size=16, frames=5, global_batch_size=2, seed=0))
      b = next(it)
      assert b["clip"].shape == (2, 5, 16, 16, 3)
      import tensorflow_datasets as tfds
      tfds.data_source("paired_folders", data_dir={str(tmp_path / 't')!r})["train"][0]
      mods = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
      print("TRIED", tried, "MODS", mods)
      assert not mods
  """)
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     cwd=REPO, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                    "HOME": str(tmp_path)})
  assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-500:]
