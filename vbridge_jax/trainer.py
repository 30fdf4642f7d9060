"""The V-Bridge curriculum trainer: `train_and_evaluate(config, workdir)`.

A step: a batch of clips `(B, T, S, S, 3)` (frame 0 LQ, frame T-1 GT) -> frozen VAE encode
-> normalised latents -> flow-matching TI2V inputs (frame 0 clean at t = 0) -> DiT ->
masked MSE over frames >= 1 -> AdamW (+ clipping) on the trainable parameters (all of
them, or the LoRA adapters). Model and optimizer state are created sharded over the
`data, fsdp, context, tensor` mesh and the step is one jitted, donating function. With
`config.latent_cache.enabled` the VAE encodes each stage's batches once up front
(`train_utils/latents.py`) and the step trains on the cached latents.

The curriculum splits `total_steps` into stages by share; a stage change rebuilds the
input pipeline at the new size and keeps model and optimizer state. Checkpoints (orbax,
`workdir/checkpoints`) hold model, optimizer, step, stage and the data iterator; calling
again with the same workdir resumes. Logs: a progress bar, `workdir/metrics.jsonl`,
TensorBoard events in `workdir/tensorboard`, sample grids (LQ | output | GT) in
`workdir/samples`. A non-finite loss or gradient norm stops the run with
`NonFiniteLossError`; only checkpoints from before it exist.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vbridge_jax import flow
from vbridge_jax import flops
from vbridge_jax import sharding as sh
from vbridge_jax.sampler import Sampler, SamplerConfig
from vbridge_jax.train_utils import evaluation, latents, setup
from vbridge_jax.train_utils.checkpointing import Checkpointer, iterator_state, set_iterator_state
from vbridge_jax.train_utils.metrics import MetricsLogger, save_grid

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN or inf; the run stopped."""


def make_train_step(graphdef, vae_graphdef, config, *, patch_size, wrt, state_shardings,
                    batch_sharding):
  """The jitted step `(state, vae_state, x, context, step, nan_at) -> (state, metrics)`.

  `x` is a batch of clips `(B, T, S, S, 3)` encoded in the step by the frozen VAE, or with
  `config.latent_cache.enabled` the cached normalised latents `(B, F, h, w, C)` (then
  `vae_state` is unused). `nan_at` (int32; -1 = never) makes the loss NaN at that step, a
  test hook that is an argument so that it does not change the compiled program.
  """
  f = config.flow
  cached = bool(config.latent_cache.enabled)
  base_key = jax.random.key(int(config.seed))

  def step_fn(state, vae_state, x, context, step, nan_at):
    model, opt = nnx.merge(graphdef, state)
    if cached:
      x0 = x
    else:
      vae = nnx.merge(vae_graphdef, vae_state)
      x0 = jax.lax.stop_gradient(vae.normalize(vae.encode(x)))
    inp = flow.ti2v_training_inputs(x0, jax.random.fold_in(base_key, step), shift=f.shift,
                                    kind=f.sampling, patch_size=patch_size, weighting=f.weighting)
    ctx = jnp.broadcast_to(context, (x.shape[0],) + context.shape[1:])

    def loss_fn(m):
      pred = m(inp["x_t"], inp["t"], ctx)
      return flow.masked_mse(pred, inp["target"], inp["weight"])

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
    loss = jnp.where(step == nan_at, jnp.nan, loss)
    grad_norm = optax.tree.norm(grads)
    opt.update(model, grads)
    return nnx.state((model, opt)), {"loss": loss, "grad_norm": grad_norm}

  return jax.jit(step_fn, donate_argnums=(0,),
                 in_shardings=(state_shardings, None, batch_sharding, None, None, None),
                 out_shardings=(state_shardings, None),
                 compiler_options=compiler_options(config))


def compiler_options(config) -> dict[str, Any] | None:
  """XLA options for the step and encoder compiles (`config.compiler_options`), or None."""
  opts = config.get("compiler_options")
  return dict(opts) if opts else None


def _context(config, dcfg, mesh) -> jax.Array:
  return sh.replicated(mesh, setup.load_context(config, dcfg))


