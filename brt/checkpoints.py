"""Checkpoints of a training run, with orbax's CheckpointManager.

A checkpoint holds the whole train state (parameters, optimizer state, step,
the carry of every batch row, the RNG), the data iterator's position and the
model config it was written with. orbax writes each step into a temporary
directory and renames it into place when complete, so a run killed at any
moment (even by SIGKILL) leaves the previous checkpoint intact, and an
unfinished one is never mistaken for a checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from brt.config import CLASSIC, ModelConfig

# Settings that may change between a checkpoint and the run that resumes it:
# they change how the model is run, not what its parameters or carry are.
RUNTIME_ONLY_FIELDS = ("dropout_rate", "attention_dropout_rate")


class IncompatibleCheckpointError(ValueError):
  """The checkpoint was written by a model with another configuration."""


class Checkpointer:
  """Saves and restores (train state, data position) in `directory`."""

  def __init__(self, directory: str, *, keep: int = 3,
               asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        enable_async_checkpointing=asynchronous)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict,
           model_config: ModelConfig) -> bool:
    """Starts saving (in the background if asynchronous); False if `step`
    is already saved."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(dataclasses.asdict(model_config))))

  def wait(self):
    """Blocks until every save started has been committed to disk."""
    self._manager.wait_until_finished()

  def restore(self, target: Any, model_config: ModelConfig,
              step: Optional[int] = None) -> tuple[Any, dict, int]:
    """Restores onto `target`'s structure, shapes, dtypes and shardings.

    Returns (state, data position, step). Raises IncompatibleCheckpointError
    if the checkpoint's model config differs from `model_config`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    saved = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]
    check_compatible(saved, model_config, f"{self.directory}/{step}")
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], step

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def check_compatible(saved: dict, config: ModelConfig, where: str) -> None:
  current = dataclasses.asdict(config)
  # A field the checkpoint does not name was added since it was written: the
  # checkpoint's model had the default of that time -- brt's classic model's
  # for the fields that came with following meliad, else the field's default
  # (an option that is off by default).
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  defaults.update(CLASSIC)
  saved = {k: saved.get(k, defaults[k]) for k in current}
  differ = {k: (saved[k], v) for k, v in current.items()
            if k not in RUNTIME_ONLY_FIELDS and _norm(saved[k]) != _norm(v)}
  if differ:
    listing = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}"
                        for k, (a, b) in sorted(differ.items()))
    raise IncompatibleCheckpointError(
        f"The checkpoint {where} was written by a model with another "
        f"configuration ({listing}). Resume with the checkpoint's settings, "
        "or train in a fresh --workdir.")


def _norm(value):
  # JSON turns tuples into lists.
  return list(value) if isinstance(value, tuple) else value
