"""The Grain pipeline: exact clip endpoints, aligned crops, determinism, resume, sharding,
balanced and drift modes, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.test_data_helpers import make_tree, save, smooth_image
from vbridge_jax.data import clips, pipeline, prepare
from vbridge_jax.utils.errors import DataError

KW = dict(frames=5, global_batch_size=2, seed=3, read_threads=2, prefetch_buffer_size=4)


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _pixels(frame):
  return np.rint((frame + 1.0) * 127.5)


def test_make_clip_endpoints_exact_and_linear():
  rng = np.random.default_rng(0)
  lq, gt = (rng.integers(0, 256, (2, 6, 7, 3), dtype=np.uint8) for _ in range(2))
  c = clips.make_clip(lq, gt, 9)
  assert c.shape == (2, 9, 6, 7, 3) and c.dtype == np.float32
  np.testing.assert_array_equal(c[:, 0], lq.astype(np.float32) / 127.5 - 1)
  np.testing.assert_array_equal(c[:, -1], gt.astype(np.float32) / 127.5 - 1)
  for t in range(9):
    np.testing.assert_allclose(c[:, t], (1 - t / 8) * c[:, 0] + t / 8 * c[:, -1], atol=1e-6)
  with pytest.raises(ValueError, match="4k"):
    clips.check_frames(6)


def test_crops_aligned_endpoints_exact(tmp_path):
  # S equals the short side: pure crops, so LQ = 255 - GT holds exactly in the clip.
  tree = make_tree(tmp_path / "t", {"A": 3, "B": 2}, h=32, w=48)
  for b in _take(pipeline.make_dataset(tree, size=32, **KW), 4):
    clip = b["clip"]
    assert clip.shape == (2, 5, 32, 32, 3) and b["category"].dtype == np.int32
    np.testing.assert_array_equal(_pixels(clip[:, 0]) + _pixels(clip[:, -1]), 255.0)
    mid = (clip[:, 0] + clip[:, -1]) / 2
    np.testing.assert_allclose(clip[:, 2], mid, atol=1e-6)


def test_resized_crops_and_flips_aligned(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 3}, h=40, w=64, lq_fn=lambda gt: gt)
  for b in _take(pipeline.make_dataset(tree, size=24, **KW), 3):
    np.testing.assert_array_equal(b["clip"][:, 0], b["clip"][:, -1])


def test_still_clips_replace_the_lq_by_the_gt_at_the_asked_rate(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 4}, h=32, w=32)  # LQ = 255 - GT: never still by chance
  rows = [(b["clip"][i, 0], b["clip"][i, -1]) for b in
          _take(pipeline.make_dataset(tree, size=24, still=0.5, **KW), 40) for i in range(2)]
  still = [np.array_equal(lq, gt) for lq, gt in rows]
  assert 25 <= sum(still) <= 55, sum(still)  # 80 draws at 1/2
  for lq, gt in rows:  # the others are the pair as before: LQ = 255 - GT in pixels
    if not np.array_equal(lq, gt):
      np.testing.assert_allclose(_pixels(lq), 255 - _pixels(gt), atol=1)
  plain = _take(pipeline.make_dataset(tree, size=24, **KW), 40)
  assert not any(np.array_equal(b["clip"][i, 0], b["clip"][i, -1]) for b in plain for i in range(2))
  with pytest.raises(ValueError, match="still"):
    pipeline.make_dataset(tree, size=24, still=1.5, **KW)


def test_deterministic_under_seed(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 3, "B": 3}, h=40, w=50)
  a = _take(pipeline.make_dataset(tree, size=24, **KW), 3)
  b = _take(pipeline.make_dataset(tree, size=24, **KW), 3)
  c = _take(pipeline.make_dataset(tree, size=24, **{**KW, "seed": 4}), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["clip"], y["clip"])
    np.testing.assert_array_equal(x["category"], y["category"])
  assert any(not np.array_equal(x["clip"], z["clip"]) for x, z in zip(a, c))


def test_resume_through_orbax_gives_the_next_batch(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 3, "B": 2}, h=30, w=40)
  ds = pipeline.make_dataset(tree, size=24, **KW)
  it = iter(ds)
  for _ in range(3):
    next(it)
  pipeline.save_iterator(it, tmp_path / "ckpt")
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  fresh = pipeline.restore_iterator(iter(pipeline.make_dataset(tree, size=24, **KW)),
                                    tmp_path / "ckpt")
  other = iter(pipeline.make_dataset(tree, size=24, **KW))
  other.set_state(state)
  for w in want:
    for got in (next(fresh), next(other)):
      np.testing.assert_array_equal(got["clip"], w["clip"])
      np.testing.assert_array_equal(got["category"], w["category"])


def test_global_arrays_for_a_sharding_match_host_batches(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 5, "B": 4}, h=20, w=30)
  mesh = jax.make_mesh((8,), ("data",))
  kw = {**KW, "global_batch_size": 8}
  host = _take(pipeline.make_dataset(tree, size=16, **kw), 2)
  dev = _take(pipeline.make_dataset(tree, size=16, sharding=NamedSharding(mesh, P("data")),
                                    **kw), 2)
  for h, d in zip(host, dev):
    assert isinstance(d["clip"], jax.Array) and d["clip"].shape == (8, 5, 16, 16, 3)
    assert d["clip"].sharding.spec[0] == "data" and len(d["clip"].addressable_shards) == 8
    np.testing.assert_allclose(np.asarray(d["clip"]), h["clip"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(d["category"]), h["category"])


def test_process_shards_are_disjoint_blocks_of_the_global_batch(tmp_path):
  """Process p reads rows [2p, 2p+2) of each global batch of 4: the processes' rows, put
  together, are the one-process batches row for row, whatever the process count."""
  import grain
  tree = make_tree(tmp_path / "t", {"A": 4, "B": 4}, h=16, w=16)
  kw = {**KW, "global_batch_size": 4, "frames": 5}
  seen = []
  for index in range(2):
    opts = grain.sharding.ShardOptions(shard_index=index, shard_count=2)
    ds = pipeline.make_dataset(tree, size=16, shard_options=opts, num_epochs=1, **kw)
    seen.append([b["clip"] for b in ds])
  assert len(seen[0]) == len(seen[1]) == 2
  rows = [_pixels(c[i, -1]).tobytes() for p in seen for c in p for i in range(2)]
  assert len(set(rows)) == 8
  single = list(pipeline.make_dataset(tree, size=16, num_epochs=1, **kw))
  for b, whole in enumerate(single):
    np.testing.assert_array_equal(np.concatenate([seen[0][b], seen[1][b]]), whole["clip"])


def test_balanced_rounds_hold_every_category(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 1, "B": 2, "C": 5}, h=16, w=16)
  ds = pipeline.make_dataset(tree, size=16, balance=True, **{**KW, "global_batch_size": 3})
  ids = pipeline.category_ids(["A", "B", "C"])
  for b in _take(ds, 4):
    assert sorted(b["category"].tolist()) == sorted(ids[c] for c in "ABC")


def test_drift_mode_uses_model_outputs(tmp_path):
  tree = make_tree(tmp_path / "t", {"A": 2}, h=16, w=16)
  for i in range(2):
    save(tmp_path / "out" / "A" / f"{i:03d}.png", np.full((16, 16, 3), 7, np.uint8))
  b = _take(pipeline.make_dataset(tree, size=16, drift_outputs=tmp_path / "out", **KW), 1)[0]
  np.testing.assert_array_equal(_pixels(b["clip"][:, 0]), 7.0)
  with pytest.raises(DataError, match="no model output"):
    pipeline.make_dataset(tree, size=16, drift_outputs=tmp_path / "missing", **KW)
  # restore's output of a paired tree: <category folder>/LQ/<id>.png, the folder numbered
  for i in range(2):
    save(tmp_path / "restored" / "07A" / "LQ" / f"{i:03d}.png", np.full((16, 16, 3), 9, np.uint8))
  b = _take(pipeline.make_dataset(tree, size=16, drift_outputs=tmp_path / "restored", **KW), 1)[0]
  np.testing.assert_array_equal(_pixels(b["clip"][:, 0]), 9.0)


def test_tfds_source_and_global_category_ids(tmp_path):
  tree = make_tree(tmp_path / "f", {"03Blur_JPEG": 2, "11Raindrop": 1}, h=20, w=20)
  prepare.prepare("foundir", str(tree), str(tmp_path / "tfds"))
  ds = pipeline.make_dataset("foundir", data_dir=tmp_path / "tfds", size=16, num_epochs=1,
                             **{**KW, "global_batch_size": 3})
  (b,) = list(ds)
  assert sorted(b["category"].tolist()) == [2, 2, 10]  # FoundIR folder number - 1
  np.testing.assert_array_equal(_pixels(b["clip"][:, 0]) + _pixels(b["clip"][:, -1]), 255.)


def test_bad_input(tmp_path):
  t = make_tree(tmp_path / "trunc", {"A": 3}, h=16, w=16)
  bad = t / "A" / "GT" / "001.png"
  bad.write_bytes(bad.read_bytes()[:60])
  with pytest.raises(DataError, match="001.png"):
    list(pipeline.make_dataset(t, size=16, num_epochs=1, **KW))
  got = list(pipeline.make_dataset(t, size=16, num_epochs=1, skip_bad=True,
                                   **{**KW, "global_batch_size": 1}))
  assert len(got) == 2
  small = make_tree(tmp_path / "small", {"A": 1}, h=16, w=20)
  with pytest.raises(DataError, match="larger than the image 20x16"):
    next(iter(pipeline.make_dataset(small, size=24, **KW)))
  assert next(iter(pipeline.make_dataset(small, size=24, allow_upscale=True, **KW)))[
      "clip"].shape[-2] == 24
  orphan = make_tree(tmp_path / "orphan", {"A": 2}, h=16, w=16)
  (orphan / "A" / "LQ" / "000.png").unlink()
  with pytest.raises(DataError, match="GT without its LQ.*000.png"):
    pipeline.make_dataset(orphan, size=16, **KW)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="empty data set"):
    pipeline.make_dataset(tmp_path / "empty", size=16, **KW)
  with pytest.raises(DataError, match="does not exist"):
    pipeline.make_dataset(tmp_path / "nope", size=16, **KW)
  mm = make_tree(tmp_path / "mm", {"A": 1}, h=16, w=16)
  save(mm / "A" / "LQ" / "000.png", smooth_image(1, 18, 16))
  with pytest.raises(DataError, match="size mismatch"):
    pipeline.make_dataset(mm, size=16, **KW)
