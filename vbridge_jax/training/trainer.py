"""The V-Bridge curriculum trainer: `train_and_evaluate(config, workdir)`.

A step: a batch of clips `(B, T, S, S, 3)` (frame 0 LQ, frame T-1 GT) -> frozen VAE encode
-> normalised latents -> flow-matching inputs (TI2V: frame 0 clean at t = 0; a fraction
`flow.t2v_ratio` plain text-to-video) -> DiT -> MSE over `flow.loss_frames` -> AdamW
(+ clipping) on the trainable parameters (all of them, or the LoRA adapters). Model and
optimizer state are created sharded over the `data, fsdp, context, tensor` mesh and the
step is one jitted, donating function. With `config.latent_cache.enabled` the VAE encodes
each stage's batches once up front (`training/latents.py`) and the step trains on the
cached latents.

The curriculum splits the run (`total_steps`, or `epochs` over the data) into stages by share; a stage change rebuilds the
input pipeline at the new size and keeps model and optimizer state (with
`optim.restart_per_stage` the optimizer restarts there: `optim.restart_state`). Checkpoints (orbax,
`workdir/checkpoints`) hold model, optimizer, step, stage and the data iterator; calling
again with the same workdir resumes (from the newest intact checkpoint; see
`training/checkpointing.py`), and a run that already finished writes nothing. Logs:
progress lines (a bar on a terminal), `workdir/metrics.jsonl`, TensorBoard events in
`workdir/tensorboard` (`training/logs.py`), sample grids (LQ | output | GT) in
`workdir/samples`, a `jax.profiler` trace with `config.profile`. A non-finite loss or
gradient norm stops the run with `NonFiniteLossError`, a failed checkpoint save with a
`CheckpointError`; only checkpoints from before either exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from vbridge_jax.diffusion import flow
from vbridge_jax.diffusion.sampler import Sampler, sampler_config
from vbridge_jax.evaluation import grids
from vbridge_jax.parallel import flops
from vbridge_jax.parallel import sharding as sh
from vbridge_jax.training import checkpointing, export, heldout, latents, optim, prior, setup
from vbridge_jax.training.checkpointing import Checkpointer, iterator_state, set_iterator_state
from vbridge_jax.training.logs import MetricsLogger
from vbridge_jax.utils import atomic, lock
from vbridge_jax.utils.errors import NonFiniteLossError, PreemptedError, VBridgeError

log = logging.getLogger(__name__)


def make_train_step(graphdef, vae_graphdef, config, *, patch_size, wrt, state_shardings,
                    batch_sharding, plan: setup.Plan | None = None):
  """The jitted step `(state, vae_state, x, context, step, nan_at) -> (state, metrics)`.

  `x` is a batch of clips `(B, T, S, S, 3)` encoded in the step by the frozen VAE (its
  posterior sampled with `config.vae_sample`, in `vae_sample_units`, the conditioning frame
  a second draw with `vae_sample_independent_cond`: `setup.encode_clips`; else its mean), or with
  `config.latent_cache.enabled` the cached normalised latents `(B, F, h, w, C)` (then
  `vae_state` is unused; the cache holds posterior means). `context` is
  `setup.load_context`'s `(2, L, D)`: the positive prompt, then the empty prompt that a
  fraction `config.data.text_drop` of the samples trains on; a `(1, L, D)` context (the
  positive prompt alone) is accepted when `text_drop` is 0. The flow-matching objective
  (`config.flow`: `t2v_ratio`, `loss_frames`, ...) is `flow.ti2v_training_inputs`'.
  `nan_at` (int32; -1 = never) makes the loss NaN at that step, a test hook that is an
  argument so that it does not change the compiled program. `plan`: the config's
  `setup.Plan` (resolved here when not given).
  """
  f = config.flow
  cached = bool(config.latent_cache.enabled)
  vae_sample = bool(config.get("vae_sample", False)) and not cached
  units = str(config.get("vae_sample_units", "normalized"))
  independent_cond = bool(config.get("vae_sample_independent_cond", False))
  flow_dtype = str(f.get("dtype", "float32"))
  plan = setup.plan(config) if plan is None else plan
  text_drop, t2v_ratio, loss_frames = plan.text_drop, plan.t2v_ratio, plan.loss_frames
  base_key = jax.random.key(int(config.seed))

  def step_fn(state, vae_state, x, context, step, nan_at):
    model, opt = nnx.merge(graphdef, state)
    key = jax.random.fold_in(base_key, step)
    if cached:
      x0, cond = x, None
    else:  # the posterior's units and the conditioning draw: setup.encode_clips
      x0, cond = setup.encode_clips(nnx.merge(vae_graphdef, vae_state), x, key,
                                    sample=vae_sample, units=units,
                                    independent_cond=independent_cond)
    inp = flow.ti2v_training_inputs(x0, key, shift=f.shift, kind=f.sampling,
                                    patch_size=patch_size, weighting=f.weighting,
                                    t2v_ratio=t2v_ratio, loss_frames=loss_frames, cond=cond,
                                    dtype=flow_dtype)
    b = x.shape[0]
    ctx = jnp.broadcast_to(context[:1], (b,) + context.shape[1:])
    if text_drop > 0:
      if context.shape[0] < 2:
        raise ValueError(f"data.text_drop={text_drop} needs the (2, L, D) context of "
                         f"setup.load_context (positive, empty); got {context.shape}")
      drop = jax.random.bernoulli(jax.random.fold_in(key, 13), text_drop, (b,))
      ctx = jnp.where(drop[:, None, None], context[1][None], ctx)

    def loss_fn(m):
      pred = m(inp["x_t"], inp["t"], ctx)
      return flow.masked_mse(pred, inp["target"], inp["weight"], inp["frames"])

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
  noise = np.asarray(jax.random.normal(jax.random.key(int(config.seed) + 7), z.shape, jnp.float32))
  # Unguided (the grids show the positive prompt alone), on the schedule training samples.
  scfg = sampler_config(config.samples, guidance=1.0, schedule="diffusers",
                        patch_size=tuple(model.config.patch_size))
  out = Sampler(model, scfg)(sh.replicated(mesh, noise), context[:1],  # the positive prompt
                             first_frame=sh.replicated(mesh, z[:, :1]))
  video = sh.to_host(vae.decode(vae.denormalize(out)))
  if jax.process_index() == 0:
    grids.save(path, [[grids.to_uint8(im) for im in (lq[i], video[i, -1], gt[i])]
                      for i in range(len(lq))], ["LQ", "output", "GT"])


def _sample_inputs(vae, batch, iterator, n: int, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lq, gt, latents) of the first `n` rows: the live batch, or the latent cache's batch 0."""
  if isinstance(iterator, latents.LatentIterator):
    n = min(n, len(iterator.lq))
    return iterator.lq[:n], iterator.gt[:n], iterator.z[0][:n]
  clip = sh.to_host(batch["clip"][:n])
  z = vae.normalize(vae.encode(sh.replicated(mesh, clip)))
  return clip[:, 0], clip[:, -1], sh.to_host(z)


