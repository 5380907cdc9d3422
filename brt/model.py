"""The block-recurrent transformer: one compiled step per block, scanned.

A segment of n * W tokens is cut into n blocks. The whole layer stack is one
step function over one block (`BlockStep`), and `nn.scan` runs it over the
blocks, so XLA compiles a single block step whatever the segment length. The
carry -- every layer's keys/values of the previous block and every recurrent
layer's state -- flows from block to block and out of the segment, to be fed
back in with the next one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from brt import attention
from brt.config import ModelConfig
from brt.layers import RelativePositionBias, TransformerLayer, dense, layer_norm

Carry = dict[str, Any]


def layer_kind(config: ModelConfig, layer: int) -> str:
  if layer in config.recurrent_layers:
    return "recurrent"
  return "feedback" if config.feedback else "plain"


def initial_carry(config: ModelConfig, batch_size: int) -> Carry:
  """An empty carry: no cache and no state yet in any row.

  `valid` is False, so the first block of every row ignores the (zero) cache
  and starts from the learned initial state, exactly as after a
  `start_of_sequence`.
  """
  kv_shape = (batch_size, config.block_width, config.num_kv_heads,
              config.head_size)
  kv = lambda: jnp.zeros(kv_shape, config.compute_dtype)
  return {
      "cache": tuple({"k": kv(), "v": kv()} for _ in range(config.num_layers)),
      "state": tuple(jnp.zeros((batch_size, config.num_states, config.d_model),
                               jnp.float32) for _ in config.recurrent_layers),
      "valid": jnp.zeros((batch_size,), bool),
  }


class BlockStep(nn.Module):
  """The layer stack over one block of W tokens: the body of the scan."""
  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, carry: Carry, inputs, window):
    cfg = self.config
    x, reset_cache, reset_state = inputs  # (B, W, d), (B,), (B,)
    cache_visible = carry["valid"] & ~reset_cache
    fresh = ~carry["valid"] | reset_state

    # Rows that start a document get the learned initial state -- before any
    # layer runs, so that feedback layers below the recurrent one read it too.
    states = {}
    for layer, state in zip(cfg.recurrent_layers, carry["state"]):
      initial = self.param(
          f"initial_state_{layer}", nn.with_logical_partitioning(
              nn.initializers.normal(cfg.state_init_std), ("states", "embed")),
          (cfg.num_states, cfg.d_model))
      states[layer] = jnp.where(fresh[:, None, None], initial[None], state)
    read_only = states[cfg.feedback_source] if cfg.feedback else None

    new_cache = []
    for i in range(cfg.num_layers):
      kind = layer_kind(cfg, i)
      layer_window = dict(window, bias=None if window["bias"] is None
                          else window["bias"][i])
      x, kv, new_state = TransformerLayer(cfg, kind, name=f"layer_{i}")(
          x, carry["cache"][i], cache_visible, layer_window,
          states.get(i, read_only), self.deterministic)
      new_cache.append(kv)
      if kind == "recurrent":
        states[i] = new_state
    carry = {
        "cache": tuple(new_cache),
        "state": tuple(states[i] for i in cfg.recurrent_layers),
        "valid": jnp.ones_like(carry["valid"]),
    }
    return carry, x


class BlockRecurrentTransformer(nn.Module):
  """Language model over segments of n * W tokens with a carry between them.

  Usage:
    model = BlockRecurrentTransformer(cfg)
    carry = model.initial_carry(batch_size)
    variables = model.init(rng, tokens, carry)
    logits, carry = model.apply(variables, tokens, carry,
                                start_of_sequence=sos)
  Feeding a segment in one call, or block by block passing the carry, gives
  the same logits.
  """
  config: ModelConfig

  def initial_carry(self, batch_size: int) -> Carry:
    return initial_carry(self.config, batch_size)

  @nn.compact
  def __call__(self, tokens, carry: Carry, start_of_sequence=None,
               deterministic: bool = True):
    """Args:
      tokens: (B, n * W) int32.
      carry: from `initial_carry` or the previous segment's call.
      start_of_sequence: (B,) bool; rows where a new document starts with
        this segment get a fresh cache and state. Default: no reset.
      deterministic: False enables dropout (needs a "dropout" RNG).
    Returns:
      logits (B, n * W, vocab) float32, and the carry for the next segment.
    """
    cfg = self.config
    batch, length = tokens.shape
    num_blocks = cfg.check_segment_length(length)
    _check_tokens(tokens, cfg.vocab_size)
    _check_carry(carry, cfg, batch)
    dt = cfg.compute_dtype

    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, name="embed",
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")))
    x = embed(tokens).astype(dt)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    # Block-major: (n, B, W, d), the scan's leading axis.
    x = x.reshape(batch, num_blocks, cfg.block_width, cfg.d_model)
    x = jnp.swapaxes(x, 0, 1)

    # Resets happen only at the first block of the segment.
    sos = (jnp.zeros((batch,), bool) if start_of_sequence is None
           else jnp.asarray(start_of_sequence, bool).reshape(batch))
    first = (jnp.arange(num_blocks) == 0)[:, None]
    reset_state = first & sos[None]
    reset_cache = reset_state if cfg.cache_across_segments else (
        first & jnp.ones_like(sos)[None])

    scan = nn.scan(
        nn.remat(BlockStep, prevent_cse=False) if cfg.remat else BlockStep,
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": True},
        in_axes=(0, nn.broadcast), out_axes=0)
    carry, y = scan(cfg, deterministic, name="blocks")(
        carry, (x, reset_cache, reset_state), self._window())

    y = jnp.swapaxes(y, 0, 1).reshape(batch, length, cfg.d_model)
    y = layer_norm("ln_final")(y).astype(dt)
    if cfg.tie_embeddings:
      logits = embed.attend(y)
    else:
      logits = dense(cfg.vocab_size, ("embed", "vocab"), dtype=dt,
                     name="unembed")(y)
    return logits.astype(jnp.float32), carry

  def _window(self) -> dict[str, Any]:
    """Block-invariant attention inputs, built once per call, not per block."""
    cfg = self.config
    w = cfg.block_width
    window = {"mask": jnp.asarray(attention.window_mask(w)), "bias": None,
              "sin": None, "cos": None}
    if cfg.position == "t5":
      window["bias"] = jnp.stack([
          RelativePositionBias(cfg, name=f"relpos_{i}")()
          for i in range(cfg.num_layers)]).astype(cfg.compute_dtype)
    else:
      sin, cos = attention.rotary_tables(np.arange(2 * w), cfg.head_size,
                                         cfg.rotary_base)
      window["sin"], window["cos"] = jnp.asarray(sin), jnp.asarray(cos)
    return window


def _check_tokens(tokens, vocab_size):
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}.")
  if isinstance(tokens, jax.core.Tracer):
    return  # Values are unknown under jit; checked where they are concrete.
  # numpy, not jnp: under an outer jit even concrete inputs would be traced.
  values = np.asarray(tokens)
  lo, hi = int(values.min()), int(values.max())
  if lo < 0 or hi >= vocab_size:
    raise ValueError(
        f"tokens outside the vocabulary: found ids in [{lo}, {hi}] but "
        f"vocab_size={vocab_size}. Use the vocabulary the model was "
        "configured for, or raise ModelConfig.vocab_size.")


def _check_carry(carry, cfg, batch):
  expected = jax.tree_util.tree_structure(initial_carry(cfg, 1))
  if jax.tree_util.tree_structure(carry) != expected:
    raise ValueError(
        "carry does not match this model's config (layers / recurrent "
        "layers differ); build it with model.initial_carry(batch_size).")
  if carry["valid"].shape != (batch,):
    raise ValueError(
        f"carry is for batch size {carry['valid'].shape[0]} but tokens have "
        f"batch size {batch}; use model.initial_carry({batch}).")
