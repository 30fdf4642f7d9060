"""Flow matching for TI2V training: timestep sampling, noising, targets, masks, loss.

Conventions (Wan2.2 / diffusers `FlowMatchEulerDiscreteScheduler`):

- sigma in (0, 1); the DiT timestep is `t = 1000 * sigma`.
- noising: `x_t = (1 - sigma) * x0 + sigma * eps`; the DiT predicts the velocity
  `eps - x0` (the flow from data to noise).
- shift: `sigma = shift * u / (1 + (shift - 1) * u)` for u drawn on (0, 1); shift > 1
  moves mass towards the noisy end (Wan trains and samples with a shift).
- TI2V: the latent clip is `(B, F, H, W, C)`; frame 0 is the clean LQ latent. It is
  not noised and its tokens get timestep 0.
- The authors' objective (their `scripts/wan2.2/train.py`, TI2V mode; docs/fidelity.md):
  each sample is, with probability `t2v_ratio` (0.5), a plain text-to-video sample
  instead (frame 0 noised too, every token at t), and the loss averages over all latent
  frames, frame 0 included (`loss_frames="all"`). `t2v_ratio=0` with
  `loss_frames="generated"` (frames >= 1 of a TI2V sample) is this project's earlier
  objective, a named option.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000  # DiT timestep = NUM_TRAIN_TIMESTEPS * sigma (one constant: flow, sampler)
SAMPLING_KINDS = ("uniform", "logit_normal")
WEIGHTINGS = ("none", "cosmap")
LOSS_FRAMES = ("all", "generated")
DTYPES = ("float32", "bfloat16")  # the dtype of the noise, noisy latents and target


def shift_sigma(u: jax.Array, shift: float) -> jax.Array:
  """Applies the flow shift to u in [0, 1]: `shift * u / (1 + (shift - 1) * u)`."""
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(rng: jax.Array, batch: int, *, shift: float = 1.0, kind: str = "uniform",
                  min_sigma: float = 1e-3, max_sigma: float = 1.0,
                  logit_mean: float = 0.0, logit_std: float = 1.0) -> jax.Array:
  """Draws `(batch,)` float32 sigmas in [min_sigma, max_sigma] (before the shift).

  `uniform` draws u ~ U(min_sigma, max_sigma); `logit_normal` draws u = sigmoid(N(m, s))
  rescaled into the same range (SD3's density). The shift is applied last.
  """
  if kind not in SAMPLING_KINDS:
    raise ValueError(f"timestep sampling kind={kind!r} is not one of {', '.join(SAMPLING_KINDS)}")
  if not 0.0 <= min_sigma < max_sigma <= 1.0:
    raise ValueError(f"need 0 <= min_sigma < max_sigma <= 1, got {min_sigma}, {max_sigma}")
  if kind == "uniform":
    u = jax.random.uniform(rng, (batch,), jnp.float32)
  else:
    u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,), jnp.float32))
  u = min_sigma + (max_sigma - min_sigma) * u
  return shift_sigma(u, shift)


def _bcast(sigma: jax.Array, ndim: int) -> jax.Array:
  return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def frame_mask(num_frames: int, dtype=jnp.float32) -> jax.Array:
  """`(F,)`: 0 for the conditioning frame 0, 1 for every generated frame."""
  if num_frames < 2:
    raise ValueError(f"a TI2V clip needs at least 2 latent frames, got {num_frames}")
  return (jnp.arange(num_frames) > 0).astype(dtype)


def add_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
  """`x_t = (1 - sigma) x0 + sigma eps` on frames >= 1; frame 0 stays `x0[:, 0]`.

  x0, noise: `(B, F, H, W, C)`; sigma: `(B,)`. Computed in float32.
  """
  if x0.shape != noise.shape:
    raise ValueError(f"x0 {x0.shape} and noise {noise.shape} differ in shape")
  if x0.ndim != 5:
    raise ValueError(f"latents must be (B, F, H, W, C), got shape {x0.shape}")
  x0 = x0.astype(jnp.float32)
  s = _bcast(sigma.astype(jnp.float32), 5)
  xt = (1.0 - s) * x0 + s * noise.astype(jnp.float32)
  keep = _bcast(frame_mask(x0.shape[1]), 4)  # (F, 1, 1, 1)
  return keep * xt + (1.0 - keep) * x0


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The flow-matching regression target `eps - x0` (float32)."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def token_timesteps(sigma: jax.Array, latent_shape: Sequence[int],
                    patch_size: Sequence[int] = (1, 2, 2), *,
                    scale: float = NUM_TRAIN_TIMESTEPS) -> jax.Array:
  """TI2V DiT timesteps per latent frame `(B, F)`: 0 on frame 0, `scale * sigma` elsewhere.

  The one source of TI2V timesteps (training and the sampler, which passes its integer
  timesteps with `scale=1`). The timestep is constant within a frame, so it is given per
  frame: the DiT computes its time modulation once per frame and broadcasts it over the
  frame's tokens (`WanDiT` takes `(B, F)` per-frame and `(B, L)` per-token timesteps).
  Tokens are ordered (f, h, w) after patchifying with `patch_size` (pt, ph, pw); pt must
  be 1 so that frame 0 maps to whole tokens.
  """
  b, f, h, w = (int(v) for v in latent_shape[:4])
  pt, ph, pw = (int(p) for p in patch_size)
  if pt != 1:
    raise ValueError(f"TI2V masks need a temporal patch of 1, got patch_size={tuple(patch_size)}")
  if h % ph or w % pw:
    raise ValueError(f"latent {h}x{w} is not divisible by the patch {ph}x{pw}")
  if sigma.shape != (b,):
    raise ValueError(f"sigma must be ({b},), got {sigma.shape}")
  return scale * sigma.astype(jnp.float32)[:, None] * frame_mask(f)[None, :]


def loss_weight(sigma: jax.Array, weighting: str = "none") -> jax.Array:
  """Per-sample loss weights `(B,)`: `none` = 1, `cosmap` = 2 / (pi (1 - 2s + 2s^2))."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"loss weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}")
  sigma = sigma.astype(jnp.float32)
  if weighting == "none":
    return jnp.ones_like(sigma)
  return 2.0 / (jnp.pi * (1.0 - 2.0 * sigma + 2.0 * sigma * sigma))