def _stage_iterator(config, plan, source: str, stage, mesh, workdir: str, encoder, vae_state) -> Any:
  """The stage's grain iterator of clips, or a `LatentIterator` over its cached latents."""
  crop = plan.crop(stage.size)
  if encoder is None:
    return setup.make_iterator(config, source, stage, mesh, crop)
  key = latents.cache_key(config, stage, json.loads(plan.codec.to_json()))
  path = os.path.join(latents.cache_dir(config, workdir),
                      f"stage{stage.index}_{stage.size}px_{key}.npz")
  if not os.path.exists(path):
    latents.build(config, stage, setup.make_iterator(config, source, stage, mesh, crop), encoder,
                  vae_state, path, num_samples=int(config.samples.count))
  return latents.LatentIterator(path, mesh)


# The fields that fix a run's parameters and its demo data, each group with when it matters:
# resuming a checkpoint under other values would load the weights into another model, or
# train on other data, silently. The seed draws a random model's untrained parts (a tiny
# run's VAE) and the data order; the clip length is what the model learns (and exports).
_RUN_FIELDS = (
    (lambda c: True, (("model", "dit"), ("model", "vae"), ("model", "dit_overrides"),
                      ("model", "vae_overrides"), ("finetune",), ("seed",), ("data", "frames"))),
    (lambda c: c["finetune"] == "lora", (("lora", "rank"), ("lora", "targets"))),
    (lambda c: c["data"]["source"] == "demo",
     (("data", "demo_per_category"), ("data", "demo_heldout"), ("eval", "size"))),
)
_MISSING = object()