def write_samples(model, vae, lq: np.ndarray, gt: np.ndarray, z: np.ndarray, context: jax.Array,
                  config, path: str, mesh) -> None:
  """Restores the LQ frames with the current model; PNG rows LQ | output | GT.

  lq, gt: `(n, S, S, 3)` frames in [-1, 1]; z: `(n, F, h, w, C)` normalised latents of
  their clips (frame 0 conditions the sampler), the same on every process. Every process
  runs the sampler (the model is sharded over all of them); process 0 writes the PNG.
  """
  s = config.samples
  noise = np.asarray(jax.random.normal(jax.random.key(int(config.seed) + 7), z.shape, jnp.float32))
  scfg = SamplerConfig(solver=s.solver, steps=int(s.steps), shift=float(s.shift),
                       guidance=1.0, schedule="diffusers",
                       patch_size=tuple(model.config.patch_size))
  out = Sampler(model, scfg)(sh.replicated(mesh, noise), context,
                             first_frame=sh.replicated(mesh, z[:, :1]))
  video = sh.to_host(vae.decode(vae.denormalize(out)))
  if jax.process_index() == 0:
    save_grid(path, [[lq[i], video[i, -1], gt[i]] for i in range(len(lq))])


def _sample_inputs(vae, batch, iterator, n: int, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lq, gt, latents) of the first `n` rows: the live batch, or the latent cache's batch 0."""
  if isinstance(iterator, latents.LatentIterator):
    n = min(n, len(iterator.lq))
    return iterator.lq[:n], iterator.gt[:n], iterator.z[0][:n]
  clip = sh.to_host(batch["clip"][:n])
  z = vae.normalize(vae.encode(sh.replicated(mesh, clip)))
  return clip[:, 0], clip[:, -1], sh.to_host(z)


def _stage_iterator(config, source: str, stage, mesh, workdir: str, encoder, vae_state) -> Any:
  """The stage's grain iterator of clips, or a `LatentIterator` over its cached latents."""
  if encoder is None:
    return setup.make_iterator(config, source, stage, mesh)
  key = latents.cache_key(config, stage, json.loads(setup.vae_config(config).to_json()))
  path = os.path.join(latents.cache_dir(config, workdir),
                      f"stage{stage.index}_{stage.size}px_{key}.npz")
  if not os.path.exists(path):
    latents.build(config, stage, setup.make_iterator(config, source, stage, mesh), encoder,
                  vae_state, path, num_samples=int(config.samples.count))
  return latents.LatentIterator(path, mesh)


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))


