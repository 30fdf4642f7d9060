"""Flow-matching samplers (UniPC order 2 and Euler) with TI2V first-frame conditioning and CFG.

The velocity model is any callable `model(x, t, context)`: `x (B, F, H, W, C)` channels-last
latents, `t (B,)`, or per latent frame `(B, F)` with TI2V conditioning (`flow.token_timesteps`,
0 on frame 0; `WanDiT` broadcasts it over each frame's tokens), `context
(B, L_text, text_dim)`; it returns the velocity `(B, F, H, W, C)` (flow matching: `x_t =
(1 - sigma) x0 + sigma noise`, `v = noise - x0`). A flax.nnx module is split into its graph
and state once and merged inside the jitted loop, so one compilation serves every step.

UniPC reproduces diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction", flow_shift=shift)` with its defaults (order 2, x0
prediction, bh2, lower-order warm-up and final step, corrector after every step but the
first): each predictor and corrector is a fixed linear combination of the current sample,
the last corrected sample and the last three x0 predictions, so the coefficients are
worked out once on the host (float64, from the same float32 sigmas) and the loop is a
`lax.scan` over steps. Two sigma schedules: `diffusers` (linspace(1, 1/1000) with
`sigma[0] -= 1e-6`) and `wan` (the original Wan2.2 `FlowUniPCMultistepScheduler` that the
authors' code uses: linspace(0.999, 0)); both shifted by `shift`, timesteps
`int(sigma * 1000)`.

TI2V (Wan2.2-TI2V-5B): frame 0 is the clean conditioning latent, its tokens get timestep 0,
and it is re-imposed on the sample after every step. Guidance: `v = v_neg + g (v_pos - v_neg)`
for steps `i < steps * (1 - cfg_skip)`, the conditional branch alone after that (the
authors' VideoX-Fun `cfg_skip_ratio`).

Numerics (`Numerics`, `SamplerConfig.numerics`): float32 between steps by default; the
authors' pipeline keeps the sample, its corrected copy and the x0 predictions in bf16 and
feeds the DiT per-token timesteps rounded through bf16, and `Numerics.authors()` does the
same (each piece is its own field, so each can be switched alone; docs/fidelity.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vbridge_jax.diffusion import flow
from vbridge_jax.diffusion.flow import NUM_TRAIN_TIMESTEPS
from vbridge_jax.utils.errors import ConfigError

SOLVERS = ("unipc", "euler")
SCHEDULES = ("diffusers", "wan")
# The dtypes a piece of `Numerics` can round through, and the named sets of them.
ROUNDINGS = ("float32", "bfloat16")
PRECISIONS = ("float32", "authors")

# Columns of the per-step coefficient table.
#   corrected = cX x + cA x_prev_corrected + cB m_prev + cC m_prev2 + cE m
#   next      = pA corrected + pB m + pC m_prev + pV v
_COLS = ("cX", "cA", "cB", "cC", "cE", "pA", "pB", "pC", "pV")


@dataclasses.dataclass(frozen=True)
class Numerics:
  """Where inference rounds through a lower precision; "float32": nowhere (the default).

  The authors' pipeline (VideoX-Fun `Wan2_2TI2VPipeline` with everything in bf16, their
  V-Bridge/inference.py) rounds at five places, one field each:

  - `vae_dtype`: the Wan VAE's compute dtype (None: as the `vae_dtype` setting or the model
    folder says); applied where the VAE is loaded (`inference.folder`);
  - `latent_dtype`: the sample, its corrected copy and the x0 predictions held between steps
    (and the velocity they are made from), frame 0 imposed in it;
  - `noise_dtype`: the initial noise, drawn in float32 and rounded to it;
  - `timestep_dtype`: the TI2V per-token timesteps the DiT sees (999 -> 1000 in bf16);
  - `decode_dtype`: the decoded frames, and `x / 2 + 0.5` computed in it, before `x 255`.

  Each is float32 or bfloat16 (`ROUNDINGS`); `numerics(precision)` gives the named sets.
  """

  vae_dtype: str | None = None
  latent_dtype: str = "float32"
  noise_dtype: str = "float32"
  timestep_dtype: str = "float32"
  decode_dtype: str = "float32"

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not (v in ROUNDINGS or (f.name == "vae_dtype" and v is None)):
        raise ConfigError(f"numerics {f.name}={v!r} is not one of {', '.join(ROUNDINGS)}")

  @classmethod
  def authors(cls) -> "Numerics":
    """The authors' inference: every piece in bf16."""
    return cls(**{f.name: "bfloat16" for f in dataclasses.fields(cls)})


