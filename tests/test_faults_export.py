"""Faults of export and convert (issue 23 items 11, 15, 16, 19, 20) and the lock they share.

The run is made without training: the tiny config's DiT, drawn at random, saved as the
trainer saves its state (`checkpoints/N/state`, the model as item "0"), at steps 2 and 3.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from vbridge_jax import export as export_cmd
from vbridge_jax.checkpoints import convert_path, io
from vbridge_jax.configs import curriculum
from vbridge_jax.training import export, setup
from vbridge_jax.utils import atomic, lock
from vbridge_jax.utils.errors import VBridgeError

REPO = Path(__file__).resolve().parent.parent
# What tensorstore raises (through orbax) when the disk fills while a chunk is written.
ENOSPC = ValueError(
  'RESOURCE_EXHAUSTED: Error writing "a/0.0" in OCDBT database at local file "/x/params.orbax-checkpoint-tmp/'
  'ocdbt.process_0/": Failed writing: "/x/params.orbax-checkpoint-tmp/ocdbt.process_0/d/98fd": Failed to write '
  "3776577 bytes to file 14: No space left on device [os_error_code='28']"
)


def _config():
  c = curriculum.get_config("tiny_wan")
  c.model.vae = "pixel"  # no random VAE to build: the fastest export
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
  """A run folder with checkpoints at steps 2 and 3 (the same random DiT)."""
  root = tmp_path_factory.mktemp("faults_export") / "run"
  c = _config()
  with jax.default_device(jax.devices("cpu")[0]):
    model = export._build_model(c, setup.dit_config(c))
    tree = io.string_keys(nnx.to_pure_dict(nnx.state(model)))
  tree = jax.tree.map(np.asarray, tree)
  for step in (2, 3):
    with ocp.PyTreeCheckpointer() as ckptr:
      ckptr.save(root / "checkpoints" / str(step) / "state", {"0": tree})
  (root / "config.json").write_text(c.to_json_best_effort(indent=2))
  return root


def _quiet(_):
  pass


def _one_line_error(capsys, argv) -> str:
  assert export_cmd.main(argv) == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


# ------------------------------------------------------------------ 11: the lock


def test_a_held_lock_refuses_a_second_holder_even_in_the_same_process(tmp_path):
  path = tmp_path / ".x.lock"
  with lock.exclusive(path, what="export --out X"):
    assert f"pid {os.getpid()}" in path.read_text()
    with pytest.raises(lock.LockedError, match=rf"export --out X: .*pid {os.getpid()} on .*{path.name}"):
      with lock.exclusive(path, what="export --out X"):
        pass
  assert not path.exists()  # released and removed
  with lock.exclusive(path, what="again"):  # and free again
    pass


def _holder(path: Path) -> subprocess.Popen:
  code = textwrap.dedent(f"""
    import sys, time
    sys.path.insert(0, {str(REPO)!r})
    from vbridge_jax.utils import lock
    with lock.exclusive({str(path)!r}, what="test"):
      print("held", flush=True)
      time.sleep(120)
  """)
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_dead_holders_lock_is_taken_over(tmp_path):
  path = tmp_path / ".x.lock"
  proc = _holder(path)
  try:
    with pytest.raises(lock.LockedError, match=f"pid {proc.pid}"):
      with lock.exclusive(path, what="x"):
        pass
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert path.exists()  # a kill -9 leaves the file, but not the lock
  with lock.exclusive(path, what="x"):
    pass


def test_a_second_export_to_one_out_is_refused_and_its_staging_kept(run, tmp_path, capsys):
  out = tmp_path / "model"
  live = tmp_path / ".model.export.abcd1234"  # the live export's staging folder
  live.mkdir()
  (live / "part").write_text("being written")
  proc = _holder(tmp_path / ".model.lock")
  try:
    line = _one_line_error(capsys, ["--workdir", str(run), "--out", str(out)])
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert "another process is writing it" in line and f"pid {proc.pid}" in line, line
  assert (live / "part").read_text() == "being written" and not out.exists()


# ------------------------------------------------------------------ 19: staging left behind


def test_export_removes_a_killed_exports_staging(run, tmp_path):
  out = tmp_path / "model"
  stale = [tmp_path / ".model.export.k1ll3d_x", tmp_path / ".model.export.00000000"]
  for s in stale:
    (s / "dit").mkdir(parents=True)
  other = tmp_path / ".model2.export.abcdefgh"  # another --out's staging: not ours to remove
  other.mkdir()
  logs = []
  export.export_run(run, out, log=logs.append)
  assert not any(s.exists() for s in stale) and other.is_dir()
  assert sum("did not finish" in m for m in logs) == 2, logs
  assert sorted(p.name for p in tmp_path.iterdir()) == [".model2.export.abcdefgh", "model"]


def test_export_killed_between_its_two_renames_keeps_the_old_model(run, tmp_path):
  out = tmp_path / "model"
  export.export_run(run, out, log=_quiet)
  os.replace(out, tmp_path / ".model.old")  # killed right after moving the old model aside
  (tmp_path / ".model.export.abcd1234").mkdir()
  with pytest.raises(VBridgeError, match="exists; pass --overwrite"):
    export.export_run(run, out, log=_quiet)
  assert (out / "model.json").is_file() and not (tmp_path / ".model.old").exists()
  assert not (tmp_path / ".model.export.abcd1234").exists()


def test_convert_removes_a_killed_conversions_staging(run, tmp_path):
  src = export.export_run(run, tmp_path / "wan", fmt="wan", log=_quiet)
  out = tmp_path / "out"
  (out / ".convert.abcd_123" / "dit").mkdir(parents=True)
  logs = []
  convert_path(src, out, log=logs.append)
  assert sorted(p.name for p in out.iterdir()) == ["dit", "model.json"], logs
  assert any("did not finish" in m for m in logs)
  # a live conversion (the lock held) is refused, and its staging kept
  (out / ".convert.live_123").mkdir()
  with lock.exclusive(out / ".convert.lock", what="the other"):
    with pytest.raises(lock.LockedError, match="convert --out"):
      convert_path(src, out, log=_quiet)
  assert (out / ".convert.live_123").is_dir()


# ------------------------------------------------------------------ 20: the exported folder's mode


@pytest.mark.parametrize("fmt", ["jax", "wan"])
def test_exported_folders_get_the_users_umask(run, tmp_path, fmt):
  old = os.umask(0o022)
  try:
    out = export.export_run(run, tmp_path / "model", fmt=fmt, log=_quiet)
  finally:
    os.umask(old)
  modes = {p.relative_to(tmp_path): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
  assert modes[Path("model")] == 0o755
  bad = {p: oct(m) for p, m in modes.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)}
  assert not bad, bad


# ------------------------------------------------------------------ 15: full disk, unwritable place


def test_export_on_a_full_disk_is_one_line(run, tmp_path, monkeypatch, capsys):
  out = tmp_path / "model"
  monkeypatch.setattr(io, "_save_params", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
  line = _one_line_error(capsys, ["--workdir", str(run), "--out", str(out)])
  assert f"--out {out}: writing failed (No space left on device" in line, line
  assert list(tmp_path.iterdir()) == []  # no staging folder, no lock file


def test_convert_on_a_full_disk_is_one_line(run, tmp_path, monkeypatch):
  src = export.export_run(run, tmp_path / "wan", fmt="wan", log=_quiet)
  out = tmp_path / "out"
  monkeypatch.setattr(io, "_save_params", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
  with pytest.raises(VBridgeError, match=r"--out .*out: writing failed \(No space left on device"):
    convert_path(src, out, log=_quiet)
  assert not out.exists()


def test_convert_past_a_file_size_limit_is_one_line(run, tmp_path):
  """A real write failure (not a stand-in): the file size limit makes tensorstore's write fail
  (`OUT_OF_RANGE: ... File too large [os_error_code='27']`), as a full disk does."""
  src = export.export_run(run, tmp_path / "wan", fmt="wan", log=_quiet)
  out = tmp_path / "out"
  code = textwrap.dedent(f"""
    import resource, runpy, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    sys.argv = ["wan_to_jax.py", "--src", {str(src)!r}, "--out", {str(out)!r}]
    runpy.run_path({str(REPO / "convert" / "wan_to_jax.py")!r}, run_name="__main__")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  errors = [l for l in proc.stderr.splitlines() if "error:" in l]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
  assert "writing failed (File too large" in errors[0], errors
  # no traceback through this project or orbax (tensorstore may still print "Event loop is
  # closed" from its own threads as the process ends: not Python frames of ours)
  assert not re.search(r'File ".*(vbridge_jax|orbax)/', proc.stderr), proc.stderr[-3000:]
  assert not out.exists()


