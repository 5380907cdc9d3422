"""The block-recurrent transformer: one compiled step per block, scanned.

A segment of n * W tokens is cut into n blocks. The whole layer stack is one
step function over one block (`BlockStep`), and `nn.scan` runs it over the
blocks, so XLA compiles a single block step whatever the segment length. The
carry -- every layer's keys/values of the previous block and every recurrent
layer's state -- flows from block to block and out of the segment, to be fed
back in with the next one.

Where a block depends on the one before only through the same layer's
keys/values and its own recurrent state (no feedback, memory tokens or
compressed memory), the same segment can also run layer by layer
(`BlockStep.segment`, `ExecutionConfig.layer_major`): each layer takes all n
blocks at once, and only the recurrent state is scanned over them. Both
orders give the same results (tests/test_layer_major.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from brt import attention, compressed_memory, linear, memory_tokens
from brt.config import ModelConfig
from brt.execution import ExecutionConfig
from brt.layers import RelativePositionBias, TransformerLayer, dense, layer_norm

Array = jax.Array
Carry = dict[str, Any]


def layer_kind(config: ModelConfig, layer: int) -> str:
  reads = config.state_read_by(layer)
  if layer in config.recurrent_layers:
    return "recurrent" if reads == layer else "writer"
  return "plain" if reads is None else "feedback"


def initial_carry(config: ModelConfig, batch_size: int) -> Carry:
  """An empty carry: no cache and no state yet in any row.

  `valid` is False, so the first block of every row ignores the (zero) cache
  and starts from the learned initial state, exactly as after a
  `start_of_sequence`.
  """
  kv_shape = (batch_size, config.block_width, config.num_kv_heads,
              config.head_size)
  kv = lambda: jnp.zeros(kv_shape, config.compute_dtype)
  carry = {
      "cache": tuple({"k": kv(), "v": kv()} for _ in range(config.num_layers)),
      "state": tuple(jnp.zeros((batch_size, config.num_states, config.d_model),
                               jnp.float32) for _ in config.recurrent_layers),
      "valid": jnp.zeros((batch_size,), bool),
  }
  if config.compressed_slots:
    carry["compressed"] = compressed_memory.initial(config, batch_size)
  if config.memory_tokens:  # RMT: the memory handed to the next block.
    carry["memory"] = jnp.zeros(
        (batch_size, config.memory_tokens, config.d_model), jnp.float32)
  return carry


class BlockStep(nn.Module):
  """The layer stack over one block of W tokens.

  `__call__` is the body of the scan over a segment's blocks (training and
  evaluation). `begin_block`, `decode` and `end_block` are the same layers
  taken apart for incremental decoding: a block's tokens arrive in pieces
  and the state is updated when the block is complete.
  """
  config: ModelConfig
  execution: ExecutionConfig = ExecutionConfig()

  def setup(self):
    cfg = self.config
    for i in range(cfg.num_layers):
      setattr(self, f"layer_{i}",
              TransformerLayer(cfg, layer_kind(cfg, i), self.execution))
    self.initial_states = tuple(
        self.param(f"initial_state_{layer}", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.state_init_std), ("states", "embed")),
                   (cfg.num_states, cfg.d_model))
        for layer in cfg.recurrent_layers)
    if cfg.memory_tokens:
      self.memory = memory_tokens.MemoryTokens(cfg)

  def _layer(self, i) -> TransformerLayer:
    return getattr(self, f"layer_{i}")

  def _start_states(self, states, fresh) -> dict[int, Array]:
    """Rows that start a document get the learned initial state -- before any
    layer runs, so that feedback layers below the recurrent one read it too."""
    return {layer: jnp.where(fresh[:, None, None], initial[None], state)
            for layer, initial, state in zip(
                self.config.recurrent_layers, self.initial_states, states)}

  def _prefix_visible(self, cache_visible, compressed_valid):
    """(B, C + W): which keys before the block each row may see. With
    empty_cache="zeros" all of them: the keys that hold nothing are zeros
    (`_empty_to_zeros`)."""
    w = self.config.block_width
    visible = jnp.broadcast_to(cache_visible[:, None],
                               (cache_visible.shape[0], w))
    if compressed_valid is not None:
      visible = jnp.concatenate([compressed_valid, visible], axis=1)
    if self.config.empty_cache == "zeros":
      return jnp.ones_like(visible)
    return visible

  def _reads(self, states) -> dict[int, dict[str, Array]]:
    """Each recurrent layer's state keys/values, which the state's own
    queries and every layer reading it attend to."""
    return {i: self._layer(i).read_state(s) for i, s in states.items()}

  def _read_by(self, i, reads):
    """The state keys/values layer i's tokens read (or writes from), or None."""
    source = i if i in reads else self.config.state_read_by(i)
    return None if source is None else reads[source]

  def __call__(self, carry: Carry, inputs, window, deterministic: bool):
    cfg = self.config
    # (B, W, d), (B,), (B,), () bool: cut the memory's gradient here.
    x, reset_cache, reset_state, detach_memory = inputs
    cache_visible = carry["valid"] & ~reset_cache
    compressed = carry.get("compressed")
    compressed_valid = None
    if compressed is not None:
      # The compressed memory is reset with the cache.
      compressed_valid = compressed["valid"] & cache_visible[:, None]
      compressed = dict(compressed, memory=tuple(
          _empty_to_zeros(cfg, m, compressed_valid)
          for m in compressed["memory"]))
      if cfg.empty_cache == "zeros":
        compressed_valid = jnp.ones_like(compressed_valid)
    caches = tuple(_empty_to_zeros(cfg, c, cache_visible)
                   for c in carry["cache"])
    prefix_visible = self._prefix_visible(cache_visible, compressed_valid)
    states = self._start_states(carry["state"], ~carry["valid"] | reset_state)
    reads = self._reads(states)
    new_states = dict(states)
    new_cache, new_memory = [], []
    rmt = self.memory if cfg.memory_tokens else None
    if rmt is not None:
      x = rmt.wrap(x, rmt.read(carry["memory"], ~carry["valid"] | reset_state,
                               detach_memory))
      # The keys before the block: the previous block's, or none.
      prefix_visible = prefix_visible[:, :memory_tokens.num_cached(cfg)]
    for i in range(cfg.num_layers):
      prev = caches[i]
      prev = rmt.cached(prev) if rmt is not None else prev
      x, kv, new_state, memory = self._layer(i)(
          x, prev, prefix_visible, _layer_window(window, i), states.get(i),
          self._read_by(i, reads), deterministic,
          None if compressed is None else compressed["memory"][i])
      new_cache.append(rmt.tokens_kv(kv) if rmt is not None else kv)
      new_memory.append(memory)
      if new_state is not None:
        new_states[i] = new_state
    new_carry = {
        "cache": tuple(new_cache),
        "state": tuple(new_states[i] for i in cfg.recurrent_layers),
        "valid": jnp.ones_like(carry["valid"]),
    }
    if compressed is not None:
      new_carry["compressed"] = {
          "memory": tuple(new_memory),
          "valid": compressed_memory.push_visible(
              compressed_valid, prefix_visible[:, -1], cfg)}
    if rmt is not None:
      x, new_carry["memory"] = rmt.unwrap(x)
    return new_carry, x

  def segment(self, carry: Carry, x: Array, reset_cache: Array,
              reset_state: Array, window, deterministic: bool):
    """The same stack over a whole segment, layer by layer
    (`ExecutionConfig.layer_major`).

    Every block of a plain layer runs at once, the blocks folded into the
    batch axis; a recurrent layer first scans its state over the blocks
    (the only sequential part: it needs only the blocks' keys/values), then
    runs its token path for every block at once. Larger products and no
    per-block bookkeeping in the backward pass (each weight's gradient is
    one product, not a sum over the blocks).

    Args:
      x: (B, n, W, d) the segment's token activations.
      reset_cache, reset_state: (B,) rows whose first block drops the
        carried cache / starts from the learned initial state (the
        first-block values of `__call__`'s inputs).
    Returns:
      (new carry, (B, n, W, d) outputs).
    """
    cfg = self.config
    batch, num_blocks = x.shape[:2]
    fold = lambda a: a.reshape(batch * num_blocks, *a.shape[2:])
    unfold = lambda a: a.reshape(batch, num_blocks, *a.shape[1:])
    # Only a row's first block can lose the keys before it.
    first_visible = carry["valid"] & ~reset_cache
    cache = tuple(_empty_to_zeros(cfg, c, first_visible) for c in carry["cache"])
    cache_visible = jnp.concatenate(
        [first_visible[:, None], jnp.ones((batch, num_blocks - 1), bool)],
        axis=1)
    prefix_visible = self._prefix_visible(fold(cache_visible), None)
    states = self._start_states(carry["state"], ~carry["valid"] | reset_state)
    x = fold(x)
    new_cache, new_states = [], {}
    for i in range(cfg.num_layers):
      layer, state_kv, projected = self._layer(i), None, None
      if i in states:
        projected = layer.project(x, deterministic)
        kv = projected[1]
        blocks = {n: jnp.swapaxes(unfold(kv[:, :, j]), 0, 1)
                  for j, n in enumerate("kv")}  # (n, B, W, G, k)
        prev = None
        if cfg.state_reads_previous_block:  # Each block's predecessor.
          prev = ({n: jnp.concatenate([cache[i][n][None].astype(
              b.dtype), b[:-1]]) for n, b in blocks.items()},
                  jnp.swapaxes(unfold(prefix_visible), 0, 1))
        new_states[i], reads = _scan_states(layer, states[i], blocks, prev)
        state_kv = {n: fold(jnp.swapaxes(r, 0, 1)) for n, r in reads.items()}
      x, kv = layer.tokens(x, None, cache[i], prefix_visible, 0,
                           _layer_window(window, i), state_kv, deterministic,
                           projected)
      new_cache.append({n: unfold(v)[:, -1] for n, v in kv.items()})
    new_carry = {
        "cache": tuple(new_cache),
        "state": tuple(new_states[i] for i in cfg.recurrent_layers),
        "valid": jnp.ones_like(carry["valid"]),
    }
    return new_carry, unfold(x)

  # -- incremental decoding ---------------------------------------------------
  def begin_block(self, dec: Carry) -> Carry:
    """Resets fresh rows' states and precomputes every reader's state
    keys/values, which stay fixed for the whole block."""
    cfg = self.config
    states = self._start_states(dec["state"], ~dec["valid"])
    reads = self._reads(states)
    return dict(dec, state=tuple(states[i] for i in cfg.recurrent_layers),
                reads=tuple(reads[i] for i in cfg.recurrent_layers),
                offset=jnp.zeros((), jnp.int32))

  def decode(self, x, dec: Carry, window):
    """T tokens' activations (B, T, d) at dec["offset"] of the current block."""
    windows = []
    cfg = self.config
    prefix_visible = self._prefix_visible(dec["valid"],
                                          dec.get("compressed_valid"))
    reads = dict(zip(cfg.recurrent_layers, dec["reads"]))
    for i in range(cfg.num_layers):
      layer = self._layer(i)
      x, kv = layer.tokens(
          x, dec["window"][i], None, prefix_visible, dec["offset"],
          _layer_window(window, i),
          self._read_by(i, reads) if layer.tokens_read_state else None,
          deterministic=True)
      windows.append(kv)
    offset = dec["offset"] + x.shape[1]
    return x, dict(dec, window=tuple(windows), offset=offset)

  def end_block(self, dec: Carry) -> Carry:
    """The block is complete: update the states, and slide every layer's
    window by a block (the current block becomes the previous one)."""
    cfg = self.config
    w, slots = cfg.block_width, cfg.compressed_slots
    block = [{k: v[:, -w:] for k, v in kv.items()} for kv in dec["window"]]
    states = tuple(
        self._layer(i).update_state(
            s, reads, block[i],
            prev={k: v[:, slots:slots + w] for k, v in dec["window"][i].items()},
            prev_visible=self._prefix_visible(dec["valid"], None))
        for i, s, reads in zip(cfg.recurrent_layers, dec["state"],
                               dec["reads"]))
    memory = [None] * cfg.num_layers
    if slots:
      # The previous block leaves the window: compress it into the memory.
      prefix_visible = self._prefix_visible(dec["valid"],
                                            dec["compressed_valid"])
      memory = [self._layer(i).push_compressed(
          {k: v[:, :slots] for k, v in kv.items()},
          {k: v[:, slots:slots + w] for k, v in kv.items()}, prefix_visible)
                for i, kv in enumerate(dec["window"])]
      dec = dict(dec, compressed_valid=compressed_memory.push_visible(
          prefix_visible[:, :slots], prefix_visible[:, -1], cfg))
    dec = dict(dec, window=tuple(_window_after(kv, m)
                                 for kv, m in zip(block, memory)),
               state=states, valid=jnp.ones_like(dec["valid"]))
    return self.begin_block(dec)