def numerics(precision: str) -> Numerics:
  """The `Numerics` of a restore config's `precision`: "float32" (none rounded) or "authors"."""
  if precision == "float32":
    return Numerics()
  if precision == "authors":
    return Numerics.authors()
  raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def round_to(x: Any, dtype: str) -> jax.Array:
  """`x` rounded to the nearest `dtype` value (ties to even, as a cast), kept as float32.

  Written with integer operations on the float32 bits rather than a cast there and back, so
  that the rounding happens on every backend: a compiler allowed excess precision (XLA's
  default) may fold an f32 -> bf16 -> f32 pair of casts away.
  """
  x = jnp.asarray(x, jnp.float32)
  if dtype == "float32":
    return x
  if dtype != "bfloat16":
    raise ConfigError(f"cannot round to {dtype!r}: one of {', '.join(ROUNDINGS)}")
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) & jnp.uint32(0xFFFF0000)
  return jnp.where(jnp.isnan(x), x, jax.lax.bitcast_convert_type(bits, jnp.float32))


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampling settings; the defaults are the authors' released inference settings (their
  eval.sh: 50 UniPC steps on Wan's schedule, shift 5, guidance 6.0, cfg_skip_ratio 0.15), and
  the one source of them: configs/restore.py and `vbridge_jax.aot` read them from here."""

  solver: str = "unipc"
  steps: int = 50
  shift: float = 5.0
  schedule: str = "wan"
  guidance: float = 6.0
  cfg_skip: float = 0.15
  patch_size: tuple[int, int, int] = (1, 2, 2)
  # Guided steps run the conditional and unconditional passes as one forward of batch 2B
  # instead of two of batch B (same result up to float rounding; faster where one larger
  # batch uses the hardware better, see benchmarks/restore.py --batched-cfg).
  batched_cfg: bool = False
  # Where sampling rounds to bf16 (`Numerics`; static, so each set compiles once).
  numerics: Numerics = Numerics()

  def __post_init__(self):
    if self.solver not in SOLVERS:
      raise ValueError(f"solver={self.solver!r} is not one of {', '.join(SOLVERS)}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if self.steps < 1:
      raise ValueError(f"steps={self.steps} must be at least 1")
    if not 0.0 <= self.cfg_skip <= 1.0:
      raise ValueError(f"cfg_skip={self.cfg_skip} must be in [0, 1]")
    if not (math.isfinite(self.shift) and self.shift > 0):  # 0 or less: sigmas leave [0, 1]
      raise ValueError(f"shift={self.shift} must be a finite number > 0")
    if not (math.isfinite(self.guidance) and self.guidance >= 0):
      raise ValueError(f"guidance={self.guidance} must be a finite number >= 0")


# The user-facing sampling settings (patch_size comes from the model, numerics from a restore
# config's `precision`): configs/restore.py's fields.
SETTINGS = tuple(f.name for f in dataclasses.fields(SamplerConfig)
                 if f.name not in ("patch_size", "numerics"))


def sampler_config(fields: Any, **extra) -> SamplerConfig:
  """The one way a `SamplerConfig` is built from settings: the `SETTINGS` that `fields` (a
  mapping or ConfigDict: a restore config, the held-out evaluation's settings, the trainer's
  `samples` block) holds, the rest defaults; `extra` (e.g. `patch_size`, `numerics`) wins."""
  return SamplerConfig(**{f: fields[f] for f in SETTINGS if f in fields} | extra)


@dataclasses.dataclass(frozen=True)
class Schedule:
  sigmas: np.ndarray  # (N + 1,) float32, last 0
  timesteps: np.ndarray  # (N,) float32, integer-valued model timesteps


def flow_schedule(steps: int, shift: float = 5.0, kind: str = "diffusers") -> Schedule:
  """Shifted flow sigmas and model timesteps, exactly as the reference schedulers build them."""
  n = NUM_TRAIN_TIMESTEPS
  if kind == "diffusers":
    s = np.linspace(1.0, 1.0 / n, steps + 1)[:-1]
  elif kind == "wan":
    # Wan's scheduler: sigma_max/min are float32 items of 1 - linspace(1, 1/n, n)[::-1].
    sigma_max = float(np.float32(1.0 - 1.0 / n))
    s = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
  else:
    raise ValueError(f"schedule={kind!r} is not one of {', '.join(SCHEDULES)}")
  s = shift * s / (1.0 + (shift - 1.0) * s)
  if kind == "diffusers" and abs(s[0] - 1.0) < 1e-6:
    s[0] -= 1e-6
  timesteps = (s * n).astype(np.int64).astype(np.float32)
  sigmas = np.concatenate([s, [0.0]]).astype(np.float32)
  return Schedule(sigmas=sigmas, timesteps=timesteps)


def unipc_orders(steps: int) -> np.ndarray:
  """Predictor order per step: 1 at the first (warm-up) and last (lower_order_final) step."""
  return np.array([1 if i == 0 else min(2, steps - i) for i in range(steps)], np.int64)


def unipc_coefficients(sigmas: np.ndarray) -> np.ndarray:
  """(N, 9) float64 table of the UniP-bh2 predictor and UniC-bh2 corrector coefficients."""
  sig = np.asarray(sigmas, np.float32).astype(np.float64)
  steps = len(sig) - 1
  alpha = 1.0 - sig
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sig)  # +inf at sigma = 0
  orders = unipc_orders(steps)
  table = np.zeros((steps, len(_COLS)))
  col = {c: j for j, c in enumerate(_COLS)}
  for i in range(steps):
    row = table[i]
    # Corrector (UniC) of the sample the previous predictor produced.
    if i == 0:
      row[col["cX"]] = 1.0
    else:
      q = orders[i - 1]
      h = lam[i] - lam[i - 1]
      hh = -h
      h_phi_1 = np.expm1(hh)
      b_h = np.expm1(hh)
      a = alpha[i]
      row[col["cA"]] = sig[i] / sig[i - 1]
      row[col["cB"]] = -a * h_phi_1
      if q == 1:
        rho_last, rho0, rk = 0.5, 0.0, 1.0
      else:
        rk = (lam[i - 2] - lam[i - 1]) / h
        b1 = (h_phi_1 / hh - 1.0) / b_h
        b2 = ((h_phi_1 / hh - 1.0) / hh - 0.5) * 2.0 / b_h
        rho0, rho_last = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array([b1, b2]))
      # - a B_h (rho0 (m_prev2 - m_prev) / rk + rho_last (m - m_prev))
      row[col["cC"]] = -a * b_h * rho0 / rk
      row[col["cB"]] += a * b_h * rho0 / rk + a * b_h * rho_last
      row[col["cE"]] = -a * b_h * rho_last
    # Predictor (UniP) from sigma_i to sigma_{i+1}.
    if sig[i + 1] == 0.0:
      row[col["pB"]] = 1.0  # h = inf: x_{i+1} = x0 prediction (order 1 here, always)
      continue
    h = lam[i + 1] - lam[i]
    hh = -h
    h_phi_1 = np.expm1(hh)
    b_h = np.expm1(hh)
    a = alpha[i + 1]
    row[col["pA"]] = sig[i + 1] / sig[i]
    row[col["pB"]] = -a * h_phi_1
    if orders[i] == 2:
      rk = (lam[i - 1] - lam[i]) / h
      # - a B_h 0.5 (m_prev - m) / rk
      row[col["pB"]] += a * b_h * 0.5 / rk
      row[col["pC"]] = -a * b_h * 0.5 / rk
  return table


def euler_coefficients(sigmas: np.ndarray) -> np.ndarray:
  """(N, 9) table of the flow Euler step x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v."""
  sig = np.asarray(sigmas, np.float32).astype(np.float64)
  table = np.zeros((len(sig) - 1, len(_COLS)))
  table[:, _COLS.index("cX")] = 1.0
  table[:, _COLS.index("pA")] = 1.0
  table[:, _COLS.index("pV")] = sig[1:] - sig[:-1]
  return table


def guided_steps(steps: int, cfg_skip: float) -> np.ndarray:
  """Which steps use guidance: step i is unguided once i >= steps * (1 - cfg_skip)."""
  return np.array([not (i >= steps * (1.0 - cfg_skip)) for i in range(steps)])


def _pure(model: Any) -> tuple[tuple[str, Any], Any]:
  """(static model definition, params): an nnx module's graphdef and state, or the callable."""
  if isinstance(model, nnx.Module):
    graphdef, state = nnx.split(model)
    return ("nnx", graphdef), state
  return ("fn", model), None


