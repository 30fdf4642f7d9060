"""A per-stage latent cache: the frozen VAE encodes a stage's batches once, then the DiT
trains on the stored latents.

With `config.latent_cache.enabled`, each curriculum stage draws `latent_cache.batches`
batches from the input pipeline (0: one per step of the stage), encodes them with the
frozen VAE (one jitted, batch-sharded function) and writes
`<dir>/stage<i>_<size>px_<key>.npz` (float32 normalised latents `z (N, B, F, h, w, C)`
and the first rows' LQ and GT frames for sample grids). Training then cycles through the
N stored batches in order. The file name's key hashes everything that decides its
content (data, stage, seed, frames, batch, VAE), so several runs (other meshes, a rerun
after a crash) can share one `latent_cache.dir`. Files are written to a temporary name
and renamed, so a killed run never leaves a partial cache.

The trade-off: a cache of N batches repeats the same crops and flips every N steps, so
it suits few-shot sets and quick experiments; the default (encode in the step) draws a
fresh augmentation for every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from vbridge_jax.parallel import sharding as sh
from vbridge_jax.utils import atomic

log = logging.getLogger(__name__)


def cache_key(config, stage, vae_config: dict[str, Any]) -> str:
  """A short hash of everything that determines a stage's cached latents."""
  d = config.data
  key = dict(source=str(d.source), data_dir=str(d.data_dir), drift=str(d.drift_outputs),
             size=stage.size, stage=stage.index, steps=stage.end - stage.start,
             batches=int(config.latent_cache.batches), frames=int(d.frames),
             batch=int(d.batch_size), seed=int(config.seed), flips=bool(d.flips),
             balance=bool(d.balance), upscale=bool(d.allow_upscale), vae=vae_config,
             init_from=str(config.init_from), random_init=bool(config.random_init))
  if d.get("still", 0.0):  # only when set, so that the keys of earlier caches stay valid
    key["still"] = float(d.still)
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(config, workdir: str) -> str:
  return str(config.latent_cache.dir) or os.path.join(workdir, "latent_cache")


def make_encoder(vae_graphdef, mesh, compiler_options: dict[str, Any] | None = None):
  """A jitted `(vae_state, clip) -> normalised latents`, batch-sharded like the clip."""
  spec = sh.batch_sharding(mesh, 5)

  def encode(vae_state, clip):
    vae = nnx.merge(vae_graphdef, vae_state)
    return vae.normalize(vae.encode(clip)).astype(jax.numpy.float32)

  return jax.jit(encode, in_shardings=(None, spec), out_shardings=spec,
                 compiler_options=compiler_options)


def build(config, stage, iterator, encoder, vae_state, path: str, num_samples: int) -> None:
  """Encodes the stage's batches from `iterator` and writes the cache file at `path`."""
  n = int(config.latent_cache.batches) or (stage.end - stage.start)
  zs, lq, gt = [], None, None
  for i in range(n):
    clip = next(iterator)["clip"]
    zs.append(sh.to_host(encoder(vae_state, clip)))
    if i == 0:
      first = sh.to_host(clip[:num_samples]) if num_samples else np.zeros((0, 2, 1, 1, 3))
      lq, gt = first[:, 0], first[:, -1]
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.replacing(path) as tmp:
      np.savez(tmp, z=np.stack(zs), lq=lq, gt=gt)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"latent_cache_{stage.index}")
  log.info("latent cache: %d batches of stage %d written to %s", n, stage.index, path)


class LatentIterator:
  """Cycles through a stage's cached latent batches; checkpointable like a grain iterator.

  `next()` gives `{"latents": (B, F, h, w, C)}` sharded over `data x fsdp`; `lq`, `gt`
  hold the first rows' frames of batch 0 (for sample grids); the state is the position.
  """

  def __init__(self, path: str, mesh):
    with np.load(path) as f:
      self.z, self.lq, self.gt = f["z"], f["lq"], f["gt"]
    self.index = 0
    self._sharding = sh.batch_sharding(mesh, 5)

  def __len__(self) -> int:
    return len(self.z)

  def __next__(self) -> dict[str, jax.Array]:
    z = self.z[self.index % len(self.z)]
    self.index += 1
    return {"latents": jax.make_array_from_callback(z.shape, self._sharding, lambda i: z[i])}

  def get_state(self) -> dict[str, int]:
    return {"latent_index": self.index}

  def set_state(self, state: dict[str, int]) -> None:
    self.index = int(state["latent_index"])