def _scan_states(layer: TransformerLayer, state: Array,
                 blocks: dict[str, Array], prev):
  """A recurrent layer's state over n blocks' keys/values (n, B, W, G, k):
  the final state, and the state keys/values (n, B, S, G, k) each block's
  tokens read (the state carried into it). `prev`: None, or each block's
  predecessor's keys/values (n, B, W, G, k) and visibility (n, B, W)."""
  def body(layer, state, inputs):
    block, before = inputs
    state_kv = layer.read_state(state)
    new_state = layer.update_state(state, state_kv, block,
                                   *(before or (None, None)))
    return new_state, {"k": state_kv["k"], "v": state_kv["v"]}

  scan = nn.scan(body, variable_broadcast="params",
                 split_rngs={"params": False})
  return scan(layer, state, (blocks, prev))


def _empty_to_zeros(cfg: ModelConfig, kv: dict[str, Array],
                    visible: Array) -> dict[str, Array]:
  """With empty_cache="zeros", keys/values before a block that hold nothing
  (visible (B,) per row, or (B, C) per slot, False) become zeros, which the
  block then attends to (`_prefix_visible`); unchanged with "masked"."""
  if cfg.empty_cache != "zeros":
    return kv
  def zero(x):
    v = visible.reshape(visible.shape + (1,) * (x.ndim - visible.ndim))
    return jnp.where(v, x, jnp.zeros_like(x))
  return {name: zero(x) for name, x in kv.items()}


