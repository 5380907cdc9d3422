"""Analytic matmul FLOPs of the model, for model-FLOPs utilisation (MFU).

Counts multiply-adds as 2 FLOPs, matmuls and attention products only, as
computed (the masked half of the window's logits is computed, so it counts).
Elementwise work (norms, softmax, gates' sigmoids) is left out, as is usual
for MFU. Backward is taken as twice the forward.
"""

from __future__ import annotations

from brt.config import ModelConfig


def forward_flops_per_block(cfg: ModelConfig, batch: int = 1) -> int:
  """Matmul FLOPs of one block step (W tokens) plus their unembedding."""
  d, h, k, g = cfg.d_model, cfg.num_heads, cfg.head_size, cfg.num_kv_heads
  w, s, m, v = cfg.block_width, cfg.num_states, cfg.mlp_size, cfg.vocab_size
  c = cfg.compressed_slots  # Compressed-memory keys before the window.

  def mlp(rows):
    return rows * 2 * 2 * d * m

  # Rows through the stack: the W tokens, plus read and write memory for
  # RMT; keys: those rows, the previous block's W (none for RMT without
  # XL) and C compressed-memory slots.
  rows = w + 2 * cfg.memory_tokens
  keys = rows + c + (w if not cfg.memory_tokens or cfg.memory_xl_cache else 0)
  plain = (rows * 2 * d * h * k          # queries
           + rows * 2 * d * 2 * g * k    # keys/values
           + rows * 4 * h * k * keys     # logits and weighted values
           + rows * 2 * h * k * d        # output projection
           + mlp(rows))
  if c and cfg.compression == "conv":
    # The block leaving the cache: W / c slots, each a (c k) x k projection
    # per key/value head, for keys and values.
    plain += 2 * (w // cfg.compressed_mem_factor) * g * 2 * (
        cfg.compressed_mem_factor * k) * k
  state_kv = s * 2 * d * 2 * g * k  # state keys/values (once, by the writer)
  reads_state = (w * 2 * d * h * k    # token->state queries
                 + w * 4 * h * k * s  # token->state attention
                 + w * 2 * h * k * d)  # wider output projection
  # The keys the state reads: the completed block, and the one before it.
  state_keys = 2 * w if cfg.state_reads_previous_block else w
  attended = 2 * h * k  # the state's two attention outputs, per state vector

  def gate(fan_in):  # the LSTM gate's input and forget products
    return 2 * s * fan_in * 2 * d if cfg.gate == "lstm" else 0

  state_update = (s * 2 * d * 2 * h * k   # state queries (self, ->tokens)
                  + s * 4 * h * k * s     # state self-attention
                  + s * 4 * h * k * state_keys)  # state->token attention
  if cfg.gate_variant == "single":  # attention -> MLP, gated from its hidden
    state_update += s * 2 * (attended * m + m * d) + gate(m)
  else:  # projection, gated from the attention output
    state_update += s * 2 * attended * d + gate(attended)
  if cfg.gate_variant == "dual":
    state_update += mlp(s) + gate(m)

  total = w * 2 * d * v  # output layer (the tied embedding or its own)
  for layer in range(cfg.num_layers):
    total += plain
    if cfg.layer_reads_state(layer):
      total += reads_state
    if layer in cfg.recurrent_layers:
      total += state_kv + state_update
  return batch * total


def train_flops_per_token(cfg: ModelConfig) -> float:
  """Forward + backward (2x forward) matmul FLOPs per trained token."""
  return 3 * forward_flops_per_block(cfg) / cfg.block_width
