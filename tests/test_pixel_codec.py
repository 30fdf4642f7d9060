"""The pixel codec: lossless on V-Bridge clips, not on other videos; folder dispatch; geometry."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vbridge_jax.checkpoints import load_vae
from vbridge_jax.data.clips import make_clip
from vbridge_jax.models import PixelCodec, PixelCodecConfig
from vbridge_jax.models.pixel_codec import write_config


def _pair(seed, h=24, w=32):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8),
          rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("frames", [5, 9, 13])
def test_lossless_on_vbridge_clips(frames):
  lq, gt = _pair(frames)
  clip = make_clip(lq, gt, frames)  # (2, T, H, W, 3)
  codec = PixelCodec(PixelCodecConfig())
  z = codec.encode(clip)
  assert z.shape == (2, 1 + (frames - 1) // 4, 6, 8, 48)
  out = np.asarray(codec.decode(codec.denormalize(codec.normalize(z))))
  np.testing.assert_allclose(out, clip, rtol=0, atol=2e-6)
  # Every frame, in uint8 pixels as restore writes them.
  np.testing.assert_array_equal(np.round((out[:, -1] + 1) * 127.5).astype(np.uint8), gt)


def test_not_lossless_on_a_non_linear_clip():
  lq, gt = _pair(1)
  clip = np.array(make_clip(lq, gt, 5))
  clip[:, 2] = -clip[:, 2]  # frame 2 leaves the LQ -> GT line
  codec = PixelCodec(PixelCodecConfig())
  out = np.asarray(codec.decode(codec.encode(clip)))
  np.testing.assert_allclose(out[:, [0, 4]], clip[:, [0, 4]], atol=2e-6)  # kept frames
  assert np.abs(out[:, 2] - clip[:, 2]).mean() > 0.1


def test_space_to_depth_layout_and_scale():
  codec = PixelCodec(PixelCodecConfig(scale=2.0))
  video = jnp.arange(1 * 1 * 4 * 4 * 3, dtype=jnp.float32).reshape(1, 1, 4, 4, 3) / 100
  z = codec.encode(video)
  # channel (py * 4 + px) * 3 + c holds pixel (py, px), colour c.
  np.testing.assert_allclose(z[0, 0, 0, 0].reshape(4, 4, 3), video[0, 0], atol=0)
  np.testing.assert_allclose(codec.normalize(z), 2.0 * z)
  with pytest.raises(ValueError, match="multiples of 4"):
    codec.encode(jnp.zeros((1, 5, 6, 8, 3)))


def test_split_merge_jit_and_config():
  codec = PixelCodec(PixelCodecConfig())
  graphdef, state = nnx.split(codec)
  assert not jax.tree.leaves(state)  # no parameters

  @jax.jit
  def roundtrip(state, x):
    c = nnx.merge(graphdef, state)
    return c.decode(c.denormalize(c.normalize(c.encode(x))))

  lq, gt = _pair(3, 8, 8)
  clip = make_clip(lq, gt, 5)
  np.testing.assert_allclose(roundtrip(state, clip), clip, atol=2e-6)
  cfg = codec.config
  assert (cfg.scale_factor_spatial, cfg.scale_factor_temporal, cfg.z_dim) == (4, 4, 48)
  assert PixelCodecConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_load_vae_dispatches_on_class_name(tmp_path):
  write_config(tmp_path / "vae", PixelCodecConfig(patch=2, temporal=4))
  stored = json.loads((tmp_path / "vae" / "config.json").read_text())
  assert stored["_class_name"] == "PixelCodec" and stored["patch"] == 2
  for path in (tmp_path, tmp_path / "vae"):
    codec = load_vae(path, dtype="float32")
    assert isinstance(codec, PixelCodec) and codec.config.z_dim == 12
  (tmp_path / "vae" / "config.json").write_text('{"_class_name": "PixelCodec", "patch": 0}')
  with pytest.raises(ValueError, match="config.json: bad PixelCodec"):
    load_vae(tmp_path)


def test_setup_geometry_follows_the_codec():
  from vbridge_jax.configs import curriculum
  from vbridge_jax.training import setup

  c = curriculum.get_config("tiny_scratch")  # random init: the geometry follows model.vae
  c.model.vae = "pixel"
  assert setup.pixel_multiple(c) == 8
  assert setup.crop_size(100, setup.pixel_multiple(c)) == 96
  assert setup.dit_config(c).in_channels == 48 == setup.dit_config(c).out_channels
  c.data.frames = 9
  assert setup.plan(c).tokens(64) == 3 * 8 * 8  # 3 latent frames of 16x16 latents, 2x2 patches
  c.model.vae = "tiny"
  assert setup.pixel_multiple(c) == 32 and setup.plan(c).tokens(64) == 3 * 2 * 2
