"""Checkpoints of a training run, with orbax's CheckpointManager.

A checkpoint holds the whole train state (parameters, optimizer state, step,
the carry of every batch row, the RNG), the data iterator's position and the
model config it was written with. orbax writes each step into a temporary
directory and renames it into place when complete, so a run killed at any
moment (even by SIGKILL) leaves the previous checkpoint intact, and an
unfinished one is never mistaken for a checkpoint.

A checkpoint that was complete can still be damaged later (a disk or bucket
error, a truncated copy). So each one also records the shape, dtype and a
fingerprint of every array (computed on the device from the values being
saved, in the same orbax commit) and a digest of its JSON items; a restore
recomputes them from what it read and refuses a checkpoint that does not
match. Without a step named, restoring takes the newest checkpoint that
verifies, saying which newer ones it passed over and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from brt.config import CLASSIC, ModelConfig

# Settings that may change between a checkpoint and the run that resumes it:
# they change how the model is run, not what its parameters or carry are.
RUNTIME_ONLY_FIELDS = ("dropout_rate", "attention_dropout_rate")


# Bumped when the integrity record's layout changes.
INTEGRITY_VERSION = 1
# How the train state's parameters are named in the integrity record (the
# TrainState field, as jax.tree_util.keystr writes it).
PARAMS = ".params"


class IncompatibleCheckpointError(ValueError):
  """The checkpoint was written by a model with another configuration."""


class DamagedCheckpointError(RuntimeError):
  """A checkpoint's files do not give back what was saved."""


