"""The layers of the stack: a transformer layer whose variants (plain, feedback,
recurrent) share one token path, the recurrent cell's gates, and the MLP.

Every parameter carries logical axis names, so the same model runs on one
device or on a mesh by changing only the rules that map names to mesh axes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from brt import attention, compressed_memory, linear, memory_tokens
from brt.config import ModelConfig
from brt.execution import ExecutionConfig

Array = jax.Array
_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "swish": nn.swish}


def dense(features, names, *, axis=-1, dtype=jnp.float32, use_bias=True,
          name=None, bias_init=nn.initializers.zeros, kernel_scale=1.0,
          products="plain"):
  """A dense layer whose kernel and bias carry logical axis names.

  It contracts the input's last axes: `axis` is -1, or (-n, ..., -1).
  `names` names the kernel's axes (input axes first, then output axes); the
  bias takes the output axes' names. The kernel is drawn as
  variance_scaling(kernel_scale, "fan_in", "truncated_normal"), lecun_normal
  at the default scale, as meliad draws every kernel. `products`:
  ExecutionConfig.products.
  """
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  if axes != tuple(range(-len(axes), 0)):
    raise ValueError(f"dense contracts trailing axes only, got axis={axis}.")
  return linear.Dense(features, tuple(names), num_axes=len(axes), dtype=dtype,
                      use_bias=use_bias, bias_init=bias_init,
                      kernel_scale=kernel_scale, products=products,
                      name=name)


def layer_norm(config: ModelConfig, products: str = "plain", name=None):
  """The model's norm: scale-only RMS ("rms"), or LayerNorm ("layer", with a
  bias when use_bias)."""
  layer = config.norm == "layer"
  return linear.norm(use_mean=layer, use_bias=layer and config.use_bias,
                     products=products, name=name)


def _hidden_axes(in_axes: int, name: str) -> tuple:
  """Logical names of a hidden input's axes: the state's attention output
  (2, H, k) when it has 3, else one axis called `name`."""
  return (None, "heads", "kv") if in_axes == 3 else (name,)


class Mlp(nn.Module):
  """Two products with the activation between: returns (hidden, output).

  The gates of the state's cells are computed from the hidden layer (meliad's
  `y_hidden`). `in_axes` input axes are contracted (3 for the state's
  attention output, (2, H, k)); `final_tanh` bounds the output (the single
  cell, which writes it straight onto the state)."""
  config: ModelConfig
  in_axes: int = 1
  final_tanh: bool = False
  products: str = "plain"  # ExecutionConfig.products.

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    names = _hidden_axes(self.in_axes, "embed")
    axis = tuple(range(-self.in_axes, 0))
    h = dense(cfg.mlp_size, names + ("mlp",), axis=axis,
              dtype=cfg.compute_dtype, use_bias=cfg.use_bias,
              products=self.products, name="wi")(x)
    h = linear.activation(_ACTIVATIONS[cfg.mlp_activation], h, self.products)
    y = dense(cfg.d_model, ("mlp", "embed"), dtype=cfg.compute_dtype,
              use_bias=cfg.use_bias, products=self.products, name="wo")(h)
    if self.final_tanh:
      y = jnp.tanh(y.astype(jnp.float32))
    return h, y


class FixedGate(nn.Module):
  """s' = s * g + z * (1 - g) with g = sigmoid(b), one learned bias per channel
  (meliad's "bias" gate; `hidden` is not read)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, state, hidden, update):
    del hidden
    cfg = self.config
    init = lambda key, shape, dtype=jnp.float32: (
        cfg.fixed_gate_bias_init
        + cfg.fixed_gate_bias_std * jax.random.normal(key, shape, dtype))
    bias = self.param("bias", nn.with_logical_partitioning(init, ("embed",)),
                      (cfg.d_model,))
    g = jax.nn.sigmoid(bias)
    return state * g + update.astype(jnp.float32) * (1.0 - g)


class LstmGate(nn.Module):
  """s' = s * f + z * i (meliad's "lstm" gate): z is the cell's output itself,
  i = sigmoid(W_i h + b_i - 1) and f = sigmoid(W_f h + b_f + 1) from the
  hidden input h of the product that made z. Kernels start small (variance
  scale 0.1) and biases at N(0, 0.1), so the -1/+1 offsets start the cell
  remembering."""
  config: ModelConfig
  in_axes: int = 1
  products: str = "plain"  # ExecutionConfig.products.

  @nn.compact
  def __call__(self, state, hidden, update):
    cfg = self.config
    names = _hidden_axes(self.in_axes, "mlp")
    # One kernel, (hidden..., 2, d): the input and forget gates in one matmul.
    gates = dense((2, cfg.d_model), names + (None, "embed"),
                  axis=tuple(range(-self.in_axes, 0)), dtype=jnp.float32,
                  kernel_scale=0.1, bias_init=nn.initializers.normal(0.1),
                  products=self.products,
                  name="proj")(hidden.astype(jnp.float32))
    i = jax.nn.sigmoid(gates[..., 0, :] - 1.0)
    f = jax.nn.sigmoid(gates[..., 1, :] + 1.0)
    return state * f + update.astype(jnp.float32) * i


def make_gate(config: ModelConfig, in_axes: int = 1,
              products: str = "plain") -> nn.Module:
  """The gate of the config; `in_axes`: the axes of the hidden input it is
  computed from (the LSTM gate's kernel contracts them)."""
  if config.gate == "fixed":
    return FixedGate(config)
  return LstmGate(config, in_axes=in_axes, products=products)


class RelativePositionBias(nn.Module):
  """T5 relative-position bias for the (W, C + 2W) window: a learned scalar
  per head and distance bucket, drawn from N(0, 1 / buckets) as meliad's
  table (flax's default embedding initialiser over its (H, buckets) layout).
  Computed once per segment, outside the scan."""
  config: ModelConfig

  @nn.compact
  def __call__(self, offset=0, length=None):
    """(H, rows, keys) bias; with `length`, only the query rows offset ..
    offset + length - 1 (decoding: gathering the whole window's bias for
    every new token would cost more than the token's matmuls)."""
    cfg = self.config
    table = self.param(
        "table", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.num_position_buckets ** -0.5),
            (None, "heads")),
        (cfg.num_position_buckets, cfg.num_heads))
    distances = (memory_tokens.window_distances(cfg) if cfg.memory_tokens
                 else attention.window_distances(cfg.block_width,
                                                 cfg.compressed_slots,
                                                 cfg.compressed_mem_factor))
    buckets = jnp.asarray(attention.relative_position_buckets(
        distances, cfg.num_position_buckets, cfg.max_position_distance))
    if length is not None:
      buckets = jax.lax.dynamic_slice_in_dim(buckets, offset, length, axis=0)
    return jnp.transpose(table[buckets], (2, 0, 1))  # (H, rows, keys)


