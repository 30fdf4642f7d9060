"""Orbax checkpoints of a training run: model + optimizer state, data iterator, metadata.

One `CheckpointManager` in `workdir/checkpoints` with three items per step:

- `state`: the nnx state of `(model, optimizer)` (sharded arrays; restored directly into
  the target shardings, so no host ever gathers a full copy);
- `data`: the Grain iterator state, one JSON file per process (grain's orbax handler);
  the state is captured when `save` is called, so an asynchronous save never races the
  iterator running ahead;
- `meta`: JSON with `step`, `stage` (index of the curriculum stage whose iterator is
  saved), `stage_size` and the stage plan.

When to save is orbax's decision (`save_interval_steps`, and a preemption notice on
clusters that send one); the trainer forces a save only at a stage end or a stop.

Faults, each ending in one line (`CheckpointError`) and losing nothing:
- a run killed during a save: orbax writes each step to a temporary folder and renames it
  when complete; the manager deletes such unfinished folders when it opens;
- a damaged checkpoint (a truncated chunk or JSON file, a missing item): `restore_latest`
  falls back to the newest intact step, moves the damaged one aside into
  `workdir/checkpoints.unreadable/` (never deleted) and says so; none intact is an error;
- a save that fails (a full disk), also in the background of an asynchronous save: found
  by `check` (the trainer calls it before each log line), `save` or `close`, naming the
  step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from vbridge_jax.utils.errors import CheckpointError

log = logging.getLogger(__name__)


class _IteratorSnapshot:
  """Stands in for a grain iterator in grain's orbax handler: a frozen state in, out."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state.decode() if isinstance(state, bytes) else state)

  def start_prefetch(self) -> None:
    pass


def iterator_state(iterator: Any) -> Any:
  """A JSON-serialisable state of a grain iterator (DatasetIterator or DataLoader)."""
  state = iterator.get_state()
  if isinstance(state, bytes):
    return {"__bytes__": state.decode()}
  return state


def set_iterator_state(iterator: Any, state: Any) -> None:
  if isinstance(state, dict) and "__bytes__" in state:
    iterator.set_state(state["__bytes__"].encode())
  else:
    iterator.set_state(state)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return (text[:300] + " ...") if len(text) > 300 else (text or type(e).__name__)


