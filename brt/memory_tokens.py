"""Recurrent Memory Transformer (RMT, Bulatov et al. 2022, arXiv 2207.06881).

An RMT segment is one brt block. Each block's layer stack runs over

    [read memory (M), the block's W tokens, write memory (M)]

with full causal attention over that sequence: every token sees all of the
read memory, and the write memory sees the whole block (and itself,
causally). Both memory runs take the memory carried in from the previous
block as input (the paper's decoder-only form); the write memory's
final-layer outputs become the next block's memory. Tokens never see the
write memory of their own block (it comes after them in the causal order),
so it only influences later blocks.

The memory lives in the carry ("memory": (B, M, d)) and is reset to a learned
initial memory where a row starts a document, like a recurrent state.
Gradients flow through the memory hand-over for `memory_bptt_blocks` blocks:
the memory entering block b of a call is `stop_gradient`ed when b is a
multiple of k (and the trainer detaches the carry between segments), so a
loss reaches back through at most k blocks' memory.

With `memory_xl_cache` the tokens (and memories) also attend to the previous
block's token keys/values as in Transformer-XL ("RMT + XL"); without it a
block sees only itself and the memory, as in the paper's RMT.

Memory tokens have no position of their own in the text; for relative
positions they sit just before (read) and just after (write) the block, so
the T5 bias and rotary tables extend naturally.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from brt.config import ModelConfig

Array = jax.Array


def num_cached(cfg: ModelConfig) -> int:
  """Keys from the previous block each query may see: W, or 0 without XL."""
  return cfg.block_width if cfg.memory_xl_cache else 0


def _layout(cfg: ModelConfig):
  """Sequence order and text positions of the keys and the queries.

  Keys: [previous block (P), read memory (M), block (W), write memory (M)];
  queries are the last M + W + M of them. Positions put the previous block
  at 0..W-1, the block at W..2W-1, read memory at W-1 and write memory at 2W.
  """
  w, m, p = cfg.block_width, cfg.memory_tokens, num_cached(cfg)
  positions = np.concatenate([np.arange(w - p, w), np.full(m, w - 1),
                              np.arange(w, 2 * w), np.full(m, 2 * w)])
  return p, positions


def window_mask(cfg: ModelConfig) -> np.ndarray:
  """(W + 2M, P + W + 2M) bool: causal in the order of the layout above;
  with window="sliding" a token sees, of the text, exactly the W tokens
  before it (the memory as before)."""
  p, positions = _layout(cfg)
  rows = len(positions) - p
  mask = np.arange(len(positions))[None, :] <= (np.arange(rows) + p)[:, None]
  if cfg.window == "sliding":
    w, m = cfg.block_width, cfg.memory_tokens
    text = np.zeros(len(positions), bool)
    text[:p] = True
    text[p + m:p + m + w] = True  # The previous block and this block.
    q, k = positions[p:, None], positions[None, :]
    in_reach = (k < q) & (k >= q - w)
    mask &= ~(text[p:, None] & text[None, :]) | in_reach
  return mask


def window_positions(cfg: ModelConfig) -> np.ndarray:
  """Text position of every key (queries: the last W + 2M), for rotary."""
  return _layout(cfg)[1]


def window_distances(cfg: ModelConfig) -> np.ndarray:
  """(W + 2M, P + W + 2M) query minus key position, clipped at 0 (T5 bias)."""
  p, positions = _layout(cfg)
  return np.maximum(positions[p:, None] - positions[None, :], 0)


def detach_schedule(cfg: ModelConfig, num_blocks: int) -> np.ndarray:
  """(n,) bool: blocks whose incoming memory is cut from the gradient."""
  k = cfg.memory_bptt_blocks
  b = np.arange(num_blocks)
  return (b % k == 0) if k else np.zeros(num_blocks, bool)


class MemoryTokens(nn.Module):
  """The learned initial memory, and how the memory wraps a block."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    # In embedding space, like the token embeddings (N(0, 1)).
    self.initial = self.param(
        "initial_memory", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, "embed")),
        (cfg.memory_tokens, cfg.d_model))

  def read(self, memory: Array, fresh: Array, detach: Array) -> Array:
    """The memory a block reads: the initial memory in rows that start a
    document, and cut from the gradient where the BPTT depth ends."""
    memory = jnp.where(detach, jax.lax.stop_gradient(memory), memory)
    return jnp.where(fresh[:, None, None], self.initial[None], memory)

  def wrap(self, x: Array, memory: Array) -> Array:
    """[read memory, tokens, write memory]: (B, W + 2M, d)."""
    memory = memory.astype(x.dtype)
    return jnp.concatenate([memory, x, memory], axis=1)

  def unwrap(self, x: Array) -> tuple[Array, Array]:
    """(the tokens' outputs (B, W, d), the next memory (B, M, d) float32)."""
    m, w = self.config.memory_tokens, self.config.block_width
    return x[:, m:m + w], x[:, m + w:].astype(jnp.float32)

  def tokens_kv(self, kv: dict[str, Array]) -> dict[str, Array]:
    """The block tokens' keys/values out of the wrapped sequence's: the cache
    holds tokens only (memory reaches the next block as memory)."""
    m, w = self.config.memory_tokens, self.config.block_width
    return {name: v[:, m:m + w] for name, v in kv.items()}

  def cached(self, kv: dict[str, Array]) -> dict[str, Array]:
    """The previous block's keys/values as the layer sees them: all of them
    with the XL cache, none (a zero-width slice) without."""
    return {name: v[:, :num_cached(self.config)] for name, v in kv.items()}