def masked_mse(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None,
               frames: jax.Array | None = None) -> jax.Array:
  """Mean squared error (float32 scalar) over the frames that count; `weights (B,)` scale
  samples.

  `frames (B, F)` (1 = counts, 0 = not) selects frames per sample; the default is frames
  >= 1 of every sample. Each sample's error is the mean over its counted elements, and the
  loss is the mean over samples: with every frame counted it is the plain mean over
  B x F x H x W x C, the authors' `custom_mse_loss`.
  """
  if pred.shape != target.shape:
    raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  per_frame = jnp.mean(err, axis=tuple(range(2, err.ndim)))  # (B, F)
  if frames is None:
    frames = jnp.broadcast_to(frame_mask(err.shape[1]), per_frame.shape)
  frames = frames.astype(jnp.float32)
  per_sample = jnp.sum(per_frame * frames, axis=1) / jnp.maximum(jnp.sum(frames, axis=1), 1.0)
  if weights is not None:
    per_sample = per_sample * weights.astype(jnp.float32)
  return jnp.mean(per_sample)


def _full_timesteps(sigma: jax.Array, like: jax.Array) -> jax.Array:
  """`1000 * sigma` on every token, broadcast to the layout `token_timesteps` returned."""
  s = sigma.astype(jnp.float32).reshape(sigma.shape + (1,) * (like.ndim - 1))
  return jnp.broadcast_to(NUM_TRAIN_TIMESTEPS * s, like.shape).astype(like.dtype)