def _rate_fields(config, dcfg, crop: int):
  """steps/s -> {tokens_per_sec, mfu} for a stage's clips (MFU on known device kinds only)."""
  tokens = setup.latent_tokens(config, crop)  # from the codec's and the DiT's geometry
  step = flops.train_step_flops(dcfg, tokens, int(config.data.batch_size), finetune=config.finetune,
                                lora_rank=int(config.lora.rank),
                                lora_targets=str(config.lora.targets).split(","))
  kind, n = jax.devices()[0].device_kind, jax.device_count()
  return lambda sps: flops.throughput(sps, step, kind, n)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the curriculum in `workdir`; returns the last logged metrics."""
  setup.check_config(config)
  sh.maybe_initialize_distributed(config.get("distributed"))
  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)
  stages = setup.parse_stages(config.stages, int(config.total_steps), setup.pixel_multiple(config))
  total = int(config.total_steps)

  # ---------------------------------------------------------------- mesh and state
  n_dev = int(config.get("num_devices", 0))
  mesh = sh.create_mesh(dict(config.mesh), jax.devices()[:n_dev] if n_dev > 0 else None)
  rules = sh.rules_from_config(config.logical_axis_rules)
  act_rules = sh.activation_rules(rules)
  model, opt, vae, schedule = setup.build_state(config, mesh, rules)
  dcfg = model.config
  wrt = nnx.LoRAParam if config.finetune == "lora" else nnx.Param
  graphdef, state = nnx.split((model, opt))
  vae_graphdef, vae_state = nnx.split(vae)
  del model, opt
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  context = _context(config, dcfg, mesh)
  n_train = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0], wrt)))

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      every_steps=int(config.checkpoint.every_steps),
                      keep=int(config.checkpoint.keep), use_async=bool(config.checkpoint.use_async))
  start, saved_data, saved_meta = 0, None, {}
  latest = ckpt.latest_step()
  if latest is not None:
    state, saved_data, saved_meta = ckpt.restore(latest, state)
    start = int(saved_meta["step"])
    if saved_meta.get("stages") != str(config.stages) or saved_meta.get("total_steps") != total:
      log.warning("resuming with a different schedule: checkpoint has stages=%s total=%s",
                  saved_meta.get("stages"), saved_meta.get("total_steps"))

  train_step = make_train_step(graphdef, vae_graphdef, config, patch_size=dcfg.patch_size,
                               wrt=wrt, state_shardings=state_shardings,
                               batch_sharding=sh.batch_sharding(mesh, 5))
  cached = bool(config.latent_cache.enabled)
  encoder = latents.make_encoder(vae_graphdef, mesh, compiler_options(config)) if cached else None
  nan_at = jnp.asarray(int(config.get("debug_nan_at_step", -1)), jnp.int32)
  source = setup.data_source(config, workdir)
  logger = MetricsLogger(workdir, total, start, enabled=jax.process_index() == 0,
                         progress=bool(config.progress))
  logger.write(f"mesh {dict(mesh.shape)} on {mesh.size} devices; {n_train:,} trainable "
               f"parameters ({config.finetune}); " +
               (f"resumed at step {start}" if latest is not None else "starting at step 0"))
  stop_at = int(config.get("stop_at_step", -1))
  stop_at = total if stop_at < 0 else min(stop_at, total)
  log_every = max(1, int(config.log_every))
  sample_every = int(config.samples.every_steps)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last_row: dict[str, Any] = {}
  step = start
  evaluator = evaluation.Evaluator(config, workdir, dcfg, mesh, logger)

  def flush(stage, do_log: bool) -> None:
    """Fetches pending metrics; stops on a non-finite value; logs the mean."""
    nonlocal last_row
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      bad = {k: float(v) for k, v in m.items() if not math.isfinite(float(v))}
      if bad:
        ckpt.wait()
        good = ckpt.latest_step()
        logger.close()
        raise NonFiniteLossError(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {s + 1} "
            f"(stage {stage.index}, {stage.size}px); stopped. Last good checkpoint: "
            f"{'none' if good is None else f'step {good}'} in {ckpt.directory}")
    pending.clear()
    if do_log:
      means = {k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[0]}
      last_row = logger.log(step, means | {"lr": float(schedule(step - 1)), "stage": stage.index,
                                           "size": stage.size})

  try:
    with jax.set_mesh(mesh):
      while step < stop_at:
        stage = setup.stage_at(stages, step)
        iterator = _stage_iterator(config, source, stage, mesh, workdir, encoder, vae_state)
        if saved_data is not None and saved_meta.get("stage") == stage.index:
          if saved_meta.get("latent_cache", False) == cached:
            set_iterator_state(iterator, saved_data)
          else:
            log.warning("latent_cache changed since the checkpoint: the stage's data restarts")
        saved_data = None
        logger.write(f"stage {stage.index}: {stage.size}px, steps {stage.start}..{stage.end} "
                     f"(from {step})")
        logger.rate_fields = _rate_fields(config, dcfg, setup.crop_size(stage.size,
                                                                        setup.pixel_multiple(config)))
        end = min(stage.end, stop_at)
        while step < end:
          batch = next(iterator)
          with nnx.logical_axis_rules(act_rules):
            state, metrics = train_step(state, vae_state, batch["latents" if cached else "clip"],
                                        context, jnp.asarray(step, jnp.int32), nan_at)
          pending.append((step, metrics))
          step += 1
          save_due = step % int(config.checkpoint.every_steps) == 0 or step == end
          flush(stage, do_log=step % log_every == 0 or step == end) if (
              save_due or step % log_every == 0) else None
          if save_due:
            meta = {"step": step, "stage": stage.index, "stage_size": stage.size,
                    "stages": str(config.stages), "total_steps": total, "latent_cache": cached}
            ckpt.save(step, state, iterator_state(iterator), meta, force=True)
          if sample_every >= 0 and ((sample_every > 0 and step % sample_every == 0)
                                    or step == stage.end):
            m, _ = nnx.merge(graphdef, state)
            vae = nnx.merge(vae_graphdef, vae_state)
            lq, gt, z = _sample_inputs(vae, batch, iterator, int(config.samples.count), mesh)
            write_samples(m, vae, lq, gt, z, context, config,
                          os.path.join(workdir, "samples", f"step_{step:07d}.png"), mesh)
          if evaluator.due(step, stage):  # held-out restore + scores (train_utils/evaluation.py)
            evaluator.run(nnx.merge(graphdef, state)[0], nnx.merge(vae_graphdef, vae_state), step)
  finally:
    ckpt.close()
    logger.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final.json"), "w", encoding="utf-8") as f:
      json.dump({"step": step, "last": last_row}, f)
  return {"step": step, **last_row}