def _window_after(prev: dict[str, Array],
                  compressed: dict[str, Array] | None = None
                  ) -> dict[str, Array]:
  """A decoding window (B, C + 2W, G, k): the compressed memory (if any),
  `prev`, then room for the next block."""
  return {k: jnp.concatenate(
      ([] if compressed is None else [compressed[k]])
      + [v, jnp.zeros_like(v)], axis=1) for k, v in prev.items()}


def check_decodable(config: ModelConfig) -> None:
  """Token-by-token decoding needs each token's output before the block is
  complete; RMT's write memory, which every token of a block attends to,
  exists only once the whole block is in."""
  if config.memory_tokens:
    raise NotImplementedError(
        "Incremental decoding does not support RMT memory tokens "
        "(ModelConfig.memory_tokens > 0): a block's write memory is only "
        "known once the whole block is in, so token-by-token decoding would "
        "need the block re-run per token. Sample from a model without memory "
        "tokens, or re-run model.apply on the text.")


def _layer_window(window, i):
  return dict(window, bias=None if window["bias"] is None else window["bias"][i])


class BlockRecurrentTransformer(nn.Module):
  """Language model over segments of n * W tokens with a carry between them.

  Usage:
    model = BlockRecurrentTransformer(cfg)
    carry = model.initial_carry(batch_size)
    variables = model.init(rng, tokens, carry)
    logits, carry = model.apply(variables, tokens, carry,
                                start_of_sequence=sos)
  Feeding a segment in one call, or block by block passing the carry, gives
  the same logits. For token-by-token decoding see brt/sampling.py.
  """
  config: ModelConfig
  # How it is computed (kernels, remat, layer order): never what.
  execution: ExecutionConfig = ExecutionConfig()

  def setup(self):
    cfg, products = self.config, self.execution.products
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.d_model,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")))
    self.final_dropout = nn.Dropout(cfg.dropout_rate)
    self.blocks = BlockStep(cfg, self.execution)
    if cfg.position == "t5":
      for i in range(cfg.num_layers):
        setattr(self, f"relpos_{i}", RelativePositionBias(cfg))
    self.ln_final = layer_norm(cfg, products)
    if not cfg.tie_embeddings:
      self.unembed = dense(cfg.vocab_size, ("embed", "vocab"),
                           dtype=cfg.compute_dtype, use_bias=cfg.use_bias,
                           products=products)

  def initial_carry(self, batch_size: int) -> Carry:
    return initial_carry(self.config, batch_size)

  def __call__(self, tokens, carry: Carry, start_of_sequence=None,
               deterministic: bool = True, reset_cache=None, reset_state=None):
    """Args:
      tokens: (B, n * W) int32.
      carry: from `initial_carry` or the previous segment's call.
      start_of_sequence: (B,) bool; rows where a new document starts with
        this segment get a fresh cache and state. Default: no reset.
      deterministic: False enables dropout (needs a "dropout" RNG).
      reset_cache, reset_state: (B,) bool, optional further resets at the
        segment start of only the cache (with the compressed memory) or only
        the recurrent state: the trainer's carry dropout (brt/carry_dropout.py).
    Returns:
      logits (B, n * W, vocab) float32, and the carry for the next segment.
    """
    cfg = self.config
    batch, length = tokens.shape
    num_blocks = cfg.check_segment_length(length)
    _check_tokens(tokens, cfg.vocab_size)
    _check_carry(carry, cfg, batch)

    x = self._embed(tokens)
    x = x.reshape(batch, num_blocks, cfg.block_width, cfg.d_model)

    # Resets happen only at the first block of the segment.
    sos = (jnp.zeros((batch,), bool) if start_of_sequence is None
           else jnp.asarray(start_of_sequence, bool).reshape(batch))
    as_rows = lambda r: (jnp.zeros_like(sos) if r is None
                         else jnp.asarray(r, bool).reshape(batch))
    drop_cache = (sos | as_rows(reset_cache)) if cfg.cache_across_segments else (
        jnp.ones_like(sos))
    drop_state = sos | as_rows(reset_state)
    if self.execution.runs_layer_major(cfg):
      carry, y = self.blocks.segment(carry, x, drop_cache, drop_state,
                                     self._window(), deterministic)
      return self._logits(y.reshape(batch, length, cfg.d_model),
                          deterministic), carry

    # Block-major: (n, B, W, d), the scan's leading axis.
    x = jnp.swapaxes(x, 0, 1)
    first = (jnp.arange(num_blocks) == 0)[:, None]
    reset_state = first & drop_state[None]
    reset_cache = first & drop_cache[None]

    def body(step, carry, inputs, window):
      return step(carry, inputs, window, deterministic)

    if self.execution.remat != "none":
      body = nn.remat(body, prevent_cse=False,
                      policy=self.execution.remat_policy())
    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True},
                   in_axes=(0, nn.broadcast), out_axes=0)
    detach_memory = jnp.asarray(
        memory_tokens.detach_schedule(cfg, num_blocks))
    carry, y = scan(self.blocks, carry,
                    (x, reset_cache, reset_state, detach_memory),
                    self._window())
    y = jnp.swapaxes(y, 0, 1).reshape(batch, length, cfg.d_model)
    return self._logits(y, deterministic), carry

  # -- incremental decoding (driven by brt/sampling.py) -----------------------
  def start_decoding(self, carry: Carry) -> Carry:
    """The decoder's state after the blocks that produced `carry`.

    It holds each layer's window of keys/values ("window": the previous
    block's, then the current block's so far), the recurrent states and
    "valid" of the carry, the position in the block ("offset") and the
    states' keys/values ("reads").
    """
    cfg = self.config
    check_decodable(cfg)
    memory = [None] * cfg.num_layers
    dec = {"state": carry["state"], "valid": carry["valid"]}
    if "compressed" in carry:
      dec["compressed_valid"] = carry["compressed"]["valid"]
      memory = [_empty_to_zeros(cfg, m, dec["compressed_valid"])
                for m in carry["compressed"]["memory"]]
    cache = [_empty_to_zeros(cfg, kv, carry["valid"]) for kv in carry["cache"]]
    dec["window"] = tuple(_window_after(kv, m) for kv, m in zip(cache, memory))
    return self.blocks.begin_block(dec)

  def decode(self, tokens, dec: Carry):
    """Logits for T tokens (B, T) that continue the current block.

    The caller keeps offset + T <= W and calls `end_block` when the block is
    full. Cost depends on W, never on how much text came before.
    """
    _check_tokens(tokens, self.config.vocab_size)
    window = self._window(dec["offset"], tokens.shape[1])
    y, dec = self.blocks.decode(self._embed(tokens), dec, window)
    return self._logits(y), dec

  def end_block(self, dec: Carry) -> Carry:
    return self.blocks.end_block(dec)

  # -- shared pieces ------------------------------------------------------------
  def _embed(self, tokens):
    return self.embed(tokens).astype(self.config.compute_dtype)

  def _logits(self, y, deterministic=True):
    """Final norm, dropout, and the output layer: with tie_embeddings the
    embedding's transpose, over sqrt(vocab_size) as meliad scales it (its
    N(0, 1) embedding would otherwise give logits of size sqrt(d))."""
    cfg = self.config
    y = self.ln_final(y).astype(cfg.compute_dtype)
    y = self.final_dropout(y, deterministic=deterministic)
    if not cfg.tie_embeddings:
      return self.unembed(y).astype(jnp.float32)
    logits = linear.einsum("btd,vd->btv", y, self.embed.embedding,
                           cfg.compute_dtype, out_dtype=jnp.float32,
                           products=self.execution.products)
    return logits * (cfg.vocab_size ** -0.5)

  def _window(self, offset=0, length=None) -> dict[str, Any]:
    """Block-invariant attention inputs, built once per call, not per block.

    The relative-position bias is built for the query rows offset ..
    offset + length - 1 only (decoding), or for the whole block."""
    cfg = self.config
    w = cfg.block_width
    compressed = (cfg.compressed_slots, cfg.compressed_mem_factor or 1)
    if cfg.memory_tokens:
      mask = memory_tokens.window_mask(cfg)
      positions = memory_tokens.window_positions(cfg)
    else:
      mask = attention.window_mask(w, *compressed, window=cfg.window)
      positions = attention.key_positions(w, *compressed)
    window = {"mask": jnp.asarray(mask), "bias": None, "sin": None,
              "cos": None}
    if cfg.position == "t5":
      # Float32 in every dtype: the softmax adds it in float32, and as a
      # constant of the block scan its gradient is summed over the blocks
      # in its own dtype (in bf16 that sum also cost a conversion per block).
      window["bias"] = jnp.stack([
          getattr(self, f"relpos_{i}")(offset, length)
          for i in range(cfg.num_layers)
      ])
    else:
      sin, cos = attention.rotary_tables(positions, cfg.head_size,
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
        "carry does not match this model's config (layers, recurrent "
        "layers or compressed memory differ); build it with "
        "model.initial_carry(batch_size).")
  if carry["valid"].shape != (batch,):
    raise ValueError(
        f"carry is for batch size {carry['valid'].shape[0]} but tokens have "
        f"batch size {batch}; use model.initial_carry({batch}).")