class Checkpointer:
  """Saves and restores training state; see the module docstring for the layout."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, use_async: bool = True):
    if every_steps < 1:
      raise ValueError(f"checkpoint every_steps must be >= 1, got {every_steps}")
    policies = checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, enable_async_checkpointing=use_async,
        create=True, cleanup_tmp_directories=True,
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(every_steps),
            policies.PreemptionCheckpointingPolicy()]))
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    self._in_flight: int | None = None  # the step of a save not yet known to have succeeded
    self.preempted = False  # a preemption notice was seen (`should_save`)
    self._sigterm = False
    self._good: int | None = self.manager.latest_step()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """orbax's save policy: every `every_steps`, or a preemption notice (then `preempted`)."""
    return self.check_preemption(step) or self.manager.should_save(step)

  def check_preemption(self, step: int) -> bool:
    """Whether a preemption notice has been seen, by `step` (it stays seen: `preempted`)."""
    self.preempted = self.preempted or self.reached_preemption(step)
    return self.preempted

  def reached_preemption(self, step: int) -> bool:
    """Whether to save for a preemption at `step`. Several processes: JAX's preemption
    service (`jax.distributed`; orbax asks it), which turns a SIGTERM on any host into one
    step at which every host saves. One process: a SIGTERM since `watch_sigterm`."""
    return self.manager.reached_preemption(step) or self._sigterm

  @contextlib.contextmanager
  def watch_sigterm(self):
    """Within the block, a SIGTERM to a one-process run is a preemption notice (saved at the
    next step, then the run stops); a second one kills as usual. With several processes
    JAX's preemption service owns the signal, and nothing is installed."""
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
      yield
      return

    def notice(signum, frame):
      self._sigterm = True
      signal.signal(signal.SIGTERM, signal.SIG_DFL)

    old = signal.signal(signal.SIGTERM, notice)
    try:
      yield
    finally:
      signal.signal(signal.SIGTERM, old)

  # ------------------------------------------------------------------------- failures

  def _failed(self, e: BaseException) -> CheckpointError:
    step = self._in_flight
    self._in_flight = None
    good = "none" if self._good is None else f"step {self._good}"
    return CheckpointError(
        f"saving checkpoint {'' if step is None else f'step {step} '}in {self.directory} "
        f"failed ({_one_line(e)}); stopped. Last good checkpoint: {good}")

  def _settled(self) -> None:
    """The save in flight (if any) has finished without an error."""
    if self._in_flight is not None:
      self._good = self._in_flight
      self._in_flight = None

  def check(self) -> None:
    """Raises `CheckpointError` if the last asynchronous save has finished and failed;
    never blocks on a save still in progress."""
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.wait()  # finished: returns at once, or raises its failure

  def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any], *,
           force: bool = False) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state)),
        meta=ocp.args.JsonSave(meta))
    try:
      self.manager.wait_until_finished()  # the previous save's result, before a new one
      self._settled()
      self._in_flight = step
      saved = self.manager.save(step, args=args, force=force)
    except Exception as e:
      raise self._failed(e) from None
    if not saved:
      self._in_flight = None
    return saved

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._failed(e) from None
    self._settled()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()

  # -------------------------------------------------------------------------- restore

  def restore(self, step: int, target_state: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restores into the shapes, dtypes and shardings of `target_state` (live arrays)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(_IteratorSnapshot()),
        meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    if int(meta.get("step", -1)) != step:
      raise ValueError(f"its meta names step {meta.get('step')}")
    return out["state"], out["data"].state, meta

  def restore_latest(self, target_state: Any
                     ) -> tuple[int | None, Any, Any, dict[str, Any]]:
    """(step, state, data state, meta) of the newest intact checkpoint; (None, target, None,
    {}) when there is none. Damaged newer ones are moved aside, each named in one warning;
    if every checkpoint is damaged, a `CheckpointError` names them (nothing is moved)."""
    bad: list[tuple[int, str]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data, meta = self.restore(step, target_state)
      except Exception as e:  # orbax/tensorstore raise many types
        bad.append((step, _one_line(e)))
        continue
      for b, why in bad:
        moved = self._set_aside(b)
        log.warning("checkpoint step %d in %s is unreadable (%s); moved it to %s and resumed "
                    "from step %d", b, self.directory, why, moved, step)
      if bad:
        self.manager.reload()
      self._good = step
      return step, state, data, meta
    if bad:
      raise CheckpointError(
          f"no intact checkpoint in {self.directory}: " +
          "; ".join(f"step {s} is unreadable ({why})" for s, why in bad) +
          ". Move the folder away to start afresh")
    return None, target_state, None, {}

  def _set_aside(self, step: int) -> str:
    """Moves a damaged step folder out of the manager's way (a later save reuses the step)."""
    src = os.path.join(self.directory, str(step))
    dest_dir = self.directory.rstrip(os.sep) + ".unreadable"
    dest, n = os.path.join(dest_dir, str(step)), 1
    while os.path.exists(dest):
      dest, n = os.path.join(dest_dir, f"{step}.{n}"), n + 1
    if jax.process_index() == 0:
      os.makedirs(dest_dir, exist_ok=True)
      shutil.move(src, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set_aside_{step}")
    return dest


# ------------------------------------------------------------------- the run folder


def checkpoint_steps(workdir: str | os.PathLike, item: str | None = None) -> list[int]:
  """The steps of `workdir/checkpoints` (orbax renames a step's folder to `N` once it is
  complete), from the folder names alone; with `item`, only those holding that item (e.g.
  "state", which export reads)."""
  root = Path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)
                and (item is None or (p / item).is_dir()))


def finished(workdir: str, stop_at: int) -> dict[str, Any] | None:
  """The recorded result of a run that already reached `stop_at`, or None.

  A run is finished when its checkpoints reach `stop_at` and `final.json`, written after
  the last held-out evaluation, records that step: a run killed after its last save (during
  that evaluation) is not, and its rerun resumes there to evaluate and record it. Reads only
  the checkpoint folder names and `final.json`, so a rerun of a finished run builds nothing
  and writes nothing (its records stay as they are).
  """
  steps = checkpoint_steps(workdir)
  if not steps or max(steps) < stop_at:
    return None
  try:
    with open(os.path.join(workdir, "final.json"), encoding="utf-8") as f:
      final = json.load(f)
    if int(final["step"]) < stop_at:
      return None
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return dict(final.get("last") or {}) | {"step": max(steps)}
