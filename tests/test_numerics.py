"""The authors' inference numerics (`sampler.Numerics`, restore's `precision`): each bf16 piece
alone against a direct computation, the switch's resolution, and float32 left as it was."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from vbridge_jax import restore
from vbridge_jax.diffusion import sampler as S
from vbridge_jax.inference import folder, restorer
from vbridge_jax.inference.geometry import to_uint8
from vbridge_jax.models import DiTConfig, VAEConfig, WanDiT, WanVAE
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.utils.errors import ConfigError

BF16 = ml_dtypes.bfloat16
B, F, H, W, C = 2, 3, 4, 6, 5


def bf16(x) -> np.ndarray:
  """The direct computation: numpy's cast through ml_dtypes' bfloat16 (round to nearest even)."""
  return np.asarray(x, np.float32).astype(BF16).astype(np.float32)


def representable(x) -> bool:
  x = np.asarray(x, np.float32)
  return bool(np.array_equal(x, bf16(x)))


def standin(x, t, ctx):
  """A nonlinear velocity of x, of the per-frame t and of ctx (as tests/test_sampler.py's)."""
  s = t[:, :, None, None, None] / 1000.0 if t.ndim == 2 else t[:, None, None, None, None] / 1000.0
  chan = jnp.linspace(-1.0, 1.0, x.shape[-1])
  bias = jnp.mean(ctx, axis=(1, 2))[:, None, None, None, None]
  return jnp.sin(1.3 * x + chan) * (1.0 - s) + 0.4 * x * s + bias - 0.2 * chan * s


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((B, F, H, W, C)).astype(np.float32)
  pos = rng.standard_normal((B, 7, 3)).astype(np.float32)
  neg = rng.standard_normal((B, 7, 3)).astype(np.float32) + 0.5
  first = rng.standard_normal((B, 1, H, W, C)).astype(np.float32)
  return noise, pos, neg, first


# -------------------------------------------------------------------------------- pieces


def test_round_to_is_a_bf16_cast():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.standard_normal(4096) * 10.0 ** rng.integers(-30, 30, 4096),
                      [999.0, 982.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -0.0, np.inf, -np.inf,
                       3.4e38, 1e-40]]).astype(np.float32)  # ties to even, overflow, subnormal
  got = np.asarray(jax.jit(lambda a: S.round_to(a, "bfloat16"))(x))
  np.testing.assert_array_equal(got, bf16(x))
  assert np.isnan(np.asarray(S.round_to(np.float32(np.nan), "bfloat16")))
  np.testing.assert_array_equal(np.asarray(S.round_to(x, "float32")), x)
  # The timesteps the authors' DiT sees: 999 -> 1000, 982 -> 984 (a tie, to even), 968 kept.
  np.testing.assert_array_equal(np.asarray(S.round_to([999.0, 982.0, 968.0], "bfloat16")),
                                [1000.0, 984.0, 968.0])


def test_named_numerics_and_their_errors():
  assert S.numerics("float32") == S.Numerics() == S.SamplerConfig().numerics
  authors = S.numerics("authors")
  assert authors == S.Numerics.authors() and set(vars(authors).values()) == {"bfloat16"}
  with pytest.raises(ConfigError, match=r"^precision='bf16' is not one of float32, authors$"):
    S.numerics("bf16")
  with pytest.raises(ConfigError, match=r"^numerics latent_dtype='float16' is not one of"):
    S.Numerics(latent_dtype="float16")
  assert "numerics" not in S.SETTINGS and "patch_size" not in S.SETTINGS  # not config fields


def _recorded_timesteps(numerics, first):
  """Every (B, F) timestep the model is called with, in call order."""
  seen = []

  def model(x, t, ctx):
    jax.debug.callback(lambda a: seen.append(np.asarray(a)), t, ordered=True)
    return standin(x, t, ctx)

  noise, pos, _, ff = _inputs(1)
  cfg = S.SamplerConfig(steps=6, guidance=1.0, numerics=numerics)
  out = S.Sampler(model, cfg)(noise, pos, None, ff if first else None)
  jax.block_until_ready(out)
  return np.stack(seen), S.flow_schedule(6, 5.0, "wan").timesteps