def _field(tree: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return _MISSING
    tree = tree[key]
  return tree


def _check_same_run(config, workdir: str) -> None:
  """Refuses to resume a run whose checkpoints were made with other `_RUN_FIELDS` values
  (`workdir/config.json` against this config); fields the saved file lacks are not compared."""
  saved_path = os.path.join(workdir, "config.json")
  if not (os.path.isfile(saved_path) and checkpointing.checkpoint_steps(workdir)):
    return
  try:
    with open(saved_path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise setup.ConfigError(f"{saved_path}: unreadable ({e}); it records the run to resume") from None
  now = json.loads(config.to_json_best_effort())
  for applies, paths in _RUN_FIELDS:
    if not applies(now):
      continue
    for path in paths:
      old, new = _field(saved, path), _field(now, path)
      if _MISSING not in (old, new) and old != new:
        raise setup.ConfigError(
            f"{saved_path}: the checkpoints in {workdir} were trained with {'.'.join(path)}="
            f"{json.dumps(old)}, this config has {json.dumps(new)}; resuming would load them "
            f"into another model or data set: use a new --workdir, or the run's own settings")


def _write_config(config, workdir: str) -> None:
  """`workdir/config.json` (atomic), written only once the config has been validated."""
  if jax.process_index() == 0:
    atomic.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def _rate_fields(config, plan, crop: int):
  """steps/s -> {tokens_per_sec, mfu} for a stage's clips (MFU on known device kinds only)."""
  tokens = plan.tokens(crop)  # from the codec's and the DiT's geometry
  step = flops.train_step_flops(plan.dit, tokens, int(config.data.batch_size), finetune=config.finetune,
                                lora_rank=int(config.lora.rank),
                                lora_targets=list(plan.lora_targets),
                                time_rows=plan.latent_frames)  # per-frame timesteps
  kind, n = jax.devices()[0].device_kind, jax.device_count()
  return lambda sps: flops.throughput(sps, step, kind, n)


def _stop_step(config, total: int) -> int:
  stop_at = int(config.get("stop_at_step", -1))
  return total if stop_at < 0 else min(stop_at, total)


class _Run:
  """One launch of the curriculum: the live state and the loop's parts.

  `train_stage` runs one stage's steps; after each step `_after_step` logs, saves and
  writes samples when due. Metrics stay on the device until a log line or a save needs
  them (`_fetch_metrics`), so the host never waits for a step it does not have to.
  """

  def __init__(self, config, plan, workdir: str, devices: list, source: str, total: int):
    self.config, self.plan, self.workdir, self.source = config, plan, workdir, source
    self.stages = setup.parse_stages(config.stages, total, plan.multiple)
    self.restart_per_stage = bool(config.optim.get("restart_per_stage", False))
    self.total, self.stop_at = total, _stop_step(config, total)
    self.mesh = sh.create_mesh(dict(config.mesh), devices)
    self.rules = sh.rules_from_config(config.logical_axis_rules)
    model, opt, vae, self.schedule = setup.build_state(config, self.mesh, self.rules, plan)
    self.dcfg = model.config
    wrt = nnx.LoRAParam if config.finetune == "lora" else nnx.Param
    self.graphdef, self.state = nnx.split((model, opt))
    self.vae_graphdef, self.vae_state = nnx.split(vae)
    n_train = sum(x.size for x in jax.tree.leaves(nnx.state(model, wrt)))
    del model, opt, vae
    self.context = _context(config, self.dcfg, self.mesh)
    self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                             every_steps=int(config.checkpoint.every_steps),
                             keep=int(config.checkpoint.keep),
                             use_async=bool(config.checkpoint.use_async))
    resumed, self.state, self.saved_data, self.saved_meta = self.ckpt.restore_latest(self.state)
    self.step = 0 if resumed is None else int(self.saved_meta["step"])
    self.first_step = self.step
    if resumed is not None and (self.saved_meta.get("stages") != str(config.stages)
                                or self.saved_meta.get("total_steps") != self.total):
      log.warning("resuming with a different schedule: checkpoint has stages=%s total=%s",
                  self.saved_meta.get("stages"), self.saved_meta.get("total_steps"))
    state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
    self.train_step = make_train_step(self.graphdef, self.vae_graphdef, config,
                                      patch_size=self.dcfg.patch_size, wrt=wrt,
                                      state_shardings=state_shardings,
                                      batch_sharding=sh.batch_sharding(self.mesh, 5))
    self.cached = bool(config.latent_cache.enabled)
    self.encoder = (latents.make_encoder(self.vae_graphdef, self.mesh, compiler_options(config))
                    if self.cached else None)
    self.nan_at = jnp.asarray(int(config.get("debug_nan_at_step", -1)), jnp.int32)
    self.debug_sigterm_at = int(config.get("debug_sigterm_at_step", -1))
    self.logger = MetricsLogger(workdir, self.total, self.step,
                                enabled=jax.process_index() == 0, progress=bool(config.progress))
    self.logger.write(f"mesh {dict(self.mesh.shape)} on {self.mesh.size} devices; {n_train:,} "
                      f"trainable parameters ({config.finetune}); " +
                      (f"resumed at step {self.step}" if resumed is not None
                       else "starting at step 0"))
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.last_row: dict[str, Any] = {}
    self.profile = _Profile(config.get("profile"), workdir)
    self.evaluator = heldout.Evaluator(config, workdir, self.dcfg, self.mesh, self.logger)

  # ------------------------------------------------------------------------ the stage

  def stage_iterator(self, stage) -> Any:
    """The stage's iterator, at the checkpoint's position when it was saved in this stage."""
    iterator = _stage_iterator(self.config, self.plan, self.source, stage, self.mesh, self.workdir,
                               self.encoder, self.vae_state)
    if self.saved_data is not None and self.saved_meta.get("stage") == stage.index:
      if self.saved_meta.get("latent_cache", False) == self.cached:
        set_iterator_state(iterator, self.saved_data)
      else:
        log.warning("latent_cache changed since the checkpoint: the stage's data restarts")
    self.saved_data = None
    return iterator

  def train_stage(self, stage) -> None:
    """Runs `stage` from the current step to its end (or the stop step)."""
    self.logger.write(f"stage {stage.index}: {stage.size}px, steps {stage.start}..{stage.end} "
                      f"(from {self.step})")
    if self.restart_per_stage and stage.index > 0 and self.step == stage.start:
      self.state = optim.restart_state(self.state)  # a new launch per stage (optim.py)
      self.logger.write(f"stage {stage.index}: optimizer restarted (optim.restart_per_stage)")
    iterator = self.stage_iterator(stage)
    self.logger.rate_fields = _rate_fields(self.config, self.plan, self.plan.crop(stage.size))
    end = min(stage.end, self.stop_at)
    while self.step < end:
      batch = self.train_one_step(iterator)
      self._after_step(stage, end, iterator, batch)

  # ------------------------------------------------------------------------- the step

  def train_one_step(self, iterator) -> dict[str, Any]:
    """Dispatches one step (asynchronously); its metrics wait in `pending`."""
    batch = next(iterator)
    if not self.pending and not self.last_row and self.step == self.first_step:
      self.logger.write("compiling the train step (the first step takes longer)")
    self.profile.before(self.step)
    with nnx.logical_axis_rules(self.rules):
      self.state, metrics = self.train_step(
          self.state, self.vae_state, batch["latents" if self.cached else "clip"],
          self.context, jnp.asarray(self.step, jnp.int32), self.nan_at)
    self.pending.append((self.step, metrics))
    self.step += 1
    self.profile.after(self.step, metrics)
    return batch

  def _after_step(self, stage, end: int, iterator, batch) -> None:
    step = self.step
    save = step == end or self.ckpt.should_save(step)
    if save or step % int(self.config.log_every) == 0 or step == end:
      self.ckpt.check()  # a failed background save stops the run before the next line
      fetched = self._fetch_metrics(stage)
      if step % int(self.config.log_every) == 0 or step == end:
        self._log(stage, fetched)
    if step == self.debug_sigterm_at:  # the tests' preemption notice, as a scheduler sends it
      os.kill(os.getpid(), signal.SIGTERM)
    save = self.ckpt.check_preemption(step) or save
    if save:
      self._save(stage, iterator, force=step == end or self.ckpt.preempted)
    if self.ckpt.preempted:
      self.ckpt.wait()
      raise PreemptedError(f"preempted (SIGTERM) at step {step}: saved a checkpoint of step "
                           f"{step} in {self.ckpt.directory}; rerun the command to resume")
    if self._samples_due(stage):
      self._write_samples(iterator, batch)
    if self.evaluator.due(step, stage):  # held-out restore + scores (training/heldout.py)
      self.evaluator.run(nnx.merge(self.graphdef, self.state)[0],
                         nnx.merge(self.vae_graphdef, self.vae_state), step)

  def _fetch_metrics(self, stage) -> list[dict[str, Any]]:
    """The pending steps' metrics on the host; a non-finite one stops the run."""
    fetched = jax.device_get([m for _, m in self.pending])
    for (s, _), m in zip(self.pending, fetched):
      bad = {k: float(v) for k, v in m.items() if not math.isfinite(float(v))}
      if bad:
        self.ckpt.wait()
        good = self.ckpt.latest_step()
        raise NonFiniteLossError(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {s + 1} "
            f"(stage {stage.index}, {stage.size}px); stopped. Last good checkpoint: "
            f"{'none' if good is None else f'step {good}'} in {self.ckpt.directory}")
    self.pending.clear()
    return fetched

  def _log(self, stage, fetched: list[dict[str, Any]]) -> None:
    if not fetched:
      return
    means = {k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[0]}
    self.last_row = self.logger.log(self.step, means | {
        "lr": float(self.schedule(self.step - 1 - self._schedule_origin(stage))), "stage": stage.index, "size": stage.size})

  def _schedule_origin(self, stage) -> int:
    """The step the lr schedule counts from: 0, or the stage's start with restarts."""
    return stage.start if self.restart_per_stage else 0

  # ------------------------------------------------------------------ checkpoints, samples

  def _save(self, stage, iterator, *, force: bool) -> None:
    meta = {"step": self.step, "stage": stage.index, "stage_size": stage.size,
            "stages": str(self.config.stages), "total_steps": self.total,
            "latent_cache": self.cached}
    self.ckpt.save(self.step, self.state, iterator_state(iterator), meta, force=force)

  def _samples_due(self, stage) -> bool:
    every = int(self.config.samples.every_steps)
    return every >= 0 and ((every > 0 and self.step % every == 0) or self.step == stage.end)

  def _write_samples(self, iterator, batch) -> None:
    model, _ = nnx.merge(self.graphdef, self.state)
    vae = nnx.merge(self.vae_graphdef, self.vae_state)
    lq, gt, z = _sample_inputs(vae, batch, iterator, int(self.config.samples.count), self.mesh)
    write_samples(model, vae, lq, gt, z, self.context, self.config,
                  os.path.join(self.workdir, "samples", f"step_{self.step:07d}.png"), self.mesh)

  def finish(self) -> None:
    """What a launch owes at the stop step when it resumed there (killed after its last save,
    during the last held-out evaluation or before `final.json`): that evaluation, unless its
    record is written, and the last logged row for `final.json`."""
    if self.step != self.first_step or self.step == 0:
      return
    stage = setup.stage_at(self.stages, self.step - 1)
    if self.evaluator.due(self.step, stage):
      done = os.path.exists(os.path.join(self.workdir, "eval", f"step_{self.step:07d}.json"))
      if jax.process_count() > 1:  # every process takes part in the evaluation, or none
        done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
      if not done:
        self.evaluator.run(nnx.merge(self.graphdef, self.state)[0],
                           nnx.merge(self.vae_graphdef, self.vae_state), self.step)
    if not self.last_row:
      self.last_row = last_logged_row(self.workdir, self.step)

  def close(self, failed: bool) -> None:
    """Waits for the last save and closes the logs; while failing, only the first error counts."""
    try:
      self.profile.close()
      self.ckpt.close()
    except Exception:
      if not failed:
        raise
    finally:
      self.logger.close()


class _Profile:
  """`config.profile`: a `jax.profiler` trace of steps `start_step..stop_step` (inclusive,
  counted from 1 like the logs) into `workdir/profile` (TensorBoard's profile plugin or
  Perfetto read it)."""

  def __init__(self, cfg, workdir: str):
    self.start = int(cfg.start_step) if cfg is not None else -1
    self.stop = int(cfg.stop_step) if cfg is not None else -1
    self.dir = os.path.join(workdir, "profile")
    self.active = False

  def before(self, step: int) -> None:
    """`step` steps are done; the next one is `step + 1`."""
    if self.start >= 1 and step + 1 == self.start and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, metrics) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(metrics)
      self.close()
      log.info("profile of steps %d..%d written to %s", self.start, self.stop, self.dir)

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the curriculum in `workdir`; returns the last logged metrics.

  Everything is validated before anything is written: a rejected config leaves the
  workdir as it was. A run that already reached its last step returns its recorded result
  and writes nothing.
  """
  setup.check_config(config)
  _check_same_run(config, workdir)
  sh.maybe_initialize_distributed(config.get("distributed"))
  devices = setup.check_devices(config)
  os.makedirs(workdir, exist_ok=True)
  with _one_trainer(workdir):  # before the first write (the demo set, the prior, config.json)
    return _train(config, workdir, devices)


def _train(config, workdir: str, devices: list) -> dict[str, Any]:
  source = setup.data_source(config, workdir)  # 'demo': built once into workdir/demo_data
  total = setup.total_steps(config, source)  # total_steps, or epochs over the data
  finished = checkpointing.finished(workdir, _stop_step(config, total))
  if finished is not None:
    log.info("%s already reached step %d; nothing to do", workdir, finished["step"])
    return finished
  resolve_init(config)  # a `prior:` init is built (once, cached) before the run starts
  plan = setup.plan(config)  # the config resolved once; the run's parts read it
  _write_config(config, workdir)
  run = _Run(config, plan, workdir, devices, source, total)
  failed = True
  try:
    with jax.set_mesh(run.mesh), run.ckpt.watch_sigterm():
      while run.step < run.stop_at:
        run.train_stage(setup.stage_at(run.stages, run.step))
      run.finish()
    failed = False
  finally:
    run.close(failed)
  if jax.process_index() == 0:
    atomic.write_text(os.path.join(workdir, "final.json"),
                      json.dumps({"step": run.step, "last": run.last_row}))
  return {"step": run.step, **run.last_row}


LOCK = ".train.lock"  # in the workdir, while a trainer runs in it


@contextlib.contextmanager
def _one_trainer(workdir: str):
  """One trainer per workdir (`utils.lock`; process 0 holds it, every process learns whether
  it got it): a second is refused in one line naming the holder, and the lock of a killed
  trainer passes to the next."""
  path = os.path.join(workdir, LOCK)
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(lock.exclusive(path, what=f"training in {workdir}"))
      except VBridgeError as e:
        error = e
    if jax.process_count() > 1 and bool(multihost_utils.broadcast_one_to_all(
        np.int32(error is not None))) and error is None:
      error = lock.LockedError(f"training in {workdir}: another trainer holds {path}")
    if error is not None:
      raise error
    yield


def last_logged_row(workdir: str, step: int) -> dict[str, Any]:
  """The last training row (not a held-out one) of `metrics.jsonl` up to `step`, or {}."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      lines = f.readlines()
  except OSError:
    return {}
  for line in reversed(lines):
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if "loss" in row and int(row.get("step", -1)) <= step:
      return row
  return {}


def resolve_init(config) -> None:
  """`init_from="prior:VARIANT"` -> the cached video prior's model folder, built on first
  use (`ensure_prior`); other values stay as they are."""
  if prior.is_prior(config.init_from):
    config.init_from = str(ensure_prior(prior.variant_of(config.init_from),
                                        progress=bool(config.get("progress", True))))


def ensure_prior(variant: str, *, progress: bool = True, log=print) -> Path:
  """The model folder of prior `variant`, trained and exported first if it is not cached."""
  config = prior.prior_config(variant)
  model = prior.model_dir(variant, config)
  folder = model.parent
  if (model / "model.json").is_file():
    log(f"video prior: reusing {model} (configs/prior.py:{variant})")
    return model
  log(f"video prior: building configs/prior.py:{variant} into {folder} (first use only; "
      f"{int(config.total_steps)} steps on the synthetic video corpus; set {prior.ENV} to move the cache)")
  config.progress = progress
  config.num_devices = prior.devices_for(int(config.data.batch_size))
  folder.mkdir(parents=True, exist_ok=True)
  train_and_evaluate(config, str(folder / "run"))
  export.export_run(folder / "run", model)
  log(f"video prior: wrote {model}")
  return model
