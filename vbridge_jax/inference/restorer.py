"""The restorer: a converted V-Bridge model (and optionally the drift corrector) turning
batches of degraded images into restored ones, on a device mesh.

`Restorer.plan` gives an image's working geometry (`inference.geometry`), `run_batch`
restores one batch of same-size images: frame 0 encoded, the clip sampled with first-frame
conditioning (`diffusion.sampler`), decoded, the last frame cropped back; the corrector, when
given, repeats the path on that output. The jitted steps (`sample_step`, `encode_step`,
`decode_step`, `restore_step`) are module functions so that `vbridge_jax.aot` compiles the
same ones. Noise is drawn per image from the seed and the image's relative path, so the bytes
do not depend on batching or on the number of processes. The config's `numerics`
(`sampler.Numerics`: float32, or the authors' bf16 pieces) also rounds the noise and the
decoded frames here. The command around it is
`python -m vbridge_jax.restore` (`inference.folder`: the folder loop).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from vbridge_jax.checkpoints import load_vae
from vbridge_jax.diffusion import sampler as sampling
from vbridge_jax.diffusion.sampler import SETTINGS, Sampler, SamplerConfig, round_to
from vbridge_jax.inference.geometry import Plan, crop_work, from_work, plan_size, to_uint8, to_work  # noqa: F401
from vbridge_jax.inference.jobs import process_rows, size_batches
from vbridge_jax.parallel import sharding as sh

# ------------------------------------------------------------------------------------ steps


def _batch_spec(ndim: int) -> P:
  """The leading axis over data x fsdp of the current mesh (as `sharding.batch_sharding`)."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in sh.BATCH_AXES if not mesh.empty and mesh.shape.get(a, 1) > 1)
  lead = None if not axes else axes[0] if len(axes) == 1 else axes
  return P(lead, *([None] * (ndim - 1)))


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "rules"))
def sample_step(dit_state, first, noise, positive, negative, *, graphdef, config: SamplerConfig,
                rules):
  """The restore step: frame-0 latents `(B, 1, h, w, C)` -> sampled latents `(B, F, h, w, C)`.

  The DiT's state is sharded by `rules` on the current mesh (`jax.set_mesh`); the batch over
  data x fsdp. `vbridge_jax.aot --steps=restore` compiles this function.
  """
  with nnx.logical_axis_rules(rules):
    return Sampler(nnx.merge(graphdef, dit_state), config)(noise, positive, negative, first)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def encode_step(vae_state, images, *, graphdef):
  """`(B, H, W, 3)` in [-1, 1] -> normalised frame-0 latents `(B, 1, h, w, C)`."""
  codec = nnx.merge(graphdef, vae_state)
  return codec.normalize(codec.encode(images[:, None]))


def decoded_frames(video: jax.Array, dtype: str = "float32") -> jax.Array:
  """Decoded frames in [-1, 1] as the authors' `decode_latents` leaves them in `dtype`: the
  frames rounded to it, then `(x / 2 + 0.5).clamp(0, 1)` computed in it (one rounding per
  operation, as torch does in bf16); returned as `2 v - 1` in float32, which `to_uint8`'s
  float32 `x / 2 + 0.5` turns back into exactly `v` (v is a bf16 value in [0, 1])."""
  if dtype == "float32":
    return video
  v = jnp.clip(round_to(round_to(round_to(video, dtype) / 2.0, dtype) + 0.5, dtype), 0.0, 1.0)
  return v * 2.0 - 1.0


@functools.partial(jax.jit, static_argnames=("graphdef", "all_frames", "decode_dtype"))
def decode_step(vae_state, latent, *, graphdef, all_frames: bool = False,
                decode_dtype: str = "float32"):
  """Latents -> the last frame `(B, H, W, 3)` (or every frame `(B, T, H, W, 3)`) in [-1, 1]
  (rounded through `decode_dtype` as `decoded_frames` does)."""
  codec = nnx.merge(graphdef, vae_state)
  video = codec.decode(codec.denormalize(latent))
  out = decoded_frames(video if all_frames else video[:, -1], decode_dtype)
  return jax.lax.with_sharding_constraint(out, _batch_spec(out.ndim))


def restore_step(dit_state, vae_state, images, noise, positive, negative, *, dit_graphdef,
                 vae_graphdef, config: SamplerConfig, rules, all_frames: bool = False):
  """Images to restored frames: encode, `sample_step`, decode (AOT `--vae` compiles this)."""
  first = encode_step(vae_state, images, graphdef=vae_graphdef)
  latent = sample_step(dit_state, first, noise, positive, negative, graphdef=dit_graphdef,
                       config=config, rules=rules)
  return decode_step(vae_state, latent, graphdef=vae_graphdef, all_frames=all_frames,
                     decode_dtype=config.numerics.decode_dtype)


# ---------------------------------------------------------------------------------- models


