"""Model configuration: one frozen dataclass passed down to every module.

Following flax's lm1b example, a single config object avoids threading dozens
of keyword arguments through the layers. Every variant in the paper
(XL, Slide, Rec:gate:variant, Feedback) is a setting of this dataclass, and
all of them run through the same code path.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

GATES = ("fixed", "lstm")
GATE_VARIANTS = ("skip", "single", "dual")
POSITIONS = ("t5", "rotary")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACTIVATIONS = ("gelu", "relu", "swish")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a block-recurrent transformer.

  Notation of the design notes: d = d_model, H = num_heads, k = head_dim,
  W = block_width, S = num_states. A training segment of L tokens is L / W
  blocks; the layer stack is one step of a scan over those blocks.
  """

  vocab_size: int = 256
  num_layers: int = 6
  d_model: int = 512
  num_heads: int = 8
  head_dim: int | None = None  # None: d_model // num_heads.
  mlp_dim: int | None = None  # None: 4 * d_model.
  block_width: int = 128
  # Recurrence. An empty tuple gives Transformer-XL (or Slide, see below).
  recurrent_layers: tuple[int, ...] = ()
  num_states: int = 128
  gate: str = "fixed"  # "fixed" or "lstm".
  gate_variant: str = "skip"  # "skip", "single" or "dual".
  fixed_gate_bias_init: float = 2.0  # sigmoid(2) = 0.88 of the old state kept.
  state_init_std: float = 0.1  # Learned initial state ~ N(0, 0.1).
  # Feedback: every non-recurrent layer also cross-attends to the state that
  # the (last) recurrent layer carried in from the previous block.
  feedback: bool = False
  # True: the previous block's keys/values are carried across segments (XL).
  # False: the cache is reset at every segment start ("Slide").
  cache_across_segments: bool = True
  # RMT (brt/memory_tokens.py): M > 0 memory tokens read before and written
  # after every block; gradients flow through the memory for
  # memory_bptt_blocks blocks (None: the whole segment); memory_xl_cache
  # also keeps the previous block's keys/values visible ("RMT + XL").
  memory_tokens: int = 0
  memory_bptt_blocks: int | None = None
  memory_xl_cache: bool = False
  # Positions: T5 relative bias (default) or rotary; never absolute.
  position: str = "t5"
  num_position_buckets: int = 32
  max_position_distance: int = 128
  rotary_base: float = 10_000.0
  # Attention options.
  multi_query: bool = False  # One key/value head shared by all query heads.
  qk_norm: bool = False  # L2-normalised queries/keys with a learned scale.
  # Everything else.
  mlp_activation: str = "gelu"
  dropout_rate: float = 0.0
  remat: bool = False  # Recompute each block step in the backward pass.
  dtype: str = "float32"  # Activation dtype; parameters stay float32.
  tie_embeddings: bool = False

  def __post_init__(self):
    # Gin and JSON give lists; the dataclass is frozen and hashable, so keep
    # a sorted tuple.
    object.__setattr__(self, "recurrent_layers",
                       tuple(sorted(int(i) for i in self.recurrent_layers)))
    self._validate()

  # -- derived sizes ---------------------------------------------------------
  @property
  def head_size(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

  @property
  def mlp_size(self) -> int:
    return self.mlp_dim if self.mlp_dim is not None else 4 * self.d_model

  @property
  def num_kv_heads(self) -> int:
    return 1 if self.multi_query else self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def feedback_source(self) -> int | None:
    """The recurrent layer whose state feedback layers read, or None."""
    return self.recurrent_layers[-1] if self.feedback else None

  def layer_reads_state(self, layer: int) -> bool:
    return layer in self.recurrent_layers or self.feedback

  # -- validation ------------------------------------------------------------
  def _validate(self):
    def fail(msg):
      raise ValueError(f"ModelConfig: {msg}")

    for name in ("vocab_size", "num_layers", "d_model", "num_heads",
                 "block_width", "num_states", "num_position_buckets",
                 "max_position_distance"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        fail(f"{name} must be a positive integer, got {value!r}.")
    if self.head_dim is None and self.d_model % self.num_heads:
      fail(f"num_heads={self.num_heads} does not divide d_model={self.d_model}; "
           "choose a divisor or set head_dim explicitly.")
    if self.head_size <= 0 or self.mlp_size <= 0:
      fail("head_dim and mlp_dim must be positive.")
    if self.position == "rotary" and self.head_size % 2:
      fail(f"rotary positions need an even head_dim, got {self.head_size}.")
    bad = [i for i in self.recurrent_layers if not 0 <= i < self.num_layers]
    if bad:
      fail(f"recurrent layer index {bad} out of range: layers are numbered "
           f"0..{self.num_layers - 1} (num_layers={self.num_layers}).")
    if len(set(self.recurrent_layers)) != len(self.recurrent_layers):
      fail(f"recurrent_layers {self.recurrent_layers} has duplicates.")
    choices = (("gate", GATES), ("gate_variant", GATE_VARIANTS),
               ("position", POSITIONS), ("dtype", tuple(DTYPES)),
               ("mlp_activation", ACTIVATIONS))
    for name, allowed in choices:
      if getattr(self, name) not in allowed:
        fail(f"{name}={getattr(self, name)!r} is not one of {allowed}.")
    if self.feedback and not self.recurrent_layers:
      fail("feedback=True needs a recurrent layer to read the state from; "
           "set recurrent_layers, e.g. (num_layers - 2,).")
    self._validate_memory(fail)
    if not 0.0 <= self.dropout_rate < 1.0:
      fail(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")

  def _validate_memory(self, fail):
    if not isinstance(self.memory_tokens, int) or self.memory_tokens < 0:
      fail(f"memory_tokens must be a non-negative integer, got "
           f"{self.memory_tokens!r}.")
    k = self.memory_bptt_blocks
    if k is not None and (not isinstance(k, int) or k <= 0):
      fail(f"memory_bptt_blocks must be a positive integer or None (the whole "
           f"segment), got {k!r}.")
    if not self.memory_tokens and (k is not None or self.memory_xl_cache):
      fail("memory_bptt_blocks and memory_xl_cache configure RMT memory, "
           "which is off: set memory_tokens > 0, or leave them at their "
           "defaults (None, False).")
    if self.memory_tokens and (self.recurrent_layers or self.feedback):
      fail("RMT memory tokens and block-recurrent layers are alternative "
           "memories and cannot be combined: set recurrent_layers=() and "
           "feedback=False, or memory_tokens=0.")

  def check_segment_length(self, length: int) -> int:
    """Returns the number of blocks in a segment, or explains the mismatch."""
    if length <= 0 or length % self.block_width:
      raise ValueError(
          f"Segment length {length} is not a positive multiple of "
          f"block_width={self.block_width}. Choose a segment length of n * "
          f"{self.block_width} tokens (or a block_width dividing {length}).")
    return length // self.block_width
