"""Compressed memories (Compressive Transformer, arXiv 1911.05507).

When a block's keys/values leave a layer's cache (one block after they were
written), they are compressed by a factor c into W / c slots and appended to
a bounded FIFO of C compressed slots per layer, which later tokens attend to
in front of the cache: keys are laid out [compressed (C), previous block (W),
this block (W)] (see `attention.key_positions` for the slots' positions).

Choices, and why:
- Keys/values are compressed, not the layer's input activations: the cache
  already holds them, the compressed slots need no second key/value
  projection, and the decoder compresses the same arrays as training does.
  Keys are compressed before rotary positions are applied (the cache holds
  them that way), and the slot gets the rotary angle of its position.
- "conv": a learned stride-c projection per key/value head, a 1-D
  convolution with kernel size and stride c, initialised to the mean (so
  it starts where "mean" is and learns from there). "mean": average pooling.
- The compressor is trained by the language-model loss through the scan
  (a block compressed in a segment is read by later blocks of the same
  segment), without the paper's auxiliary reconstruction loss.
- The memory is part of the carry, with a per-row, per-slot `valid` mask:
  reset with the cache (start_of_sequence, Slide's segment start), and the
  contents of invisible slots are zeroed, so that a reset row's carry equals
  a fresh one exactly.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from brt.config import ModelConfig

Array = jax.Array


def initial(config: ModelConfig, batch_size: int) -> dict:
  """The carry's compressed memory: empty slots for every layer."""
  shape = (batch_size, config.compressed_slots, config.num_kv_heads,
           config.head_size)
  zeros = lambda: jnp.zeros(shape, config.compute_dtype)
  return {"memory": tuple({"k": zeros(), "v": zeros()}
                          for _ in range(config.num_layers)),
          "valid": jnp.zeros((batch_size, config.compressed_slots), bool)}


def push(memory: Array, memory_visible: Array, block: Array,
         block_visible: Array) -> Array:
  """The FIFO after appending `block`'s slots; the oldest slots drop out.

  Args:
    memory: (B, C, ...) slots, oldest first; memory_visible: (B, C) bool.
    block: (B, n, ...) new slots; block_visible: (B,) bool, whether the block
      that was compressed held anything in that row.
  Returns:
    (B, C, ...), invisible slots zeroed. For bool arrays this same function
    gives the new visibility: push(visible, visible, ones, block_visible).
  """
  def only_visible(x, visible):
    visible = visible.reshape(visible.shape + (1,) * (x.ndim - visible.ndim))
    return jnp.where(visible, x, jnp.zeros_like(x))

  slots = memory.shape[1]
  joined = jnp.concatenate([only_visible(memory, memory_visible),
                            only_visible(block, block_visible[:, None])],
                           axis=1)
  return joined[:, -slots:]


def push_visible(memory_visible: Array, block_visible: Array,
                 config: ModelConfig) -> Array:
  """The slots' visibility after a block was pushed (see `push`)."""
  new = jnp.ones((block_visible.shape[0],
                  config.block_width // config.compressed_mem_factor), bool)
  return push(memory_visible, memory_visible, new, block_visible)


def _mean_kernel(key, shape, dtype=jnp.float32):
  """(c, G, k, k): every tap the identity / c, i.e. mean pooling."""
  del key
  c, groups, k, _ = shape
  eye = jnp.eye(k, dtype=dtype) / c
  return jnp.broadcast_to(eye, (c, groups, k, k))


def _groups_of(x: Array, factor: int) -> Array:
  """(B, W, G, k) -> (B, W / c, c, G, k): the runs of c tokens per slot."""
  batch, width, groups, k = x.shape
  return x.reshape(batch, width // factor, factor, groups, k)


def mean_pool(kv: dict[str, Array], factor: int) -> dict[str, Array]:
  """compression="mean": each slot is the average of its c keys/values."""
  return {name: jnp.mean(_groups_of(x, factor).astype(jnp.float32),
                         axis=2).astype(x.dtype) for name, x in kv.items()}


class Compressor(nn.Module):
  """compression="conv": (B, W, G, k) keys and values of a block ->
  (B, W / c, G, k) each, a learned kernel per tap and key/value head."""
  config: ModelConfig

  @nn.compact
  def __call__(self, kv: dict[str, Array]) -> dict[str, Array]:
    cfg = self.config
    c = cfg.compressed_mem_factor
    out = {}
    for name in ("k", "v"):
      x = _groups_of(kv[name], c)
      groups, k = x.shape[-2:]
      kernel = self.param(
          f"{name}_kernel", nn.with_logical_partitioning(
              _mean_kernel, (None, "kv_heads", "kv", None)),
          (c, groups, k, k))
      dt = cfg.compute_dtype
      out[name] = jnp.einsum("bncgd,cgde->bnge", x.astype(dt),
                             kernel.astype(dt)).astype(kv[name].dtype)
    return out