def test_write_failure_matches_write_errors_only():
  assert atomic.write_failure(ENOSPC).startswith("No space left on device: /x/params")
  assert atomic.write_failure(OSError(30, "Read-only file system", "/m")) == "Read-only file system: /m"
  assert "PERMISSION_DENIED" in atomic.write_failure(ValueError("PERMISSION_DENIED: open failed"))
  assert atomic.write_failure(ValueError("shapes (2,) and (3,) differ")) is None
  assert atomic.write_failure(ValueError('NOT_FOUND: Error reading "x"')) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_one_line(run, tmp_path, capsys):
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    line = _one_line_error(capsys, ["--workdir", str(run), "--out", str(parent / "model")])
  finally:
    parent.chmod(0o755)
  assert "cannot write there" in line and str(parent) in line, line


# ------------------------------------------------------------------ 16: export's inputs


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_max_shard_gb_must_be_a_positive_number(run, tmp_path, capsys, value):
  line = _one_line_error(
    capsys, ["--workdir", str(run), "--out", str(tmp_path / "m"), "--format", "wan", "--max_shard_gb", value]
  )
  assert f"--max_shard_gb {float(value)}" in line, line
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["null", "[]", "{}", '{"model": 5}', '{"model": {}, "data": {}}'])
def test_a_run_config_that_is_not_a_runs_is_one_line(run, tmp_path, capsys, text):
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / "config.json").write_text(text)
  os.symlink(run / "checkpoints", fake / "checkpoints")
  line = _one_line_error(capsys, ["--workdir", str(fake), "--out", str(tmp_path / "m")])
  assert f"{fake / 'config.json'}:" in line, line
  assert not (tmp_path / "m").exists()


def test_an_unreadable_latest_checkpoint_falls_back_to_the_newest_intact(run, tmp_path):
  damaged = tmp_path / "run"
  damaged.mkdir()
  (damaged / "config.json").write_text((run / "config.json").read_text())
  (damaged / "checkpoints").mkdir()
  os.symlink(run / "checkpoints" / "2", damaged / "checkpoints" / "2")
  # step 3: a copy without its _METADATA
  shutil.copytree(run / "checkpoints" / "3", damaged / "checkpoints" / "3")
  (damaged / "checkpoints" / "3" / "state" / "_METADATA").unlink()
  logs = []
  export.export_run(damaged, tmp_path / "model", log=logs.append)
  assert any("step 3 is unreadable" in m and "using step 2" in m for m in logs), logs
  assert any("exported" in m and "step 2" in m for m in logs), logs
  with pytest.raises(VBridgeError, match="checkpoints/3/state: cannot read the model state"):
    export.export_run(damaged, tmp_path / "model3", step=3, log=_quiet)
  assert not (tmp_path / "model3").exists()
