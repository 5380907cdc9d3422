"""Meshes and shardings: the same model on one device or on a pod.

Every parameter carries logical axis names (brt/layers.py); `LOGICAL_RULES`
maps them to the two mesh axes, `data` (batch rows) and `model` (heads, MLP
and vocabulary columns). Changing the mesh shape is all it takes to go from
pure data parallelism to a model-parallel layout; a dimension that does not
divide by its mesh axis is replicated instead of failing.

Batches and the carry are sharded by batch row over `data`. Each host feeds
only its own rows (`put_batch`), which is what the data pipeline's host
sharding produces.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"
LOGICAL_RULES = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("mlp", MODEL),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("embed", None),
    ("embed_out", None),
    ("kv", None),
    ("states", None),
)


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A (data, model) mesh. data=-1 takes every device not used by `model`.

  Fewer devices than there are may be asked for (the first data * model are
  used), which is how tests compare a sharded run with a one-device run.
  """
  devices = list(devices if devices is not None else jax.devices())
  if model <= 0 or (data <= 0 and data != -1):
    raise ValueError(f"Mesh shape ({data}, {model}) must be positive "
                     "(data may be -1: all remaining devices).")
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"model={model} does not divide the {len(devices)} "
                       "devices; choose a divisor for the model axis.")
    data = len(devices) // model
  if data * model > len(devices):
    raise ValueError(f"A mesh of data={data} x model={model} needs "
                     f"{data * model} devices but there are {len(devices)}.")
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices[:data * model])


def _mesh_axes(logical: P, shape, mesh: Mesh) -> P:
  rules = dict(LOGICAL_RULES)
  axes, used = [], set()
  for size, name in zip(shape, tuple(logical) + (None,) * len(shape)):
    axis = rules.get(name)
    if axis is None or axis in used or size % mesh.shape[axis]:
      axes.append(None)
    else:
      axes.append(axis)
      used.add(axis)
  return P(*axes)


def param_shardings(boxed_variables, mesh: Mesh):
  """NamedShardings for (abstract) variables that carry logical axis names,
  in the structure of the unboxed variables."""
  specs = nn.get_partition_spec(boxed_variables)
  shapes = nn.meta.unbox(boxed_variables)
  return jax.tree_util.tree_map(
      lambda spec, leaf: NamedSharding(mesh, _mesh_axes(spec, leaf.shape, mesh)),
      specs, shapes, is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA, *([None] * (ndim - 1))))


def batch_major_shardings(tree, mesh: Mesh):
  """Shardings for a pytree whose every leaf is batch-major (the carry)."""
  return jax.tree_util.tree_map(lambda x: batch_sharding(mesh, x.ndim), tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  rows = mesh.shape[DATA]
  if batch_size % rows:
    raise ValueError(f"{what}={batch_size} does not split over the mesh's "
                     f"data axis of {rows} devices; use a multiple of {rows} "
                     "or change the mesh shape.")


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """This host's rows of a batch -> global arrays sharded over `data`."""
  return {name: jax.make_array_from_process_local_data(
      batch_sharding(mesh, np.ndim(x)), np.asarray(x))
          for name, x in batch.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in global order
  (the rows `put_batch` placed from this host)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def optimizer_shardings(tx, abstract_opt_state, abstract_params,
                        shardings, mesh: Mesh):
  """Optimizer state laid out like the parameters it tracks.

  Leaves shaped like their parameter (Adam's moments, Adafactor's
  unfactored second moment) take the parameter's sharding; factored
  statistics and counters are small and replicated.
  """
  import optax  # only the trainer needs optax
  return optax.tree_map_params(
      tx, lambda leaf, param, sharding:
      sharding if leaf.shape == param.shape else replicated(mesh),
      abstract_opt_state, abstract_params, shardings,
      transform_non_params=lambda _: replicated(mesh))
