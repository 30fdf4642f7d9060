"""Flow matching for TI2V training: timestep sampling, noising, targets, masks, loss.

Conventions (Wan2.2 / diffusers `FlowMatchEulerDiscreteScheduler`):

- sigma in (0, 1); the DiT timestep is `t = 1000 * sigma`.
- noising: `x_t = (1 - sigma) * x0 + sigma * eps`; the DiT predicts the velocity
  `eps - x0` (the flow from data to noise).
- shift: `sigma = shift * u / (1 + (shift - 1) * u)` for u drawn on (0, 1); shift > 1
  moves mass towards the noisy end (Wan trains and samples with a shift).
- TI2V: the latent clip is `(B, F, H, W, C)`; frame 0 is the clean LQ latent. It is
  never noised, its tokens get timestep 0 and the loss covers frames >= 1 only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000  # DiT timestep = NUM_TRAIN_TIMESTEPS * sigma (one constant: flow, sampler)
SAMPLING_KINDS = ("uniform", "logit_normal")
WEIGHTINGS = ("none", "cosmap")


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


def masked_mse(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean squared error over frames >= 1 (float32 scalar); `weights (B,)` scale samples.

  Every generated element counts equally: the mean runs over B x (F - 1) x H x W x C.
  """
  if pred.shape != target.shape:
    raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))[:, 1:]
  per_sample = jnp.mean(err, axis=tuple(range(1, err.ndim)))
  if weights is not None:
    per_sample = per_sample * weights.astype(jnp.float32)
  return jnp.mean(per_sample)


def ti2v_training_inputs(x0: jax.Array, rng: jax.Array, *, shift: float = 1.0,
                         kind: str = "uniform", patch_size: Sequence[int] = (1, 2, 2),
                         weighting: str = "none") -> dict[str, jax.Array]:
  """Everything one training step needs from clean latents `x0 (B, F, H, W, C)`.

  Returns `x_t` (DiT input), `t` (per-frame timesteps `(B, F)`), `target` (`eps - x0`),
  `sigma (B,)` and `weight (B,)`.
  """
  k_sigma, k_noise = jax.random.split(rng)
  sigma = sample_sigmas(k_sigma, x0.shape[0], shift=shift, kind=kind)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  return dict(x_t=add_noise(x0, noise, sigma), t=token_timesteps(sigma, x0.shape, patch_size),
              target=velocity_target(x0, noise), sigma=sigma, weight=loss_weight(sigma, weighting))