def ti2v_training_inputs(x0: jax.Array, rng: jax.Array, *, shift: float = 1.0,
                         kind: str = "uniform", patch_size: Sequence[int] = (1, 2, 2),
                         weighting: str = "none", t2v_ratio: float = 0.0,
                         loss_frames: str = "generated", cond: jax.Array | None = None,
                         dtype: str = "float32") -> dict[str, jax.Array]:
  """Everything one training step needs from clean latents `x0 (B, F, H, W, C)`.

  `t2v_ratio`: the probability that a sample is plain text-to-video (frame 0 noised like
  the rest, every token at `1000 * sigma`) rather than TI2V (frame 0 clean at t = 0),
  drawn per sample: the authors draw once per step on each GPU with one clip per GPU.
  `loss_frames`: `all` (every latent frame, frame 0 included, on both kinds of sample:
  the authors') or `generated` (the noised frames: >= 1 for TI2V, all for T2V).
  `cond (B, 1, H, W, C)`: frame 0 of a TI2V sample's input (default `x0[:, :1]`, the
  target's own frame 0); the authors' conditioning latent is a second posterior draw
  (docs/fidelity.md). The target stays `eps - x0` on every frame.
  `dtype`: `float32`, or `bfloat16` as the authors' script computes them (their noise,
  latents, sigmas, noisy latents and target are bf16 tensors; train.py:1773-1809): `x_t`
  and `target` are then bf16, rounded at each operation; timesteps stay float32.

  Returns `x_t` (DiT input), `t` (per-frame timesteps `(B, F)`, `token_timesteps`' layout),
  `target` (`eps - x0`), `sigma (B,)`, `weight (B,)`, `t2v (B,)` bool and
  `frames (B, F)` (the frames the loss counts, for `masked_mse`).
  """
  if loss_frames not in LOSS_FRAMES:
    raise ValueError(f"loss_frames={loss_frames!r} is not one of {', '.join(LOSS_FRAMES)}")
  if not 0.0 <= t2v_ratio <= 1.0:
    raise ValueError(f"t2v_ratio must be in [0, 1], got {t2v_ratio}")
  if dtype not in DTYPES:
    raise ValueError(f"flow dtype={dtype!r} is not one of {', '.join(DTYPES)}")
  b, f = x0.shape[:2]
  if cond is not None and cond.shape != (b, 1) + x0.shape[2:]:
    raise ValueError(f"cond must be {(b, 1) + x0.shape[2:]} (frame 0), got {cond.shape}")
  k_sigma, k_noise = jax.random.split(rng)
  sigma = sample_sigmas(k_sigma, b, shift=shift, kind=kind)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  t = token_timesteps(sigma, x0.shape, patch_size)
  if dtype == "bfloat16":  # every operand and result bf16, as torch computes them
    x0, noise = x0.astype(jnp.bfloat16), noise.astype(jnp.bfloat16)
    s = _bcast(sigma.astype(jnp.bfloat16), 5)
    full = (1 - s) * x0 + s * noise
    x_t = jnp.concatenate([x0[:, :1], full[:, 1:]], axis=1)
  else:
    x_t = add_noise(x0, noise, sigma)
    full = None
  if cond is not None:  # frame 0 of a TI2V input: the conditioning latent
    x_t = jnp.concatenate([cond.astype(x_t.dtype), x_t[:, 1:]], axis=1)
  t2v = jnp.zeros((b,), bool)
  if t2v_ratio > 0:  # a separate key: t2v_ratio = 0 keeps the streams of earlier runs
    t2v = jax.random.bernoulli(jax.random.fold_in(rng, 2), t2v_ratio, (b,))
    if full is None:
      s = _bcast(sigma, 5)
      full = (1.0 - s) * x0.astype(jnp.float32) + s * noise
    x_t = jnp.where(_bcast(t2v, 5), full, x_t)
    t = jnp.where(_bcast(t2v, t.ndim), _full_timesteps(sigma, t), t)
  generated = jnp.where(t2v[:, None], 1.0, frame_mask(f)[None, :])
  frames = jnp.ones((b, f), jnp.float32) if loss_frames == "all" else generated
  target = noise - x0 if dtype == "bfloat16" else velocity_target(x0, noise)
  return dict(x_t=x_t, t=t, target=target, sigma=sigma,
              weight=loss_weight(sigma, weighting), t2v=t2v, frames=frames)
