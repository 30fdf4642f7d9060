"""Orbax checkpoints of a training run: model + optimizer state, data iterator, metadata.

One `CheckpointManager` in `workdir/checkpoints` with three items per step:

- `state`: the nnx state of `(model, optimizer)` (sharded arrays; restored directly into
  the target shardings, so no host ever gathers a full copy);
- `data`: the Grain iterator state, one JSON file per process (grain's orbax handler);
  the state is captured when `save` is called, so an asynchronous save never races the
  iterator running ahead;
- `meta`: JSON with `step`, `stage` (index of the curriculum stage whose iterator is
  saved), `stage_size` and the stage plan.

Orbax writes each step to a temporary folder and renames it when complete, so a run
killed during a save resumes from the last complete checkpoint; the manager deletes such
unfinished folders when it opens.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

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


class Checkpointer:
  """Saves and restores training state; see the module docstring for the layout."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, use_async: bool = True):
    if every_steps < 1:
      raise ValueError(f"checkpoint every_steps must be >= 1, got {every_steps}")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=keep if keep > 0 else None,
        enable_async_checkpointing=use_async, create=True, cleanup_tmp_directories=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any], *,
           force: bool = False) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state)),
        meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, target_state: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restores into the shapes, dtypes and shardings of `target_state` (live arrays)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(_IteratorSnapshot()),
        meta=ocp.args.JsonRestore()))
    return out["state"], out["data"].state, dict(out["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