def _apply(model_def: tuple[str, Any], params: Any, x, t, ctx):
  kind, obj = model_def
  if kind == "nnx":
    return nnx.merge(obj, params)(x, t, ctx)
  return obj(x, t, ctx)


def _pad_context(a: jax.Array, length: int) -> jax.Array:
  """Zero-pads (B, L, D) to `length` tokens (the model zero-pads to text_len anyway)."""
  return a if a.shape[1] == length else jnp.pad(a, ((0, 0), (0, length - a.shape[1]), (0, 0)))


class Sampler:
  """Samples latents with a velocity model (the loop compiles once per model, config and shape).

  `sampler(noise, context, negative=None, first_frame=None)` returns the final latent;
  `trajectory=True` also returns every intermediate latent `(N, B, F, H, W, C)` (the sample
  after each step, frame 0 re-imposed). Both are float32 (holding bf16 values when
  `config.numerics.latent_dtype` is bfloat16).
  """

  def __init__(self, model: Any, config: SamplerConfig = SamplerConfig()):
    self.config = config
    self.schedule = flow_schedule(config.steps, config.shift, config.schedule)
    if config.solver == "unipc":
      table = unipc_coefficients(self.schedule.sigmas)
    else:
      table = euler_coefficients(self.schedule.sigmas)
    self.coefficients = table.astype(np.float32)
    self.guided = guided_steps(config.steps, config.cfg_skip)
    self._model_def, self._params = _pure(model)

  def __call__(self, noise: jax.Array, context: jax.Array, negative: jax.Array | None = None,
               first_frame: jax.Array | None = None, *, trajectory: bool = False):
    """noise (B, F, H, W, C); context/negative (B, L, D) or (L, D); first_frame (B, 1, H, W, C)."""
    noise = jnp.asarray(noise, jnp.float32)
    b = noise.shape[0]
    context = self._batch(context, b)
    use_cfg = negative is not None and self.config.guidance != 1.0 and bool(self.guided.any())
    if use_cfg:
      negative = self._batch(negative, b)
      length = max(context.shape[1], negative.shape[1])
      context, negative = _pad_context(context, length), _pad_context(negative, length)
    else:
      negative = context
    if first_frame is not None:
      first_frame = jnp.asarray(first_frame, jnp.float32)
      if first_frame.shape[2:] != noise.shape[2:] or first_frame.shape[0] != b:
        raise ValueError(f"first_frame {first_frame.shape} does not match the latent {noise.shape}")
      first_frame = first_frame[:, :1]
    final, traj = _loop(self._model_def, self.config, self._params, noise, context, negative,
                        first_frame, jnp.asarray(self.coefficients),
                        jnp.asarray(self.schedule.sigmas), jnp.asarray(self.schedule.timesteps),
                        jnp.asarray(self.guided), trajectory=trajectory, use_cfg=use_cfg)
    return (final, traj) if trajectory else final

  @staticmethod
  def _batch(ctx: jax.Array, b: int) -> jax.Array:
    ctx = jnp.asarray(ctx, jnp.float32)
    if ctx.ndim == 2:
      ctx = ctx[None]
    if ctx.shape[0] == 1 and b > 1:
      ctx = jnp.broadcast_to(ctx, (b,) + ctx.shape[1:])
    return ctx


