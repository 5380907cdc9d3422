"""Model configuration: one frozen dataclass passed down to every module.

Following flax's lm1b example, a single config object avoids threading dozens
of keyword arguments through the layers. Every variant in the paper
(XL, Slide, Rec:gate:variant, Feedback) is a setting of this dataclass, and
all of them run through the same code path. How the model is computed (the
product and attention kernels, remat, the layer order) is not part of it:
brt.execution.ExecutionConfig.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

GATES = ("fixed", "lstm")
GATE_VARIANTS = ("skip", "single", "dual")
POSITIONS = ("t5", "rotary")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACTIVATIONS = ("gelu", "relu", "swish")
WINDOWS = ("sliding", "blocks")
EMPTY_CACHES = ("zeros", "masked")
NORMS = ("rms", "layer")
COMPRESSIONS = ("conv", "mean")

# brt's model before it followed meliad, as far as options reach it (its
# single/dual cells, LSTM gate wiring, dropout placement and per-reader state
# projections are gone): for ablations against the paper's model.
CLASSIC = dict(window="blocks", empty_cache="masked", qk_norm=False,
               norm="layer", mlp_activation="gelu", use_bias=True,
               tie_embeddings=False, fixed_gate_bias_init=2.0,
               fixed_gate_bias_std=0.0, state_reads_previous_block=False)


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
  # The state's cell (meliad's recurrent_skip_ffn / recurrent_single_gate):
  # "skip": attention -> projection -> gate; "dual": then a norm, the MLP
  # and a second gate computed from the MLP's hidden layer; "single": no
  # projection -- the attention output feeds the MLP (final tanh), and one
  # gate, computed from its hidden layer, writes it onto the state.
  gate_variant: str = "skip"
  # The fixed gate g = sigmoid(b) per channel starts from b ~
  # N(fixed_gate_bias_init, fixed_gate_bias_std): meliad's N(0, 0.1), half of
  # the old state kept (the small spread gives Adafactor's parameter-scaled
  # steps a non-zero scale). brt used to start at 2 (0.88 kept).
  fixed_gate_bias_init: float = 0.0
  fixed_gate_bias_std: float = 0.1
  state_init_std: float = 0.1  # Learned initial state ~ N(0, 0.1).
  # The state's cross-attention reads the previous block's keys/values as
  # well as the completed block's (2W keys, as meliad's recurrent cell), so
  # it sees every token twice: once when its block completes and again one
  # block later, with the state that already took it in. False: only the
  # completed block's W keys (the paper's description).
  state_reads_previous_block: bool = True
  # Feedback: every non-recurrent layer also cross-attends to the state that
  # the (last) recurrent layer carried in from the previous block, through
  # that layer's own state keys/values (state IDs included), as meliad does.
  feedback: bool = False
  # Read/write placement (the PyTorch port's `read_recurrent_layers`): empty,
  # each recurrent layer's tokens read its own state; else one layer per
  # entry of recurrent_layers, read_recurrent_layers[n] <= recurrent_layers[n]
  # (paired in the order given), whose tokens read the state that
  # recurrent_layers[n] writes -- the state from the previous block, since
  # the current block's is written only after its tokens went through the
  # stack. A writer that is not its own reader only updates the state.
  # Every reader takes its writer's state keys/values.
  # `feedback` is the special case "every layer reads".
  read_recurrent_layers: tuple[int, ...] = ()
  # True: the previous block's keys/values are carried across segments (XL).
  # False: the cache is reset at every segment start ("Slide").
  cache_across_segments: bool = True
  # Compressed memories (Compressive Transformer, arXiv 1911.05507): 0 = off;
  # c > 0: each block of keys/values leaving a layer's cache is compressed by
  # c ("conv": a learned stride-c projection per key/value head; "mean":
  # average of c neighbours) into a FIFO of compressed_mem_slots slots
  # (None: block_width // c, one compressed block) that later tokens attend
  # to, before the cache. Part of the carry: reset like the cache.
  compressed_mem_factor: int = 0
  compressed_mem_slots: int | None = None
  compression: str = "conv"
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
  # The attention window. "sliding": each token attends to exactly the W
  # tokens before it and not to itself (meliad's causal_mask; the paper's
  # model). "blocks": the previous block and its own block's causal prefix,
  # itself included (W + 1 to 2W keys; brt's model before it followed
  # meliad).
  window: str = "sliding"
  # What stands before a document's first block (and before every segment
  # in "Slide"): "zeros", W zero keys/values that the tokens and the state
  # still attend to, as meliad resets its cache -- they take softmax weight
  # at the bare position bias and add nothing, somewhere to put attention
  # that finds nothing to read; "masked", no keys at all (a token that then
  # sees no key reads nothing).
  empty_cache: str = "zeros"
  # Attention options.
  multi_query: bool = False  # One key/value head shared by all query heads.
  # L2-normalised queries and keys (meliad's normalize_keys, on in its base
  # config) with a learned per-head scale for each attention, starting at
  # qk_scale_init (meliad: 1; brt used sqrt(head_dim)); the relative-
  # position bias is added before the scale, as meliad does. False: queries
  # scaled by 1/sqrt(head_dim), the bias added to those logits.
  qk_norm: bool = True
  qk_scale_init: float = 1.0
  # Everything else.
  # "rms": scale-only RMS norms (meliad, T5); "layer": LayerNorm with a mean
  # (and a bias with use_bias).
  norm: str = "rms"
  mlp_activation: str = "relu"
  # Biases of the MLP, the attention output projections, the unembedding and
  # "layer" norms (the gates keep theirs: they set what the state remembers
  # at the start). meliad has none.
  use_bias: bool = False
  # Dropout as meliad places it: on the normalised input before the
  # queries/keys/values, after the MLP, and before the logits
  # (dropout_rate); on the self-attention weights (attention_dropout_rate).
  # Nothing inside the recurrent state's update.
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: str = "float32"  # Activation dtype; parameters stay float32.
  # True: the logits are the embedding's transpose times the output, over
  # sqrt(vocab_size) (meliad's decoder_stack); False: a separate output layer.
  tie_embeddings: bool = True

  def __post_init__(self):
    # Gin and JSON give lists; the dataclass is frozen and hashable, so keep
    # a sorted tuple.
    # read_recurrent_layers pairs with recurrent_layers in the order given:
    # sort the pairs together.
    writes = tuple(int(i) for i in self.recurrent_layers)
    reads = tuple(int(i) for i in self.read_recurrent_layers)
    if reads and len(reads) == len(writes):
      pairs = sorted(zip(writes, reads))
      writes, reads = tuple(w for w, _ in pairs), tuple(r for _, r in pairs)
    else:
      writes = tuple(sorted(writes))
    object.__setattr__(self, "recurrent_layers", writes)
    object.__setattr__(self, "read_recurrent_layers", reads)
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

  @property
  def carries_state(self) -> bool:
    """Whether blocks pass a learned memory on beyond the previous block's
    keys/values: a recurrent state or RMT memory tokens."""
    return bool(self.recurrent_layers or self.memory_tokens)

  @property
  def compressed_slots(self) -> int:
    """Compressed-memory slots per layer (0 when the option is off)."""
    if not self.compressed_mem_factor:
      return 0
    if self.compressed_mem_slots is not None:
      return self.compressed_mem_slots
    return self.block_width // self.compressed_mem_factor

  def state_read_by(self, layer: int) -> int | None:
    """The recurrent layer whose state `layer`'s tokens read, or None."""
    if self.read_recurrent_layers:
      for read, write in zip(self.read_recurrent_layers, self.recurrent_layers):
        if read == layer:
          return write
      return None
    if layer in self.recurrent_layers:
      return layer
    return self.feedback_source

  def layer_reads_state(self, layer: int) -> bool:
    return self.state_read_by(layer) is not None

  @property
  def layer_major_blocker(self) -> str | None:
    """Why a segment cannot run layer by layer (brt.execution), or None
    when the architecture allows it.

    It can when a block depends on the one before only through the same
    layer's keys/values and the state its own recurrent layer writes."""
    if any(self.state_read_by(i) not in (None, i)
           for i in range(self.num_layers)) or any(
               self.state_read_by(i) != i for i in self.recurrent_layers):
      return "a layer reads a state another layer writes (feedback)"
    if self.memory_tokens:
      return "RMT memory tokens pass every layer between blocks"
    if self.compressed_mem_factor:
      return "the compressed memory is pushed block by block"
    return None

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
               ("mlp_activation", ACTIVATIONS), ("window", WINDOWS),
               ("empty_cache", EMPTY_CACHES), ("norm", NORMS),
               ("compression", COMPRESSIONS))
    for name, allowed in choices:
      if getattr(self, name) not in allowed:
        fail(f"{name}={getattr(self, name)!r} is not one of {allowed}.")
    if self.feedback and not self.recurrent_layers:
      fail("feedback=True needs a recurrent layer to read the state from; "
           "set recurrent_layers, e.g. (num_layers - 2,).")
    self._validate_memory(fail)
    if self.fixed_gate_bias_std < 0:
      fail(f"fixed_gate_bias_std must be >= 0, got {self.fixed_gate_bias_std}.")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        fail(f"{name} must be in [0, 1), got {getattr(self, name)}.")
    if self.qk_scale_init <= 0:
      fail(f"qk_scale_init must be positive, got {self.qk_scale_init}.")
    self._validate_read_layers(fail)
    self._validate_compression(fail)

  def _validate_read_layers(self, fail):
    reads, writes = self.read_recurrent_layers, self.recurrent_layers
    if not reads:
      return
    if self.feedback:
      fail("feedback=True already makes every layer read the state; set "
           "read_recurrent_layers=() or feedback=False.")
    if len(reads) != len(writes):
      fail(f"read_recurrent_layers {reads} needs one reader per recurrent "
           f"layer {writes} (same length, paired in order).")
    for read, write in zip(reads, writes):
      if not 0 <= read <= write:
        fail(f"read_recurrent_layers: layer {read} cannot read the state of "
             f"recurrent layer {write}; a reader must be in 0..{write} (at or "
             "below its writer, reading the previous block's state).")
    if len(set(reads)) != len(reads):
      fail(f"read_recurrent_layers {reads}: a layer reads at most one state; "
           "give each recurrent layer its own reader.")
    for read, write in zip(reads, writes):
      if read != write and read in writes:
        fail(f"layer {read} writes a state of its own and cannot also read "
             f"layer {write}'s; choose another reader for layer {write}.")

  def _validate_compression(self, fail):
    c = self.compressed_mem_factor
    if not isinstance(c, int) or c < 0:
      fail(f"compressed_mem_factor must be 0 (off) or a positive integer, "
           f"got {c!r}.")
    if c and self.block_width % c:
      fail(f"compressed_mem_factor={c} must divide block_width="
           f"{self.block_width} (a block is compressed into W / c slots).")
    slots = self.compressed_mem_slots
    if slots is not None and (not isinstance(slots, int) or slots <= 0):
      fail(f"compressed_mem_slots must be a positive integer or None "
           f"(block_width // compressed_mem_factor), got {slots!r}.")

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
    if self.memory_tokens and self.compressed_mem_factor:
      fail("RMT memory tokens and compressed memories cannot be combined "
           "(yet): set memory_tokens=0 or compressed_mem_factor=0.")
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