class Checkpointer:
  """Saves and restores (train state, data position) in `directory`."""

  def __init__(self, directory: str, *, keep: int = 3,
               asynchronous: bool = True, create: bool = True):
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoint directory {self.directory}.")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create,
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
    config = dataclasses.asdict(model_config)
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config),
        integrity=ocp.args.JsonSave(
            integrity_record(state, data_state, config))))

  def wait(self):
    """Blocks until every save started has been committed to disk."""
    self._manager.wait_until_finished()

  def restore(self, target: Any, model_config: ModelConfig,
              step: Optional[int] = None, *, set_aside_damaged: bool = False
              ) -> tuple[Any, dict, int]:
    """Restores onto `target`'s structure, shapes, dtypes and shardings.

    Returns (state, data position, step). `step` None: the newest checkpoint
    that verifies, with a warning for each newer one that does not (moved
    out of the way, into <directory>.damaged/, with `set_aside_damaged`, so
    that a resumed run can save those steps again); a named `step` that does
    not verify raises DamagedCheckpointError. Raises
    IncompatibleCheckpointError if the checkpoint's model config differs
    from `model_config` or its arrays have other shapes than `target`'s.
    """
    self.wait()
    if step is not None:
      if step not in self.all_steps():
        raise FileNotFoundError(
            f"No checkpoint of step {step} in {self.directory}; it holds "
            f"steps {self.all_steps() or 'none'}.")
      return (*self._restore_verified(target, model_config, step), step)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    damaged = []
    for candidate in steps:
      try:
        state, data = self._restore_verified(target, model_config, candidate)
      except DamagedCheckpointError as e:
        print(f"warning: {e}", flush=True)
        damaged.append(candidate)
        continue
      if damaged:
        print(f"warning: restored step {candidate}, the newest checkpoint "
              f"that verifies, passing over damaged step(s) {damaged}.",
              flush=True)
        if set_aside_damaged:
          self._set_aside(damaged)
      return state, data, candidate
    raise DamagedCheckpointError(
        f"Every checkpoint in {self.directory} is damaged (steps {damaged}; "
        "see the warnings above): none can be restored. Copy the run's "
        "checkpoints from a backup, or train in a fresh --workdir.")

  def latest_intact_step(self, target: Any, model_config: ModelConfig
                         ) -> Optional[int]:
    """The newest step that verifies (restoring it to check), or None."""
    self.wait()
    for step in sorted(self.all_steps(), reverse=True):
      try:
        self._restore_verified(target, model_config, step)
        return step
      except DamagedCheckpointError:
        continue
    return None

  def restore_params(self, target: Any, model_config: ModelConfig,
                     step: Optional[int] = None) -> tuple[Any, int]:
    """The parameters alone (onto `target`, the abstract parameters) of
    checkpoint `step`, or of the newest one whose parameters verify; for
    starting another run from them (TrainConfig.init_from)."""
    self.wait()
    steps = [step] if step is not None else sorted(self.all_steps(),
                                                   reverse=True)
    if step is not None and step not in self.all_steps():
      raise FileNotFoundError(
          f"No checkpoint of step {step} in {self.directory}; it holds "
          f"steps {self.all_steps() or 'none'}.")
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    for candidate in steps:
      try:
        params, _ = self._restore_verified(target, model_config, candidate,
                                           params_only=True)
        return params, candidate
      except DamagedCheckpointError as e:
        if step is not None:
          raise
        print(f"warning: {e}", flush=True)
    raise DamagedCheckpointError(
        f"Every checkpoint in {self.directory} is damaged (steps {steps}; "
        "see the warnings above).")

  def _restore_verified(self, target, model_config, step, params_only=False):
    where = f"{self.directory}/{step}"
    prefix = PARAMS if params_only else ""
    # Before reading: a failed read's leftovers report from other threads
    # even before the failure reaches the except clauses below.
    _quiet_reads_left_in_flight()
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(),
          integrity=ocp.args.JsonRestore()))
    except Exception as e:  # A damaged JSON file: orbax raises many kinds.
      if _missing_integrity(e):
        saved = None
      else:
        raise DamagedCheckpointError(
            f"The checkpoint {where} is damaged: its config could not be "
            f"read ({type(e).__name__}: {_first_line(e)}).") from e
    if saved is None:  # Written before checkpoints carried integrity records.
      saved = self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))
      record = None
    else:
      record = saved["integrity"]
    check_compatible(saved["config"], model_config, where)
    if record is not None:
      check_shapes(record, target, where, prefix)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        target)
    if params_only:  # orbax reads the parameters' arrays and no others.
      item = {PARAMS[1:]: abstract}
      args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, partial_restore=True,
          restore_args=jax.tree_util.tree_map(
              lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), item)))
    else:
      args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                data=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:  # Unreadable array or JSON files.
      raise DamagedCheckpointError(
          f"The checkpoint {where} is damaged: its arrays could not be read "
          f"({type(e).__name__}: {_first_line(e)}).") from e
    if params_only:
      state, data = restored["state"][PARAMS[1:]], None
    else:
      state, data = restored["state"], restored["data"]
    if record is None:
      logging.warning("The checkpoint %s has no integrity record (written by "
                      "an older brt); restored without verifying it.", where)
    else:
      bad = verify(record, state, data, saved["config"], prefix)
      if bad:
        raise DamagedCheckpointError(
            f"The checkpoint {where} is damaged: what its files hold differs "
            f"from what was saved ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}).")
    return state, data

  def _set_aside(self, steps):
    if jax.process_index() == 0:
      aside = self.directory + ".damaged"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        shutil.move(os.path.join(self.directory, str(step)),
                    os.path.join(aside, str(step)))
        print(f"warning: moved the damaged checkpoint of step {step} to "
              f"{aside}/{step}.", flush=True)
    self._manager.reload()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def locate(source: str) -> tuple[str, Optional[int]]:
  """(checkpoint directory, step or None: the newest) of a run's workdir,
  its checkpoints/ directory, or one checkpoint, WORKDIR/checkpoints/STEP."""
  source = os.path.abspath(source)
  name = os.path.basename(source)
  if name.isdigit() and os.path.isdir(source):
    return os.path.dirname(source), int(name)
  if os.path.isdir(os.path.join(source, "checkpoints")):
    return os.path.join(source, "checkpoints"), None
  if os.path.isdir(source) and name == "checkpoints":
    return source, None
  raise FileNotFoundError(
      f"{source} is neither a run's workdir (with a checkpoints/ directory) "
      "nor one of its checkpoints (WORKDIR/checkpoints/STEP).")


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