@functools.partial(jax.jit, static_argnames=("model_def", "cfg", "trajectory", "use_cfg"))
def _loop(model_def, cfg: SamplerConfig, params, noise, context, negative, first_frame, coeffs,
          sigmas, timesteps, guided, *, trajectory: bool, use_cfg: bool):
  """The whole sampling loop: one `lax.scan` over steps (compiled once per model and shape)."""
  b = noise.shape[0]
  num = cfg.numerics
  hold_dtype = jnp.dtype(num.latent_dtype)
  f32 = lambda a: a.astype(jnp.float32)

  def hold(a):
    """What is kept between steps: rounded to the latent dtype and stored in it."""
    return round_to(a, num.latent_dtype).astype(hold_dtype)

  if first_frame is not None:
    first_frame = hold(first_frame)

  def impose(x):
    if first_frame is None:
      return x
    return x.at[:, :1].set(first_frame)

  def velocity(x, t_scalar, guide):
    t = jnp.full((b,), t_scalar, jnp.float32)
    if first_frame is not None:
      t = flow.token_timesteps(t, x.shape, cfg.patch_size, scale=1.0)  # (B, F) per frame
      # The authors' per-token timesteps are `mask * t` with a bf16 mask: bf16 values.
      t = round_to(t, num.timestep_dtype)
    cond_v = lambda: _apply(model_def, params, x, t, context).astype(jnp.float32)
    if not use_cfg:
      return cond_v()
    if cfg.batched_cfg:
      def guided_v():
        both = jnp.concatenate
        v = _apply(model_def, params, both([x, x]), both([t, t]), both([context, negative]))
        v_pos, v_neg = v[:b].astype(jnp.float32), v[b:].astype(jnp.float32)
        return v_neg + cfg.guidance * (v_pos - v_neg)

      return jax.lax.cond(guide, guided_v, cond_v)

    v_pos = cond_v()

    def guided_v():
      v_neg = _apply(model_def, params, x, t, negative).astype(jnp.float32)
      return v_neg + cfg.guidance * (v_pos - v_neg)

    return jax.lax.cond(guide, guided_v, lambda: v_pos)

  def step(carry, xs):
    x, x_prev_c, m_prev, m_prev2 = carry
    c, sigma, t, guide = xs
    v = hold(velocity(x, t, guide))
    xf, vf, pf = f32(x), f32(v), f32(m_prev)
    m = hold(xf - sigma * vf)
    mf = f32(m)
    x_c = hold(c[0] * xf + c[1] * f32(x_prev_c) + c[2] * pf + c[3] * f32(m_prev2) + c[4] * mf)
    x_next = hold(c[5] * f32(x_c) + c[6] * mf + c[7] * pf + c[8] * vf)
    x_next = impose(x_next)
    return (x_next, x_c, m, m_prev), (f32(x_next) if trajectory else None)

  x0 = impose(hold(noise))
  zeros = jnp.zeros_like(x0)
  (final, _, _, _), traj = jax.lax.scan(step, (x0, zeros, zeros, zeros),
                                        (coeffs, sigmas[:-1], timesteps, guided))
  return f32(final), traj