def test_per_token_timesteps_rounded_through_bf16():
  got, ts = _recorded_timesteps(S.Numerics(timestep_dtype="bfloat16"), first=True)
  assert got.shape == (6, B, F)
  assert not got[:, :, 0].any()  # frame 0: t = 0
  np.testing.assert_array_equal(got[:, :, 1:], np.broadcast_to(bf16(ts)[:, None, None],
                                                                 (6, B, F - 1)))
  assert ts[0] == 999 and got[0, 0, 1] == 1000  # the change the authors' pipeline makes
  plain, _ = _recorded_timesteps(S.Numerics(), first=True)
  np.testing.assert_array_equal(plain[:, :, 1:], np.broadcast_to(ts[:, None, None], (6, B, F - 1)))
  # Text-to-video (no frame 0): their timestep is the scheduler's int64 itself, not rounded.
  t2v, _ = _recorded_timesteps(S.Numerics(timestep_dtype="bfloat16"), first=False)
  np.testing.assert_array_equal(t2v, np.broadcast_to(ts[:, None], (6, B)))


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_latents_between_steps_are_bf16(solver):
  noise, pos, neg, first = _inputs(2)
  run = lambda num: S.Sampler(standin, S.SamplerConfig(
      solver=solver, steps=8, guidance=3.0, cfg_skip=0.25, numerics=num))(
          noise, pos, neg, first, trajectory=True)
  final, traj = run(S.Numerics(latent_dtype="bfloat16"))
  ref_final, ref_traj = run(S.Numerics())
  assert final.dtype == traj.dtype == jnp.float32
  assert representable(traj) and representable(final)
  np.testing.assert_array_equal(np.asarray(traj[:, :, :1]),
                                np.broadcast_to(bf16(first), traj[:, :, :1].shape))  # frame 0
  assert not representable(ref_traj)  # float32 latents are not rounded
  err = np.abs(np.asarray(final) - np.asarray(ref_final)).max()
  assert 0 < err < 0.1, err  # moved, by bf16 rounding only


def test_noise_drawn_in_float32_and_rounded():
  r = restorer.Restorer.__new__(restorer.Restorer)
  r.seed = 43
  names, shape = ["x/a.png", None], (2, 4, 4, 8)
  full, half = r.noise(names, shape, 0), r.noise(names, shape, 0, "bfloat16")
  assert half.dtype == np.float32 and representable(half) and not representable(full)
  np.testing.assert_array_equal(half, bf16(full))
  assert not half[1].any()  # a dummy row is still zeros


def test_decoded_frames_rounded_as_the_authors_decode_latents():
  rng = np.random.default_rng(3)
  y = np.clip(rng.standard_normal((4, 16, 16, 3)) * 0.6, -1, 1).astype(np.float32)
  y[0, 0, :3, 0] = [-1.0, 1.0, 0.0]
  # Their code on a bf16 tensor: (frames / 2 + 0.5).clamp(0, 1), then float, then x255 truncated.
  q = y.astype(BF16)
  v = np.clip(q / BF16(2) + BF16(0.5), BF16(0), BF16(1)).astype(np.float32)
  want = (v * np.float32(255)).astype(np.uint8)
  got = to_uint8(np.asarray(restorer.decoded_frames(jnp.asarray(y), "bfloat16")))
  np.testing.assert_array_equal(got, want)
  assert (want != to_uint8(y)).mean() > 0.05  # the rounding moves pixels a level (14% here)
  np.testing.assert_array_equal(np.asarray(restorer.decoded_frames(y)), y)