class TransformerLayer(nn.Module):
  """One layer of the stack, over the tokens of one block.

  kind "plain": self-attention over the window + MLP.
  kind "feedback": as plain, plus cross-attention from the tokens to a
    recurrent state another layer writes, through that layer's state
    keys/values (`read_state` of the writer).
  kind "recurrent": the block-recurrent cell. The tokens read the state as in
    "feedback"; once the block is complete, the state reads itself and the
    block's tokens with the same keys/values but its own queries, and is
    updated through its cell (`ModelConfig.gate_variant`).
  kind "writer": a recurrent cell whose state another (earlier) layer reads
    (read_recurrent_layers): it updates the state, its tokens do not read it.

  Every layer is pre-norm with residuals (meliad's TransformerBase): norm,
  dropout, queries/keys/values; attention; one projection of all attention
  outputs, added; norm, MLP, dropout, added.

  With compressed memories, the keys before the cache are the layer's
  compressed memory, and `push_compressed` compresses the block leaving the
  cache into it.

  The token path (`tokens`) takes any run of T tokens starting at `offset`
  within the current block, so the same code serves training (the whole block
  at once) and incremental decoding (one token at a time); the state update
  (`update_state`) runs once per completed block in both.
  """
  config: ModelConfig
  kind: str  # "plain", "feedback", "recurrent" or "writer"
  execution: ExecutionConfig = ExecutionConfig()

  @property
  def tokens_read_state(self) -> bool:
    return self.kind in ("feedback", "recurrent")

  @property
  def writes_state(self) -> bool:
    return self.kind in ("recurrent", "writer")

  def setup(self):
    cfg = self.config
    dt = cfg.compute_dtype
    products = self.execution.products
    dense_ = functools.partial(dense, products=products)
    reads_state = self.tokens_read_state
    num_q = 2 if reads_state else 1  # Self-attention (+ token->state) queries.
    heads = ("embed", None, "heads", "kv")
    kv_heads = ("embed", None, "kv_heads", "kv")
    out = (None, "heads", "kv", "embed")
    self.ln_tokens = layer_norm(cfg, products)
    self.q_tokens = dense_((num_q, cfg.num_heads, cfg.head_size), heads,
                          dtype=dt, use_bias=False)
    self.kv_tokens = dense_((2, cfg.num_kv_heads, cfg.head_size), kv_heads,
                           dtype=dt, use_bias=False)
    self.out_tokens = dense_(cfg.d_model, out, axis=(-3, -2, -1), dtype=dt,
                            use_bias=cfg.use_bias)
    self.ln_mlp = layer_norm(cfg, products)
    self.mlp = Mlp(cfg, products=products)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.attention_dropout = nn.Dropout(cfg.attention_dropout_rate)
    self.scale_self = self._attention_scale("scale_self")
    if reads_state:
      self.scale_read = self._attention_scale("scale_read")
    if cfg.compressed_mem_factor and cfg.compression == "conv":
      self.compressor = compressed_memory.Compressor(cfg)
    if self.writes_state:
      # The state's keys/values, which its readers share. State IDs: a
      # learned position per state vector, so that the state vectors (which
      # have no order) can specialise.
      self.ln_state = layer_norm(cfg, products)
      self.kv_state = dense_((2, cfg.num_kv_heads, cfg.head_size), kv_heads,
                            dtype=dt, use_bias=False)
      self.state_ids = self.param(
          "state_ids", nn.with_logical_partitioning(
              nn.initializers.normal(1.0), ("states", "embed")),
          (cfg.num_states, cfg.d_model))
      self.q_state = dense_((2, cfg.num_heads, cfg.head_size), heads, dtype=dt,
                           use_bias=False)
      self.scale_state_self = self._attention_scale("scale_state_self")
      self.scale_state_tokens = self._attention_scale("scale_state_tokens")
      if cfg.gate_variant == "single":
        # The attention output (2, H, k) feeds the MLP; one gate from its
        # hidden layer.
        self.mlp_state = Mlp(cfg, in_axes=3, final_tanh=True,
                             products=products)
        self.gate = make_gate(cfg, products=products)
      else:
        self.out_state = dense_(cfg.d_model, out, axis=(-3, -2, -1), dtype=dt,
                               use_bias=cfg.use_bias)
        self.gate = make_gate(cfg, in_axes=3, products=products)
      if cfg.gate_variant == "dual":
        self.ln_mlp_state = layer_norm(cfg, products)
        self.mlp_state = Mlp(cfg, products=products)
        self.gate_mlp = make_gate(cfg, products=products)

  def _attention_scale(self, name):
    cfg = self.config
    if not cfg.qk_norm:
      return cfg.head_size ** -0.5
    # Normalised q and k give logits in [-1, 1]; a learned per-head scale
    # sets the temperature.
    return self.param(name, nn.with_logical_partitioning(
        nn.initializers.constant(cfg.qk_scale_init), ("heads",)),
        (cfg.num_heads,))

  def _attend(self, q, k, v, scale, deterministic=True, dropout=False, **kw):
    """`attention.attend` with this layer's normalisation and kernel;
    `dropout`: drop attention weights (the token self-attention)."""
    cfg, ex = self.config, self.execution
    impl, drop = ex.attention_kernel(cfg), None
    if dropout and cfg.attention_dropout_rate and not deterministic:
      # jax.nn.dot_product_attention has no dropout: this takes the einsum.
      impl = "einsum"
      drop = lambda w: self.attention_dropout(w, deterministic=False)
    if cfg.qk_norm:
      q, k = attention.l2_normalize(q), attention.l2_normalize(k)
    return attention.attend(q, k, v, scale=scale, impl=impl,
                            bias_scaled=cfg.qk_norm, dropout=drop,
                            products=ex.products,
                            fallback=ex.attention == "auto", **kw)

  def push_compressed(self, memory: dict[str, Array], leaving: dict[str, Array],
                      prefix_visible: Array) -> dict[str, Array]:
    """The compressed memory after the cached block `leaving` left the cache.

    Args:
      memory: {"k", "v"}: (B, C, G, k). leaving: {"k", "v"}: (B, W, G, k).
      prefix_visible: (B, C + W), the visibility of [memory, leaving].
    """
    cfg = self.config
    slots = cfg.compressed_slots
    if cfg.compression == "conv":
      compressed = self.compressor(leaving)
    else:
      compressed = compressed_memory.mean_pool(leaving, cfg.compressed_mem_factor)
    return {name: compressed_memory.push(
        memory[name], prefix_visible[:, :slots], compressed[name],
        prefix_visible[:, slots]) for name in ("k", "v")}

  def read_state(self, state: Array):
    """The state's normalised vectors (with state IDs) and keys/values: what
    the state's own queries and every reader of it attend to (a writer's
    method; readers are handed its result)."""
    hs = self.ln_state(state) + self.state_ids
    hs = hs.astype(self.config.compute_dtype)
    kv = self.kv_state(hs)
    return {"h": hs, "k": kv[:, :, 0], "v": kv[:, :, 1]}

  def project(self, x: Array, deterministic: bool) -> tuple[Array, Array]:
    """Queries (B, T, 1 or 2, H, k) and keys/values (B, T, 2, G, k) of T
    tokens: norm, dropout, products."""
    h = self.ln_tokens(x).astype(self.config.compute_dtype)
    h = self.dropout(h, deterministic=deterministic)
    return self.q_tokens(h), self.kv_tokens(h)

  def tokens(self, x: Array, window_kv: dict[str, Array] | None,
             prev: dict[str, Array] | None, prev_visible: Array, offset,
             window: dict[str, Any], state_kv: dict[str, Array] | None,
             deterministic: bool, projected=None):
    """The vertical direction, for T tokens at positions offset.. of a block.

    P = C + W keys come before the current block: the compressed memory (C
    slots, none unless compressed_mem_factor) and the previous block.

    Args:
      x: (B, T, d) token activations.
      window_kv: decoding: {"k", "v"}: (B, P + W, G, k), the keys/values
        before the block then the current block's so far; these T tokens'
        are written at P + offset. None in training, where x is the whole
        block (offset 0, T = W) and the window is [prev, this block].
      prev: training: {"k", "v"}: (B', P, G, k) keys/values before the block;
        None when decoding. x may hold n consecutive blocks of each of B'
        rows, folded into its batch axis (B = B' * n, row-major): prev is
        then what comes before each row's first block, and the keys before
        every later block are the block before's own (P = W).
      prev_visible: (B, P) bool, False where a key before the block must be
        ignored (with empty_cache="masked": first block of a document, or of
        a segment in "Slide"; compressed slots not filled yet).
      window: block-invariant constants: "mask" (W, P + W), "bias"
        (H, T, P + W) for these T query rows or None, "sin"/"cos" rotary
        tables for the window's key positions or None.
      state_kv: `read_state` of the state carried in from the previous block
        (recurrent and feedback kinds), else None.
      projected: `project(x)`, where the caller needed the keys/values first.
    Returns:
      (x, the keys/values: this block's (B, W, G, k) in training, the
      updated window when decoding).
    """
    cfg = self.config
    dt = cfg.compute_dtype
    batch, length = x.shape[:2]
    w = cfg.block_width
    q, kv = self.project(x, deterministic) if projected is None else projected
    # Keys before this block's: the previous block (W), or none for RMT
    # without the XL cache (prev is then zero-width).
    if window_kv is None:
      new = {"k": kv[:, :, 0], "v": kv[:, :, 1]}
      k_win, v_win = (jnp.concatenate([_keys_before(prev[n], new[n]), new[n]],
                                      axis=1).astype(dt) for n in ("k", "v"))
    else:
      # Written in place: no per-token copy of the window.
      before = window_kv["k"].shape[1] - w
      new = {name: jax.lax.dynamic_update_slice_in_dim(
          window_kv[name], kv[:, :, i].astype(window_kv[name].dtype),
          before + offset, axis=1) for i, name in enumerate("kv")}
      k_win, v_win = new["k"].astype(dt), new["v"].astype(dt)
    # P keys come before this block's rows: the compressed memory and the
    # previous block (none for RMT without the XL cache).
    num_prev = prev_visible.shape[1]
    q_self = q[:, :, 0]
    rows = lambda table, axis: jax.lax.dynamic_slice_in_dim(
        table, offset, length, axis=axis)
    if window["sin"] is not None:
      sin, cos = window["sin"], window["cos"]
      # Queries are the window's positions after the P keys before the block.
      q_self = attention.apply_rotary(q_self, rows(sin[num_prev:], 0),
                                      rows(cos[num_prev:], 0))
      k_win = attention.apply_rotary(k_win, sin, cos)
    # Hide the keys before the block in rows where they hold nothing.
    visible = jnp.concatenate(
        [prev_visible, jnp.ones((batch, k_win.shape[1] - num_prev), bool)],
        axis=1)
    mask = rows(window["mask"], 0)[None] & visible[:, None, :]  # (B, T, keys)
    bias = window["bias"]  # Already for these query rows (see `_window`).
    outs = [self._attend(q_self, k_win, v_win, self.scale_self, deterministic,
                         dropout=True, bias=bias, mask=mask[:, None])]
    if state_kv is not None:
      outs.append(self._attend(q[:, :, 1], state_kv["k"], state_kv["v"],
                               self.scale_read))
    x = x + self.out_tokens(jnp.stack(outs, axis=2))
    _, y = self.mlp(self.ln_mlp(x).astype(dt))
    x = x + self.dropout(y, deterministic=deterministic)
    return x, new

  def update_state(self, state: Array, state_kv: dict[str, Array],
                   block: dict[str, Array],
                   prev: dict[str, Array] | None = None,
                   prev_visible: Array | None = None) -> Array:
    """The horizontal direction: the state after reading a completed block.

    No dropout here (meliad runs its state update without). The cells
    (meliad's recurrent TransformerBase): the state's two attentions
    (itself; the block) make `a` (S, 2, H, k); "skip": s' = gate(s, a, P a);
    "dual": t = gate(s, a, P a), then s' = gate2(t, h, MLP(norm(t))) with h
    the MLP's hidden layer; "single": s' = gate(s, h, tanh(MLP(a))).

    Args:
      state: (B, S, d) float32, the state the block's tokens read.
      state_kv: `read_state(state)`.
      block: {"k", "v"}: (B, W, G, k), the completed block's keys/values.
      prev, prev_visible: the block before's keys/values (B, W, G, k) and
        where they are visible (B, W) bool, as in `tokens`; read only with
        `state_reads_previous_block`.
    """
    cfg = self.config
    dt = cfg.compute_dtype
    q = self.q_state(state_kv["h"])
    keys, values, mask = block["k"].astype(dt), block["v"].astype(dt), None
    if cfg.state_reads_previous_block:
      keys, values = (jnp.concatenate([prev[n].astype(dt), block[n].astype(dt)],
                                      axis=1) for n in ("k", "v"))
      mask = jnp.concatenate(  # (B, 1, 1, 2W): no keys before a document.
          [prev_visible, jnp.ones_like(prev_visible)], axis=1)[:, None, None]
    attended = jnp.stack(
        [self._attend(q[:, :, 0], state_kv["k"], state_kv["v"],
                      self.scale_state_self),
         self._attend(q[:, :, 1], keys, values, self.scale_state_tokens,
                      mask=mask)], axis=2)
    if cfg.gate_variant == "single":
      hidden, z = self.mlp_state(attended)
      return self.gate(state, hidden, z)
    new_state = self.gate(state, attended, self.out_state(attended))
    if cfg.gate_variant == "dual":
      hidden, m = self.mlp_state(self.ln_mlp_state(new_state).astype(dt))
      new_state = self.gate_mlp(new_state, hidden, m)
    return new_state

  def __call__(self, x, prev, prev_visible, window, state, state_kv,
               deterministic, compressed=None):
    """A whole block (training).

    Args:
      prev: {"k", "v"}: (B, W, G, k), the previous block's keys/values.
      prev_visible: (B, C + W) bool, see `tokens`.
      state: the state this layer writes (already reset in rows that start a
        document), or None.
      state_kv: `read_state` of the state this layer reads or writes, or None.
      compressed: {"k", "v"}: (B, C, G, k), the compressed memory, or None.
    Returns:
      (x, this block's keys/values, new state or None, new compressed memory
      or None).
    """
    before = prev
    if compressed is not None:
      before = {n: jnp.concatenate([compressed[n], prev[n]], axis=1)
                for n in ("k", "v")}
    x, block = self.tokens(x, None, before, prev_visible, 0, window,
                           state_kv if self.tokens_read_state else None,
                           deterministic)
    new_compressed = None
    if compressed is not None:
      new_compressed = self.push_compressed(compressed, prev, prev_visible)
    new_state = None
    if self.writes_state:
      new_state = self.update_state(state, state_kv, block, prev,
                                    prev_visible[:, -prev["k"].shape[1]:])
    return x, block, new_state, new_compressed


def _keys_before(prev: Array, new: Array) -> Array:
  """The keys/values before each block of `new` (B' * n, W, G, k), n
  consecutive blocks per row: `prev` (B', P, G, k) before each row's first,
  then each block's predecessor."""
  num_blocks = new.shape[0] // prev.shape[0]
  if num_blocks == 1:
    return prev
  blocks = new.reshape(prev.shape[0], num_blocks, *new.shape[1:])
  before = jnp.concatenate([prev[:, None].astype(new.dtype), blocks[:, :-1]],
                           axis=1)
  return before.reshape(new.shape)