def place(module: Any, mesh, rules) -> Any:
  """An nnx module's state put on `mesh` as `rules` shard it (unannotated arrays replicated)."""
  graphdef, state = nnx.split(module)
  shardings = sh.state_shardings(state, mesh, rules)

  def put(x, s):
    if isinstance(x, jax.Array) and x.sharding == s:
      return x  # already there (e.g. read straight into it)
    return jax.device_put(np.asarray(x), s)  # host values: the same on every process

  return nnx.merge(graphdef, jax.tree.map(put, state, shardings))


def load_codec(path: str | Path, mesh, **overrides) -> Any:
  """The model folder's VAE, read replicated over `mesh` (every process reads it whole);
  `overrides` set run-time switches (`dtype`; the pixel codec has none)."""
  return load_vae(path, sharding=jax.sharding.NamedSharding(mesh, P()), **overrides)


# -------------------------------------------------------------------------------- restorer


class Restorer:
  """Base model (+ optional drift corrector): batches of images in, uint8 images out.

  `mesh=None` builds a one-process mesh over the local devices and puts the models on it
  (replicated, or as `rules` say); given a mesh, the models are used as they are (already
  sharded on it, e.g. the trainer's live model or the command's loaded ones). `frames` is
  the base model's clip length, `drift_frames` the corrector's (default: `frames`).
  """

  def __init__(self, dit: Any, vae: Any, positive: np.ndarray, negative: np.ndarray,
               config: SamplerConfig, frames: int = 5, drift: Any = None, seed: int = 43,
               mesh=None, rules=None, drift_frames: int | None = None,
               quantize: str = "truncate"):
    self.rules = sh.rules_from_config(rules)
    if mesh is None:
      mesh = sh.create_mesh({"data": -1}, jax.local_devices())
      dit, vae = place(dit, mesh, self.rules), place(vae, mesh, self.rules)
      drift = None if drift is None else place(drift, mesh, self.rules)
    self.mesh = mesh
    temporal = int(vae.config.scale_factor_temporal)
    self.multiple = int(vae.config.scale_factor_spatial) * int(dit.config.patch_size[1])
    self.vae_graphdef, self.vae_state = nnx.split(vae)
    self.stages = []
    for model, f in ((dit, frames), (drift, drift_frames or frames)):
      if model is None:
        continue
      if f < 1 or (f - 1) % temporal:
        raise ValueError(f"frames={f}: must be 1 + {temporal}k for this codec")
      graphdef, state = nnx.split(model)
      self.stages.append((graphdef, state, 1 + (f - 1) // temporal))
    self.config = dataclasses.replace(config, patch_size=tuple(dit.config.patch_size))
    put = lambda a: sh.replicated(mesh, a[None])
    self.positive, self.negative = put(positive), put(negative)
    self.seed, self.quantize = seed, quantize
    self.compiled: set[tuple[int, ...]] = set()

  @property
  def batch_multiple(self) -> int:
    return sh.batch_shards(self.mesh)

  def plan(self, height: int, width: int) -> Plan:
    return plan_size(height, width, self.multiple)

  def noise(self, names: Sequence[str | None], shape: tuple[int, ...], stage: int,
            dtype: str = "float32") -> np.ndarray:
    """Per-image noise from the seed and the image's name (zeros for a dummy row), drawn in
    float32 and rounded to `dtype` (the authors draw bf16 noise: torch's float draws cast)."""
    base = jax.random.key(self.seed)
    size = int(np.prod(shape))
    out = []
    for n in names:
      if n is None:
        out.append(np.zeros(shape, np.float32))
        continue
      key = jax.random.fold_in(jax.random.fold_in(base, zlib.crc32(n.encode())), stage)
      # Drawn flat and reshaped: XLA:CPU compiles a rank-1 draw much faster than rank 4.
      draw = round_to(jax.random.normal(key, (size,), jnp.float32), dtype)
      out.append(np.asarray(draw).reshape(shape))
    return np.stack(out)

  def _global(self, rows: dict[int, np.ndarray], shape: tuple[int, ...]) -> jax.Array:
    """A global batch from the rows this process holds (missing rows: zeros)."""
    sharding = sh.batch_sharding(self.mesh, len(shape))
    zero = np.zeros(shape[1:], np.float32)

    def fetch(idx):
      rs = range(*idx[0].indices(shape[0]))
      return np.stack([rows.get(r, zero) for r in rs])[(slice(None),) + tuple(idx[1:])]

    return jax.make_array_from_callback(shape, sharding, fetch)

  @staticmethod
  def _local(x: jax.Array) -> dict[int, np.ndarray]:
    out = {}
    for shard in x.addressable_shards:
      data = np.asarray(shard.data)
      for j, r in enumerate(range(*shard.index[0].indices(x.shape[0]))):
        out[r] = data[j]
    return out

  def run_batch(self, rows: dict[int, tuple[np.ndarray, str]], batch: int, plan: Plan, *,
                all_frames: bool = False, log=None) -> dict[int, tuple[np.ndarray, Any]]:
    """One global batch of images of `plan`'s working size.

    `rows` maps the batch rows this process holds to (uint8 image, name); rows held by no
    image are dummy work. Every process calls this the same number of times. Returns, per
    row held, (the restored uint8 image, its frames at working size in [-1, 1] with
    `all_frames`, else None), or (None, None) where the decoded frames are not finite (a
    NaN in the weights, a senseless setting): a failed row, never an image.
    """
    images = {r: img for r, (img, _) in rows.items()}
    names = [rows[r][1] if r in rows else None for r in range(batch)]
    h, w = plan.work_h, plan.work_w
    out: dict[int, tuple[np.ndarray, Any]] = {}
    with jax.set_mesh(self.mesh):
      for k, (graphdef, state, latent_frames) in enumerate(self.stages):
        last = k == len(self.stages) - 1
        key = (k, batch, h, w)
        if log is not None and key not in self.compiled:
          log(f"compiling the restore step for {batch} x {h}x{w} (stage {k}; the first batch of "
              f"this size, may take minutes)")
        self.compiled.add(key)
        work = self._global({r: to_work(img, self.plan(*img.shape[:2]))
                             for r, img in images.items()}, (batch, h, w, 3))
        first = encode_step(self.vae_state, work, graphdef=self.vae_graphdef)
        shape = (latent_frames,) + first.shape[2:]
        num = self.config.numerics
        noise = self._global(dict(enumerate(self.noise(names, shape, k, num.noise_dtype))),
                             (batch,) + shape)
        latent = sample_step(state, first, noise, self.positive, self.negative, graphdef=graphdef,
                             config=self.config, rules=self.rules)
        video = decode_step(self.vae_state, latent, graphdef=self.vae_graphdef,
                            all_frames=all_frames and last, decode_dtype=num.decode_dtype)
        for r, frames in self._local(video).items():
          if r not in images:
            continue
          if not np.isfinite(frames).all():  # a failure, never an output (folder.py names it)
            out[r] = (None, None)
            continue
          lastf = frames[-1] if frames.ndim == 4 else frames
          restored = from_work(lastf, self.plan(*images[r].shape[:2]), self.quantize)
          out[r] = (restored, frames if frames.ndim == 4 else None)
        images = {r: o[0] for r, o in out.items() if o[0] is not None}
    return out

  def restore(self, images: list[np.ndarray], names: list[str], batch: int = 0) -> list[np.ndarray]:
    """uint8 images (the same lists on every process) -> restored uint8 images of their sizes.

    Images are grouped by working size in batches of `batch` (0: one per size;
    `jobs.size_batches`), each rounded up to the data-parallel axes; on several processes
    every one gets every result. An image whose restoration is not finite comes back black.
    """
    results: list[np.ndarray | None] = [None] * len(images)
    plans = [self.plan(*im.shape[:2]) for im in images]
    m = self.batch_multiple
    for chunk in size_batches([(p.work_h, p.work_w) for p in plans], batch):
      idx = [i for i in chunk if i is not None]
      size = -(-len(chunk) // m) * m
      held, _ = _rows(self.mesh, size)
      rows = {r: (images[idx[r]], names[idx[r]]) for r in held if r < len(idx)}
      out = self.run_batch(rows, size, plans[idx[0]])
      # a non-finite row comes back black (the held-out scores then show it)
      local = {r: o[0] if o[0] is not None else np.zeros(images[idx[r]].shape, np.uint8)
               for r, o in out.items()}
      if jax.process_count() > 1:  # every process gets every image
        local = _allgather_images(local, [images[i].shape for i in idx])
      for r, i in enumerate(idx):
        results[i] = local[r]
    return results


def _rows(mesh, batch: int) -> tuple[list[int], list[int]]:
  return process_rows(sh.batch_sharding(mesh, 1), batch)


def _allgather_images(local: dict[int, np.ndarray], shapes) -> dict[int, np.ndarray]:
  """Rows held by some process -> every row on every process (padded to one shape to gather)."""
  hmax, wmax = max(s[0] for s in shapes), max(s[1] for s in shapes)
  buf = np.zeros((len(shapes), hmax, wmax, 3), np.int32)
  have = np.zeros((len(shapes),), np.int32)
  for r, img in local.items():
    if r < len(shapes):
      buf[r, :img.shape[0], :img.shape[1]] = img
      have[r] = 1
  all_buf = np.asarray(multihost_utils.process_allgather(buf))
  all_have = np.asarray(multihost_utils.process_allgather(have))
  out = {}
  for r, s in enumerate(shapes):
    p = int(np.argmax(all_have[:, r]))
    out[r] = all_buf[p, r, :s[0], :s[1]].astype(np.uint8)
  return out


def sampler_config(config) -> SamplerConfig:
  """The `SamplerConfig` of a restore config's sampling fields (every one must be set) and its
  `precision` (`sampler.numerics`; "float32" when the config has none)."""
  missing = [f for f in SETTINGS if config.get(f) is None]
  if missing:
    raise ValueError(f"unset sampler fields: {', '.join(missing)}")
  return sampling.sampler_config(config,
                                 numerics=sampling.numerics(config.get("precision") or "float32"))
