"""The synthetic video corpus (vbridge_jax/data/video_corpus.py) and its Grain source."""

import numpy as np
import pytest

from vbridge_jax.data import pipeline
from vbridge_jax.data.video_corpus import SOURCE_NAME, CorpusConfig, VideoCorpus, contact_sheet


def test_clips_are_seeded_pure_functions():
  a, b = VideoCorpus(3, size=48, frames=5), VideoCorpus(3, size=48, frames=5)
  clip = a[7]["clip"]
  assert clip.shape == (5, 48, 48, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(clip, b[7]["clip"])
  assert not np.array_equal(clip, a[8]["clip"])
  assert not np.array_equal(clip, VideoCorpus(4, size=48, frames=5)[7]["clip"])
  assert len(a) >= 2 ** 40  # endless in practice


def test_still_shots_and_motion():
  """About 40% of the clips are still shots (every frame equal); the others change
  over time, by small steps (frame to frame much closer than two unrelated clips)."""
  corpus = VideoCorpus(0, size=48, frames=5)
  clips = [corpus[i]["clip"].astype(np.float32) for i in range(80)]
  still = [all(np.array_equal(c[0], f) for f in c[1:]) for c in clips]
  assert 0.25 < np.mean(still) < 0.55
  moving = [c for c, s in zip(clips, still) if not s]
  step = np.mean([np.abs(c[1] - c[0]).mean() for c in moving])
  unrelated = np.mean([np.abs(moving[i][0] - moving[i + 1][0]).mean() for i in range(len(moving) - 1)])
  assert 0 < step < 0.5 * unrelated


def test_scenes_have_the_statistics_of_natural_images():
  """Dead leaves: the whole range of intensities, and a power spectrum falling as 1/f^a as
  in photos (measured the same way, windowed, on 128-px versions of scikit-image's
  astronaut, coffee and chelsea: a = 2.7 .. 3.0; these scenes: 2.5 .. 3.2). White noise
  (a = 0) or smooth shapes alone (a >> 3.5) fail this."""
  corpus = VideoCorpus(1, size=128, frames=1)
  spectra, spreads = [], []
  for i in range(12):
    y = corpus[i]["clip"][0].astype(np.float32).mean(-1)
    spreads.append(np.percentile(y, 95) - np.percentile(y, 5))
    f = np.abs(np.fft.fftshift(np.fft.fft2((y - y.mean()) * np.hanning(128)[:, None] * np.hanning(128)))) ** 2
    yy, xx = np.indices(f.shape) - 64
    r = np.sqrt(xx ** 2 + yy ** 2).astype(int)
    radial = np.bincount(r.ravel(), f.ravel()) / np.bincount(r.ravel())
    k = np.arange(4, 48)
    spectra.append(-np.polyfit(np.log(k), np.log(radial[k]), 1)[0])  # power-spectrum exponent
  slope = np.median(spectra)
  assert 2.2 < slope < 3.4, slope
  assert np.median(spreads) > 60


def test_make_dataset_trains_on_it_and_resumes():
  ds = pipeline.make_dataset(SOURCE_NAME, size=40, crop=32, frames=5, global_batch_size=2, seed=5)
  it = iter(ds)
  batch = next(it)
  assert batch["clip"].shape == (2, 5, 32, 32, 3) and batch["clip"].dtype == np.float32
  assert -1.0 <= batch["clip"].min() and batch["clip"].max() <= 1.0
  np.testing.assert_array_equal(batch["category"], [0, 0])
  np.testing.assert_array_equal(batch["clip"][1], VideoCorpus(5, size=32, frames=5)[1]["clip"]
                                / np.float32(127.5) - 1)
  state = it.get_state()
  nxt = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["clip"], nxt["clip"])


def test_it_stands_alone():
  with pytest.raises(Exception, match="stands alone"):
    pipeline.make_dataset([SOURCE_NAME, SOURCE_NAME], size=32, frames=5, global_batch_size=2, seed=0)


def test_contact_sheet_and_config():
  sheet = contact_sheet(seed=0, clips=2, size=16, frames=5)
  assert sheet.shape == (2 * 18, 5 * 18, 3)
  assert CorpusConfig().still == 0.4