@pytest.mark.slow
def test_decode_step_rounds_the_decoders_output(low_compile_effort):
  vae = WanVAE(VAEConfig.tiny(), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(vae)
  z = jnp.asarray(np.random.default_rng(4).standard_normal((1, 2, 2, 2, 8)).astype(np.float32))
  with jax.set_mesh(jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("data",))):
    ref = np.asarray(restorer.decode_step(state, z, graphdef=graphdef))  # the fp32 output
    got = restorer.decode_step(state, z, graphdef=graphdef, decode_dtype="bfloat16")
  v = np.clip(ref.astype(BF16) / BF16(2) + BF16(0.5), BF16(0), BF16(1)).astype(np.float32)
  np.testing.assert_array_equal(to_uint8(np.asarray(got)), (v * np.float32(255)).astype(np.uint8))


# ---------------------------------------------------------------------------- the switch


def test_precision_resolution(tmp_path, capsys):
  model = tmp_path / "none"
  cfg, src = folder.resolve_settings(restore.parse([f"--config.model={model}"]))
  assert cfg.precision == "float32" and cfg.vae_dtype is None
  assert restorer.sampler_config(cfg) == S.SamplerConfig()
  assert folder.settings_line(cfg, src).endswith("precision float32 (from the defaults)")

  cfg, src = folder.resolve_settings(restore.parse([f"--config.model={model}",
                                                    "--config.precision=authors"]))
  assert (cfg.vae_dtype, src["vae_dtype"]) == ("bfloat16", "--config.precision")
  assert restorer.sampler_config(cfg).numerics == S.Numerics.authors()
  assert "VAE bfloat16" in folder.settings_line(cfg, src)
  # An explicit vae_dtype wins over the precision's.
  cfg, src = folder.resolve_settings(restore.parse(
      [f"--config.model={model}", "--config.precision=authors", "--config.vae_dtype=float32"]))
  assert (cfg.vae_dtype, src["vae_dtype"]) == ("float32", "--config")

  # A config without the field (built before it existed) is float32.
  old = restore.parse([f"--config.model={model}"])
  with old.unlocked():
    del old["precision"]
  assert restorer.sampler_config(folder.resolve_settings(old)[0]).numerics == S.Numerics()

  assert restore.main([f"--config.model={model}", "--config.prompts=p", f"--config.input={tmp_path}",
                       "--config.output=o", "--config.precision=bf16"]) == 1
  err = capsys.readouterr().err.strip()
  assert err == "error: precision='bf16' is not one of float32, authors"


@pytest.mark.slow
def test_restorer_with_the_authors_numerics(low_compile_effort):
  """The tiny models through the Restorer: the authors' numerics move the image a little; the
  latents it decodes are bf16 values; float32 numerics give the earlier bytes."""
  dit = WanDiT(DiTConfig.tiny(dtype="float32"), rngs=nnx.Rngs(0))
  vae = WanVAE(VAEConfig.tiny(), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(5)
  pos, neg = (rng.standard_normal((n, 32)).astype(np.float32) for n in (7, 5))
  img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
  cfg = S.SamplerConfig(steps=3)
  mesh = sh.create_mesh({"data": 1}, jax.local_devices()[:1])
  dit, vae = restorer.place(dit, mesh, sh.DEFAULT_RULES), restorer.place(vae, mesh, sh.DEFAULT_RULES)
  engine = lambda num: restorer.Restorer(dit, vae, pos, neg, S.dataclasses.replace(
      cfg, numerics=num), frames=5, mesh=mesh)
  base = engine(S.Numerics()).restore([img], ["a.png"])[0]
  authors = engine(S.Numerics.authors()).restore([img], ["a.png"])[0]
  assert base.shape == authors.shape == img.shape
  diff = np.abs(base.astype(int) - authors)
  assert 0 < diff.mean() < 10, diff.mean()

  # The sample step's output under the authors' latents: bf16 values.
  r = engine(S.Numerics.authors())
  graphdef, state, _ = r.stages[0]
  first = jnp.asarray(rng.standard_normal((1, 1, 2, 2, 8)).astype(np.float32))
  noise = jnp.asarray(bf16(rng.standard_normal((1, 2, 2, 2, 8))))
  with jax.set_mesh(mesh):
    lat = restorer.sample_step(state, first, noise, r.positive, r.negative, graphdef=graphdef,
                               config=r.config, rules=r.rules)
  assert representable(lat)