# -- integrity ------------------------------------------------------------------
def integrity_record(state: Any, data_state: Optional[dict], config: dict,
                     prefix: str = "") -> dict:
  """What `verify` checks a restored checkpoint against: each array's shape,
  dtype and fingerprint, and digests of the JSON items. `prefix` names the
  arrays of a part of the train state (PARAMS: the parameters)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  prints = jax.device_get(_fingerprints([x for _, x in leaves]))
  return {
      "version": INTEGRITY_VERSION,
      "arrays": {prefix + jax.tree_util.keystr(path): {
          "shape": list(x.shape), "dtype": str(x.dtype),
          "fingerprint": f"{int(a):08x}{int(b):08x}"}
                 for (path, x), (a, b) in zip(leaves, prints)},
      "data": _json_digest(data_state),
      "config": _json_digest(config)}


def verify(record: dict, state: Any, data_state: Optional[dict], config: dict,
           prefix: str = "") -> list[str]:
  """The names of what differs between a restored checkpoint (or the part
  of its train state under `prefix`, without the data item) and its record
  (empty: it verifies)."""
  fresh = integrity_record(state, data_state, config, prefix)
  recorded = _under(record["arrays"], prefix)
  bad = [name for name, entry in fresh["arrays"].items()
         if recorded.get(name) != entry]
  bad += sorted(set(recorded) - set(fresh["arrays"]))
  items = ("config",) if data_state is None else ("data", "config")
  bad += [f"the {k} item" for k in items if record.get(k) != fresh[k]]
  return bad


def check_shapes(record: dict, target: Any, where: str, prefix: str = ""
                 ) -> None:
  """Raises IncompatibleCheckpointError, naming the arrays, if the
  checkpoint's arrays (under `prefix`) have other shapes or dtypes than
  `target`'s."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(target)
  want = {prefix + jax.tree_util.keystr(p): (list(x.shape), str(x.dtype))
          for p, x in leaves}
  have = {k: (v["shape"], v["dtype"])
          for k, v in _under(record["arrays"], prefix).items()}
  differ = [f"{k}: checkpoint {have.get(k)}, this run {want.get(k)}"
            for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
  if differ:
    raise IncompatibleCheckpointError(
        f"The checkpoint {where} holds arrays of other shapes than this run's "
        f"({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''}). "
        "The carry's rows follow TrainConfig.batch_size: resume with the "
        "checkpoint's settings, or train in a fresh --workdir.")


@jax.jit
def _fingerprints(leaves):
  """Two 32-bit sums per array of its bits times position-dependent odd
  multipliers: any change to one element changes both (odd numbers are
  invertible modulo 2**32), and integer sums do not depend on the order of
  the reduction, so the value is the same for any sharding or device."""
  out = []
  for x in leaves:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    bits = _as_uint32(x).reshape(-1)
    index = jnp.arange(bits.size, dtype=jnp.uint32)
    first = jnp.sum(bits * (index * jnp.uint32(0x9E3779B1) | 1),
                    dtype=jnp.uint32)
    second = jnp.sum((bits ^ (bits >> 15)) *
                     ((index ^ jnp.uint32(0x5BD1E995)) * jnp.uint32(0x85EBCA77)
                      | 1), dtype=jnp.uint32)
    out.append(jnp.stack([first, second]))
  return out


def _as_uint32(x):
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = x.dtype.itemsize
  if width == 8:  # Two 32-bit words per element.
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _under(arrays: dict, prefix: str) -> dict:
  return {k: v for k, v in arrays.items()
          if k.startswith(prefix + "[") or not prefix}


def _json_digest(value) -> str:
  text = json.dumps(value, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def _missing_integrity(error: Exception) -> bool:
  # orbax's error for an item the checkpoint does not have.
  return (isinstance(error, KeyError)
          and 'Item "integrity" was not found' in str(error))


def _quiet_reads_left_in_flight():
  """When one array of a restore fails, orbax closes its event loop while
  TensorStore still has reads of the others in flight; as each finishes it
  reports 'Event loop is closed' as an unraisable error, and orbax's read
  coroutines that never ran report their own error as they are collected:
  hundreds of harmless tracebacks that would bury the message that matters.
  Drop those only."""
  previous = sys.unraisablehook
  if getattr(previous, "_brt_quiet", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    code = getattr(unraisable.object, "cr_code", None)
    left_over = (isinstance(error, RuntimeError)
                 and str(error) == "Event loop is closed") or (
                     code is not None and "orbax" in code.co_filename)
    if not left_over:
      previous(unraisable)

  hook._brt_quiet = True
  sys.unraisablehook = hook


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""
