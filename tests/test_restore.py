"""Restore: the authors' geometry, the command (config, inputs, outputs, faults), sharded steps."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script
from vbridge_jax import restore
from vbridge_jax.data import prompts
from vbridge_jax.inference import folder, jobs, restorer
from vbridge_jax.inference.geometry import from_work, plan_size, to_uint8, to_work, zoom_to

TEXT_DIM = 32
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("hw, want", [
    # width around 2560 (odd height): pad below, their `>=` stretch at exactly 2560, resize above
    ((1079, 2559), ("pad", 1088, 2560)), ((1079, 2560), ("stretch", 1088, 2560)),
    ((1079, 2561), ("resize", 1056, 2560)),
    # height around 1440 (odd width)
    ((1439, 999), ("pad", 1440, 1024)), ((1440, 999), ("stretch", 1440, 1024)),
    ((1441, 999), ("resize", 1440, 992)),
    ((1528, 2720), ("resize", 1408, 2560)),  # FoundIR 1118: area 2560x1440, floor(1439 / 32) * 32
    ((33, 17), ("pad", 64, 32)), ((1080, 1920), ("pad", 1088, 1920)),
])
def test_plan_size_is_the_authors_rule(hw, want):
  p = plan_size(*hw)
  assert (p.mode, p.work_h, p.work_w) == want


def test_plan_multiple_is_a_parameter():
  assert (plan_size(33, 17, 64).work_h, plan_size(33, 17, 64).work_w) == (64, 64)
  assert (plan_size(33, 17, 16).work_h, plan_size(33, 17, 16).work_w) == (48, 32)
  p = plan_size(1441, 999, 64)
  assert (p.work_h, p.work_w) == (1408, 960)


def test_padding_is_symmetric_reflect_and_crops_back():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
  p = plan_size(33, 17)  # 64 x 32: 31 rows (15 top, 16 bottom), 15 columns (7 left, 8 right)
  w = to_work(img, p)
  want = np.pad(img, ((15, 16), (7, 8), (0, 0)), mode="reflect").astype(np.float32) / 127.5 - 1
  np.testing.assert_array_equal(w, want)
  np.testing.assert_array_equal(from_work(w, p, "round"), img)
  # truncation, as the authors' (x * 255).astype(uint8), is at most one level below rounding
  assert np.abs(from_work(w, p).astype(int) - img).max() <= 1
  assert to_uint8(np.array([0.999]), "truncate")[0] == 254 and to_uint8(np.array([0.999]), "round")[0] == 255


def test_stretch_at_the_boundary_and_zoom_back():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (1079, 2560, 3), dtype=np.uint8)
  p = plan_size(1079, 2560)
  w = to_work(img, p)  # stretched to 1088 rows (PIL bicubic), not padded
  want = np.asarray(Image.fromarray(img).resize((2560, 1088), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(to_uint8(w, "round"), want)
  back = from_work(w, p, "round")
  np.testing.assert_array_equal(back, want[4:4 + 1079])  # centre crop: (1088 - 1079) // 2 = 4
  # large images are zoomed back with scipy.ndimage.zoom(order=3), per channel
  from scipy import ndimage
  small = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
  z = zoom_to(small, 61, 97)
  ref = np.stack([ndimage.zoom(small[:, :, c], (61 / 40, 97 / 64), order=3) for c in range(3)], -1)
  assert z.shape == (61, 97, 3)
  np.testing.assert_array_equal(z, ref)
  p = plan_size(1441, 999)
  assert from_work(np.zeros((p.work_h, p.work_w, 3), np.float32), p).shape == (1441, 999, 3)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """The tiny random model of convert/tiny_repo.py, converted; a corrector with other weights
  (5 frames in its model.json) and a base model folder that records 9 frames."""
  from vbridge_jax.checkpoints import convert_path
  from vbridge_jax.checkpoints.model_info import ModelInfo, write_model_info

  tiny = load_script("tiny_repo")
  root = tmp_path_factory.mktemp("e2e")
  tiny.tiny_dit(0).save_pretrained(root / "repo" / "transformer")
  tiny.tiny_vae(0).save_pretrained(root / "repo" / "vae")
  convert_path(root / "repo", root / "model", log=lambda _: None)
  tiny.tiny_dit(1).save_pretrained(root / "drift_repo" / "transformer")
  convert_path(root / "drift_repo", root / "drift", log=lambda _: None)
  write_model_info(root / "drift", ModelInfo(frames=5))
  rng = np.random.default_rng(0)
  np.savez(root / "prompts.npz", positive=rng.standard_normal((7, TEXT_DIM)).astype(np.float32),
           negative=rng.standard_normal((5, TEXT_DIM)).astype(np.float32))
  return root


def _tree(root, extra=()):
  """A FoundIR-like tree (`<category>/{LQ,HQ}/<id>`) with odd sizes and one corrupt file."""
  rng = np.random.default_rng(3)
  sizes = {"01Blur/LQ/a.png": (40, 50), "01Blur/LQ/b.jpg": (33, 64), "05Noise/LQ/c.png": (47, 35),
           **dict(extra)}
  for rel, (h, w) in sizes.items():
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for side in ("LQ", "HQ"):
      f = root / "tree" / rel.replace("/LQ/", f"/{side}/")
      f.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(img).save(f, quality=95)
  (root / "tree" / "05Noise" / "LQ" / "broken.png").write_bytes(b"not an image")
  return sizes


def _args(model_dir, inp, out, *extra):
  return [f"--config={REPO / 'configs' / 'restore.py'}:tiny", f"--config.model={model_dir / 'model'}",
          f"--config.prompts={model_dir / 'prompts.npz'}", f"--config.input={inp}",
          f"--config.output={out}", "--config.steps=2", "--config.progress=false", *extra]


def _pngs(root):
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# ------------------------------------------------------------------------------- command


def test_help_lists_variants_and_fields(capsys):
  with pytest.raises(SystemExit) as e:
    restore.main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0
  assert "tiny: dtype='float32', param_dtype='float32', steps=4" in out
  assert "--config.mesh.fsdp=1" in out and "--config.guidance=None" in out
  assert "--config.distributed.coordinator_address=''" in out
  assert "--config.param_dtype=None" in out
  # what unset means, with today's defaults (folder.fallback_settings)
  assert "Fields shown as None are unset" in out and "model.json" in out
  assert "guidance=6.0" in out and "param_dtype='bfloat16'" in out


def test_config_and_its_errors(tmp_path, capsys):
  cfg = restore.parse([f"--config={REPO / 'configs' / 'restore.py'}", "--config.steps=7",
                           "--config.mesh.fsdp=-1", "--config.mesh.data=1"])
  assert (cfg.steps, cfg.guidance, cfg.seed, cfg.mesh.fsdp) == (7, None, None, -1)  # unset
  cfg, _ = folder.resolve_settings(cfg)  # no model folder: the defaults
  assert (cfg.steps, cfg.guidance, cfg.cfg_skip, cfg.seed) == (7, 6.0, 0.15, 43)
  from vbridge_jax.diffusion.sampler import SamplerConfig
  cfg, _ = folder.resolve_settings(restore.parse([]))
  assert restorer.sampler_config(cfg) == SamplerConfig()  # the one source
  assert restore.main(["--config.nope=1"]) == 1
  assert "nope" in capsys.readouterr().err
  assert restore.main([f"--config.input={tmp_path}"]) == 1
  assert "required: --config.model, --config.prompts, --config.output" in capsys.readouterr().err
  assert restore.main(["--config.model=m", "--config.prompts=p", f"--config.input={tmp_path}",
                           "--config.output=o", "--config.solver=heun"]) == 1
  assert "heun" in capsys.readouterr().err


@pytest.mark.slow
def test_restore_tree_resume_and_faults(model_dir, tmp_path, capsys, monkeypatch):
  sizes = _tree(tmp_path)
  inputs = {p: p.read_bytes() for p in sorted((tmp_path / "tree").rglob("*")) if p.is_file()}
  found, _ = jobs.find_inputs(tmp_path / "tree")
  assert len(found) == 4  # HQ/ folders are ground truth (data.files.is_ground_truth)
  out = tmp_path / "tree" / "restored"  # inside the input: excluded from it on every run
  rc = restore.main(_args(model_dir, tmp_path / "tree", out))
  cap = capsys.readouterr()
  assert rc == 1 and "broken.png" in cap.err and "compiling the restore step" in cap.out
  for rel, (h, w) in sizes.items():
    assert Image.open(out / rel.replace(".jpg", ".png")).size == (w, h), rel
  first = _pngs(out)
  assert len(first) == len(sizes) and not list(out.rglob("HQ"))
  summary = json.loads((out / jobs.SUMMARY).read_text())
  assert (summary["found"], summary["restored"], summary["failed"]) == (4, 3, 1)
  assert "broken.png" in summary["failures"][0] and summary["seconds_per_image"] > 0

  # resume: verified outputs are skipped; a truncated one (sidecar size mismatch) is redone
  (tmp_path / "tree" / "05Noise" / "LQ" / "broken.png").unlink()
  del inputs[tmp_path / "tree" / "05Noise" / "LQ" / "broken.png"]
  a = out / "01Blur" / "LQ" / "a.png"
  a.write_bytes(a.read_bytes()[:50])
  assert restore.main(_args(model_dir, tmp_path / "tree", out)) == 0
  assert "3 image(s) found, 2 already restored, 1 to do" in capsys.readouterr().out
  assert _pngs(out) == first
  assert restore.main(_args(model_dir, tmp_path / "tree", out)) == 0
  assert "3 image(s) found, 3 already restored, 0 to do" in capsys.readouterr().out
  shutil.move(out, tmp_path / "first")  # the later runs read the tree without it

  # a killed run: the first output written, the second killed after its PNG was renamed into
  # place but before its sidecar said finished; the rerun redoes only that one
  out2 = tmp_path / "killed"
  real, real_write = jobs.write_output, jobs._write_atomic
  calls = []

  def dying(img, dst, record, video=None):
    calls.append(dst)
    if len(calls) == 2:
      def write(data, path):
        if path == jobs.sidecar(dst) and b'"finished": true' in data:
          raise KeyboardInterrupt
        real_write(data, path)
      monkeypatch.setattr(jobs, "_write_atomic", write)
    real(img, dst, record, video)

  monkeypatch.setattr(jobs, "write_output", dying)
  with pytest.raises(KeyboardInterrupt):
    restore.main(_args(model_dir, tmp_path / "tree", out2, "--config.batch=8"))
  monkeypatch.setattr(jobs, "write_output", real)
  monkeypatch.setattr(jobs, "_write_atomic", real_write)
  assert calls[1].exists() and jobs.output_state(calls[1], {})[0] == jobs.UNFINISHED
  done = calls[0]
  stamp = done.stat().st_mtime_ns
  assert restore.main(_args(model_dir, tmp_path / "tree", out2)) == 0
  assert "1 already restored, 2 to do" in capsys.readouterr().out
  assert done.stat().st_mtime_ns == stamp and _pngs(out2) == first

  # disk full while writing: one line, exit 1, no partial file left
  out3 = tmp_path / "full"
  real_replace = os.replace

  def enospc(src, dst):
    if str(dst).endswith(".png"):
      raise OSError(errno.ENOSPC, "No space left on device")
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", enospc)
  assert restore.main(_args(model_dir, tmp_path / "tree", out3)) == 1
  monkeypatch.setattr(os, "replace", real_replace)
  err = capsys.readouterr().err
  assert "No space left on device" in err and "stopped" in err and "Traceback" not in err
  assert not [p for p in out3.rglob("*") if p.is_file() and p.parent != out3 / ".restore_status"
              and p.name != jobs.SUMMARY]

  # another seed: other bytes; the corrector after the base model: other bytes, same sizes
  other = _pngs_of_run(model_dir, tmp_path, "seed44", "--config.seed=44")
  assert other.keys() == first.keys() and all(other[k] != first[k] for k in first)
  drifted = _pngs_of_run(model_dir, tmp_path, "drift", f"--config.drift={model_dir / 'drift'}")
  assert drifted.keys() == first.keys() and all(drifted[k] != first[k] for k in first)
  assert {p: p.read_bytes() for p in inputs} == inputs  # inputs never touched


def _pngs_of_run(model_dir, tmp_path, name, *extra):
  assert restore.main(_args(model_dir, tmp_path / "tree", tmp_path / name, *extra)) == 0
  return _pngs(tmp_path / name)


def test_input_faults_before_the_model(model_dir, tmp_path, capsys):
  tree = tmp_path / "in" / "LQ"
  tree.mkdir(parents=True)
  for name in ("0001.png", "0001.jpg"):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tree / name)
  assert restore.main(_args(model_dir, tmp_path / "in", tmp_path / "o")) == 1
  err = capsys.readouterr().err
  assert "0001.jpg" in err and "0001.png" in err and "rename one" in err
  (tree / "0001.jpg").unlink()
  os.symlink(tmp_path / "gone.png", tree / "0002.png")
  found, problems = jobs.find_inputs(tmp_path / "in")
  assert len(found) == 1 and "dangling symlink" in problems[0] and "0002.png" in problems[0]
  blocker = tmp_path / "a_file"  # an output folder that cannot be created (also as root)
  blocker.write_text("x")
  assert restore.main(_args(model_dir, tmp_path / "in", blocker / "out")) == 1
  cap = capsys.readouterr()
  assert "cannot create the output folder" in cap.err and "loading the model" not in cap.out
  img = tree / "0001.png"
  assert restore.main(_args(model_dir, img, tree)) == 1  # would overwrite its input
  assert "overwrite an input" in capsys.readouterr().err
  bad = tmp_path / "bad.npz"
  np.savez(bad, positive=np.zeros((3, 7), np.float32), negative=np.zeros((3, 7), np.float32))
  assert restore.main(_args(model_dir, img, tmp_path / "o", f"--config.prompts={bad}")) == 1
  assert "bad.npz" in capsys.readouterr().err
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    if os.access(ro, os.W_OK):
      pytest.skip("running as root: permissions are not enforced")
    assert restore.main(_args(model_dir, tmp_path / "in", ro)) == 1
    cap = capsys.readouterr()
    assert "not writable" in cap.err and "loading the model" not in cap.out
  finally:
    ro.chmod(0o755)


def test_noise_is_per_image_and_seeded():
  r = restorer.Restorer.__new__(restorer.Restorer)
  r.seed = 43
  a = r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 0)
  b = r.noise(["x/b.png", None], (2, 4, 4, 8), 0)
  np.testing.assert_array_equal(a[1], b[0])  # independent of the batch it lands in
  assert not np.allclose(a[0], a[1]) and not b[1].any()  # a dummy row is zeros
  assert not np.allclose(a, r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 1))
  r.seed = 44
  assert not np.allclose(a, r.noise(["x/a.png", "x/b.png"], (2, 4, 4, 8), 0))


def test_schedule_pads_and_shares():
  from vbridge_jax.inference.jobs import Job, schedule
  jobs = [Job(Path(n), n, Path(n), plan_size(*hw)) for n, hw in
          [("b", (40, 40)), ("a", (40, 40)), ("c", (64, 90)), ("d", (33, 60))]]
  batches = schedule(jobs, 2)
  assert [[j and j.rel for j in b] for b in batches] == [["a", "b"], ["d", None], ["c", None]]


@pytest.mark.slow
def test_fsdp_tensor_restore_equals_replicated(model_dir, low_compile_effort):
  """The DiT sharded FSDP x tensor (4 x 2) samples the latents of the replicated one (1e-5
  relative); the Restorer API on the run's mesh (the trainer's use) gives the same images."""
  import jax
  from flax import nnx

  from vbridge_jax.checkpoints import load_dit, load_vae
  from vbridge_jax.diffusion.sampler import SamplerConfig
  from vbridge_jax.parallel import sharding as sh

  rng = np.random.default_rng(0)
  pos, neg = prompts.load_prompts(model_dir / "prompts.npz", TEXT_DIM)
  first = rng.standard_normal((8, 1, 4, 4, 8)).astype(np.float32)
  noise = rng.standard_normal((8, 2, 4, 4, 8)).astype(np.float32)
  images = [rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(3)]
  cfg = SamplerConfig(steps=2)
  rules = sh.DEFAULT_RULES
  latents, restored = {}, {}
  for name, sizes in (("replicated", {"data": 8}), ("fsdp_tensor", {"fsdp": 4, "tensor": 2})):
    mesh = sh.create_mesh(sizes)
    dit = load_dit(model_dir / "model", mesh, rules, dtype="float32")
    specs = {str(v.sharding.spec) for v in jax.tree.leaves(nnx.state(dit))}
    assert any("fsdp" in s for s in specs) == (name == "fsdp_tensor"), specs
    assert any("tensor" in s for s in specs) == (name == "fsdp_tensor"), specs
    graphdef, state = nnx.split(dit)
    put = lambda a: jax.device_put(a, sh.batch_sharding(mesh, a.ndim))
    ctx = [sh.replicated(mesh, a[None]) for a in (pos, neg)]
    with jax.set_mesh(mesh):
      out = restorer.sample_step(state, put(first), put(noise), *ctx, graphdef=graphdef,
                                config=cfg, rules=rules)
    latents[name] = np.asarray(out)
    vae = restorer.place(load_vae(model_dir / "model"), mesh, rules)
    r = restorer.Restorer(dit, vae, pos, neg, cfg, frames=5, mesh=mesh, rules=rules)
    restored[name] = r.restore(images, [f"{i}.png" for i in range(3)])
  ref = latents["replicated"]
  err = np.abs(latents["fsdp_tensor"] - ref).max() / np.abs(ref).max()
  assert err <= 1e-5, err
  for a, b, im in zip(restored["replicated"], restored["fsdp_tensor"], images):
    assert a.shape == b.shape == im.shape
    assert np.abs(a.astype(int) - b).max() <= 1


@pytest.mark.slow
def test_drift_data_job(model_dir, tmp_path):
  """README's drift-corrector data job in miniature: the base model restores the training
  tree into the layout `data.drift_outputs` reads; the drift pipeline's frame 0 is then the
  restored image and its last frame the GT."""
  from vbridge_jax.data import fewshot, pipeline
  src = tmp_path / "train"
  fewshot.build(src, per_category=1, size=64, categories=("Blur", "Noise"))
  out = tmp_path / "base_outputs"
  assert restore.main(_args(model_dir, src, out)) == 0
  restored = {p.relative_to(out): np.asarray(Image.open(p)) for p in out.rglob("*.png")}
  assert len(restored) == 2 and not list(out.rglob("GT"))
  it = pipeline.make_iterator(str(src), size=64, frames=5, global_batch_size=2, seed=0,
                              flips=False, drift_outputs=str(out))
  clip = np.asarray(next(it)["clip"])
  firsts = {to_uint8(c[0], "round").tobytes() for c in clip}
  assert firsts == {im.tobytes() for im in restored.values()}
  gts = {np.asarray(Image.open(p)).tobytes() for p in src.rglob("GT/*")}
  assert {to_uint8(c[-1], "round").tobytes() for c in clip} == gts


def test_video_output(model_dir, tmp_path):
  """`video=True` writes each sample's frames as an MP4 beside the PNG (the authors' writer)."""
  pytest.importorskip("vbridge_jax.data.video")
  Image.fromarray(np.full((40, 50, 3), 99, np.uint8)).save(tmp_path / "x.png")
  assert restore.main(_args(model_dir, tmp_path / "x.png", tmp_path / "o", "--config.video=true")) == 0
  mp4, png = tmp_path / "o" / "x.mp4", tmp_path / "o" / "x.png"
  settings = json.loads(jobs.sidecar(png).read_text())["settings"]
  assert mp4.stat().st_size > 0 and jobs.is_done(png, settings, video=True)
  mask = os.umask(0)
  os.umask(mask)
  for f in (mp4, png):  # the user's umask (mkstemp's 0600 before)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
  mp4.unlink()
  assert not jobs.is_done(png, settings, video=True)  # redone on resume


def test_frames_come_from_each_model_folder(tmp_path):
  from vbridge_jax.checkpoints.model_info import ModelInfo, write_model_info
  for name, frames in (("base", 9), ("drift", 5)):
    (tmp_path / name).mkdir()
    write_model_info(tmp_path / name, ModelInfo(frames=frames))
  cfg = restore.parse([f"--config.model={tmp_path / 'base'}", f"--config.drift={tmp_path / 'drift'}"])
  assert folder.frame_counts(cfg) == (9, 5)  # each its own
  cfg = restore.parse([f"--config.model={tmp_path / 'none'}"])
  assert folder.frame_counts(cfg) == (5, None)  # no model.json: the authors' 5
  cfg = restore.parse([f"--config.model={tmp_path / 'base'}", f"--config.drift={tmp_path / 'drift'}",
                           "--config.frames=13", "--config.drift_frames=9"])
  assert folder.frame_counts(cfg) == (13, 9)


@pytest.mark.slow
def test_aot_compiles_the_commands_step():
  from vbridge_jax import aot
  if not aot.has_libtpu():
    pytest.skip("libtpu is not installed")
  from vbridge_jax.configs import curriculum
  fn, static = aot.restore_step_lowering(None, None, type("C", (), {"patch_size": (1, 2, 2)}), (),
                                         vae=False)
  assert fn is restorer.sample_step and static["config"].steps == 50  # SamplerConfig's defaults
  config = curriculum.get_config("tiny_wan")
  [r] = aot.run(config, "v5e:2x2", steps=["restore"], restore_size="64x64", restore_frames=5)
  assert r.step == "restore" and r.batch == 4 and r.tokens == 2 * 2 * 2 and r.fits
