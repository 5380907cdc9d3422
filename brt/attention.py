"""Attention arithmetic, window masks and positions (no parameters here).

Everything that depends only on the block width (the causal window mask,
relative-position buckets, rotary tables) is computed once, outside the scan
over blocks, and handed to every block step.
"""

from __future__ import annotations

import functools

import math

import jax
import jax.numpy as jnp
import numpy as np

from brt import linear

# Large negative logit for masked keys: exp() of it underflows to exactly 0,
# so masked keys contribute nothing (not "almost nothing") to the softmax.
_MASKED = -1e30


def key_positions(block_width: int, compressed_slots: int = 0,
                  compression_factor: int = 1) -> np.ndarray:
  """(C + 2W,) positions of the window's keys, 0 = the previous block's first.

  Keys are laid out as [compressed memory (C), previous block (W), this block
  (W)]. Compressed slot j of C (oldest first) stands for the c tokens
  -(C - j) * c .. -(C - j) * c + c - 1 that were compressed into it: it sits
  at their (rounded-down) centre, so its relative position (bias bucket or
  rotary angle) follows its distance to the query like a raw token's.
  """
  c = compression_factor
  slots = np.arange(compressed_slots)
  compressed = -(compressed_slots - slots) * c + (c - 1) // 2
  return np.concatenate([compressed, np.arange(2 * block_width)])


def window_mask(block_width: int, compressed_slots: int = 0,
                compression_factor: int = 1,
                window: str = "sliding") -> np.ndarray:
  """(W, C + 2W) bool: which of the window's keys query i of a block sees.

  Query i sits at position W + i. "sliding": the W keys before it, W + i - W
  .. W + i - 1, not itself (meliad's causal mask). "blocks": every key at or
  before it, between W and 2W - 1 earlier tokens plus itself. The
  compressed memory, always before the window, is seen either way (which
  slots hold anything is a per-row mask applied separately).
  """
  if window not in ("sliding", "blocks"):
    raise ValueError(f"window={window!r} is not 'sliding' or 'blocks'.")
  q = np.arange(block_width)[:, None] + block_width
  k = key_positions(block_width, compressed_slots, compression_factor)[None, :]
  if window == "blocks":
    return k <= q
  compressed = np.arange(k.shape[1])[None, :] < compressed_slots
  return compressed | ((k < q) & (k >= q - block_width))


def window_distances(block_width: int, compressed_slots: int = 0,
                     compression_factor: int = 1) -> np.ndarray:
  """(W, C + 2W) int: query position minus key position (clipped at 0)."""
  q = np.arange(block_width)[:, None] + block_width
  k = key_positions(block_width, compressed_slots, compression_factor)[None, :]
  return np.maximum(q - k, 0)


def relative_position_buckets(distance: np.ndarray, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """T5's causal buckets: exact for small distances, logarithmic beyond.

  Half the buckets hold distances 0..num_buckets/2 - 1 one each; the rest
  cover up to max_distance on a log scale; farther keys share the last one.
  """
  exact = num_buckets // 2
  distance = np.asarray(distance)
  safe = np.maximum(distance, 1)  # log(0) is never used: those are exact.
  log_bucket = exact + (np.log(safe / exact) / math.log(max_distance / exact)
                        * (num_buckets - exact)).astype(np.int64)
  log_bucket = np.minimum(log_bucket, num_buckets - 1)
  return np.where(distance < exact, distance, log_bucket).astype(np.int32)


def rotary_tables(positions: np.ndarray, head_dim: int, base: float):
  """sin and cos tables, (len(positions), head_dim / 2), for rotary embeddings."""
  inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2) / head_dim))
  angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
  return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotates (B, T, H, k) by position; sin/cos are (T, k/2)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  sin = sin[None, :, None, :].astype(x.dtype)
  cos = cos[None, :, None, :].astype(x.dtype)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 / norm).astype(x.dtype)


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *,
           scale: jax.Array | float, bias: jax.Array | None = None,
           mask: jax.Array | None = None, impl: str = "einsum",
           bias_scaled: bool = False, dropout=None, products: str = "plain",
           fallback: bool = False) -> jax.Array:
  """Multi-head (or multi-query) dot-product attention.

  Args:
    query: (B, Q, H, k). key, value: (B, K, G, k) where G divides H (G = H for
      ordinary heads, G = 1 for multi-query attention).
    scale: a scalar, or (H,) per-head scales (normalised queries/keys).
    bias: added to the logits, broadcastable to (B, H, Q, K).
    mask: bool, True where a key is visible, broadcastable to (B, H, Q, K).
      A query that sees no key reads nothing (a zero output).
    impl: "einsum" (below, the reference), "xla" / "cudnn":
      jax.nn.dot_product_attention with that implementation, or
      "pallas_tpu": jax's Pallas flash-attention kernel for TPUs (keys in
      multiples of 128).
    bias_scaled: the logits are (q.k + bias) * scale (meliad, with normalised
      queries/keys) rather than q.k * scale + bias.
    dropout: None, or a function applied to the attention weights (einsum
      only).
    products: ExecutionConfig.products, for the einsum's products.
    fallback: where jax refuses `impl` for these shapes or dtypes (it checks
      when tracing), take the einsum instead of raising
      (ExecutionConfig.attention="auto").
  Returns:
    (B, Q, H, k) in the value's dtype.
  """
  if impl != "einsum" and query.shape[1] > 1:
    if dropout is not None:
      raise ValueError("attention dropout needs impl='einsum'.")
    fused = (_pallas_tpu_attention if impl == "pallas_tpu" else
             functools.partial(_dot_product_attention, implementation=impl))
    try:
      return fused(query, key, value, scale=scale, bias=bias, mask=mask,
                   bias_scaled=bias_scaled)
    except (ValueError, NotImplementedError, RuntimeError):
      if not fallback:
        raise
  b, q_len, heads, k_size = query.shape
  groups = key.shape[2]
  per_group = heads // groups
  if q_len == 1 and dropout is None:
    return _attend_one_query(query, key, value, scale, bias, mask, bias_scaled)
  # The logits' layout: "bhqk" (plain heads), "bgnqk" (query heads grouped
  # by the key/value head they share) or "bqhk" (multi-query).
  if groups == 1 and heads > 1:
    # Multi-query: every head's queries are more rows of one product with
    # the single key/value head, so the logits and the output come out in
    # the queries' own (B, Q, H, .) layout, and nothing is transposed.
    layout = "bqhk"
    key, value = key[:, :, 0], value[:, :, 0]
    qk, pv = "bkd,bqhd->bqhk", "bqhk,bkd->bqhd"
  elif per_group > 1:
    layout = "bgnqk"
    query = query.reshape(b, q_len, groups, per_group, k_size)
    qk, pv = "bkgd,bqgnd->bgnqk", "bgnqk,bkgd->bqgnd"
  else:
    # Plain heads take 4-D products: XLA:CPU runs the attention's forward
    # and backward a fifth faster than with a size-1 group axis.
    layout = "bhqk"
    qk, pv = "bkhd,bqhd->bhqk", "bhqk,bkhd->bqhd"

  def logits_shaped(x):
    """(B?, H, Q, K) broadcastable -> broadcastable to the logits."""
    x = jnp.asarray(x)
    while x.ndim < 4:
      x = x[None]
    if layout == "bqhk":
      return jnp.swapaxes(x, 1, 2)
    if layout == "bhqk":
      return x
    if x.shape[1] == 1:
      return x[:, :, None]
    return x.reshape(x.shape[0], groups, per_group, *x.shape[2:])

  # Logits in float32 (products accumulated in float32 in any dtype). Keys
  # come first: XLA:CPU (jaxlib 0.10) has no kernel for the bf16 x bf16 ->
  # f32 product "bqhd,bhqk->bkhd" that the other order's backward pass takes
  # (tests/test_linear.py runs every spec brt uses).
  logits = linear.einsum(qk, key, query, query.dtype, out_dtype=jnp.float32,
                         products=products)
  scale = jnp.asarray(scale, jnp.float32)
  if scale.ndim:
    scale = logits_shaped(scale[:, None, None])[0]  # Per head.
  weights = _softmax(logits, scale,
                     None if bias is None else logits_shaped(bias),
                     None if mask is None else logits_shaped(mask),
                     bias_scaled, products)
  if dropout is not None:
    weights = dropout(weights)
  out = linear.einsum(pv, weights.astype(value.dtype), value, value.dtype,
                      products=products)
  return out.reshape(b, q_len, heads, k_size)


def _softmax(logits, scale, bias, mask, bias_scaled=False, products="plain"):
  """The attention weights, float32: scale, add the bias, hide masked keys;
  each broadcastable to the logits. A row with no visible key gets zero
  weights (the softmax of a row of equal masked logits would spread over
  them)."""
  if bias is not None:
    bias = jnp.asarray(bias, jnp.float32)
    if bias_scaled:
      logits = linear.add_bias(logits, bias, products)
  logits = logits * scale
  if bias is not None and not bias_scaled:
    logits = linear.add_bias(logits, bias, products)
  if mask is None:
    return jax.nn.softmax(logits, axis=-1)
  weights = jax.nn.softmax(jnp.where(mask, logits, _MASKED), axis=-1)
  return jnp.where(mask, weights, 0.0)


def _attend_one_query(query, key, value, scale, bias, mask, bias_scaled):
  """`attend` for a single query per row (incremental decoding), as
  elementwise products and sums in float32 over the keys/values in their
  (B, K, G, k) layout: a dot would first transpose the whole window to put
  the heads in front, every layer and every token."""
  b, _, heads, k_size = query.shape
  groups, out_dtype = key.shape[2], value.dtype
  q = query[:, 0].reshape(b, 1, groups, heads // groups, k_size)
  key = key.astype(jnp.float32)[:, :, :, None]  # (B, K, G, 1, k)
  logits = jnp.sum(key * q.astype(jnp.float32), axis=-1)  # (B, K, G, H/G)
  logits = logits.reshape(b, -1, heads).transpose(0, 2, 1)[:, :, None]
  scale = jnp.asarray(scale, jnp.float32)
  if scale.ndim:
    scale = scale[:, None, None]  # Per head.
  weights = _softmax(logits, scale, bias, mask, bias_scaled)  # (B, H, 1, K)
  weights = weights[:, :, 0].transpose(0, 2, 1)
  weights = weights.reshape(b, -1, groups, heads // groups, 1)
  value = value.astype(jnp.float32)[:, :, :, None]  # (B, K, G, 1, k)
  out = jnp.sum(weights * value, axis=1)  # (B, G, H/G, k)
  return out.reshape(b, 1, heads, k_size).astype(out_dtype)


def _dot_product_attention(query, key, value, *, scale, bias, mask,
                           bias_scaled=False, implementation="xla"):
  """`attend` through jax.nn.dot_product_attention.

  That function takes grouped key/value heads itself (query head n uses
  key/value head n // (H / G), as `attend` does), one scalar scale, and 4-D
  bias and mask broadcastable to (B, H, Q, K). `implementation`: "xla", or
  "cudnn" (the fused flash kernel: a GPU and 16-bit inputs).
  """
  query, scale, bias = _scale_into_query(query, scale, bias, bias_scaled,
                                         always=False)
  dtype = query.dtype
  out = jax.nn.dot_product_attention(
      query, key.astype(dtype), value.astype(dtype),
      bias=None if bias is None else _as_4d(bias).astype(jnp.float32),
      mask=None if mask is None else _as_4d(mask),
      scale=scale, implementation=implementation)
  return _zero_unseen(out, mask, key.shape[1]).astype(dtype)


def _as_4d(x):
  x = jnp.asarray(x)
  return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _scale_into_query(query, scale, bias, bias_scaled, always):
  """(query, scale, bias) with learned per-head scales (or, `always`, any
  scale) folded into the queries -- the logits are linear in the query, so
  (q s) . k == s (q . k) -- and a bias_scaled bias multiplied by the scale:
  (q.k + b) s == q.k s + b s."""
  per_head = jnp.broadcast_to(jnp.asarray(scale, jnp.float32),
                              (query.shape[2],))
  if bias is not None and bias_scaled:
    bias = _as_4d(bias).astype(jnp.float32) * per_head[None, :, None, None]
  if always or not isinstance(scale, (int, float)):
    query = (query.astype(jnp.float32)
             * per_head[None, None, :, None]).astype(query.dtype)
    scale = 1.0
  return query, scale, bias


def _zero_unseen(out, mask, num_keys):
  """A query that sees no key reads nothing, as in `attend`."""
  if mask is None:
    return out
  seen = jnp.any(jnp.broadcast_to(_as_4d(mask), (
      out.shape[0], out.shape[2], out.shape[1], num_keys)), axis=-1)
  return out * jnp.swapaxes(seen, 1, 2)[..., None].astype(out.dtype)


# The Pallas TPU kernel's key blocks are whole vector registers of 128 lanes.
_PALLAS_LANES = 128


def _pallas_tpu_attention(query, key, value, *, scale, bias, mask,
                          bias_scaled=False):
  """`attend` through jax's Pallas flash-attention kernel for TPUs
  (jax.experimental.pallas.ops.tpu.flash_attention), which takes one
  additive bias (here the position bias and the mask, as -1e9) and scales
  (q.k + bias); on another backend it runs under
  `jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (the tests).
  Raises ValueError for shapes it does not take: keys not a multiple of
  128, queries not a multiple of 8, or heads wider than 128 and not a
  multiple of it."""
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  b, q_len, heads, size = query.shape
  k_len, groups = key.shape[1], key.shape[2]
  if (k_len % _PALLAS_LANES or q_len % 8
      or (size > _PALLAS_LANES and size % _PALLAS_LANES)):
    raise ValueError(
        f"the Pallas TPU attention kernel takes keys in multiples of "
        f"{_PALLAS_LANES} and queries in multiples of 8 (got {k_len} keys, "
        f"{q_len} queries, heads of {size}).")
  query, _, bias = _scale_into_query(query, scale, bias, bias_scaled,
                                     always=True)
  dtype = query.dtype
  logit_bias = jnp.zeros((1, 1, q_len, k_len), jnp.float32)
  if bias is not None:
    logit_bias = logit_bias + _as_4d(bias).astype(jnp.float32)
  if mask is not None:
    logit_bias = jnp.where(_as_4d(mask), logit_bias, -1e9)
  logit_bias = jnp.broadcast_to(logit_bias, (b, heads, q_len, k_len))
  # The kernel wants (B, H, L, k) and as many key/value heads as queries.
  to_heads = lambda x: jnp.repeat(jnp.swapaxes(x, 1, 2).astype(dtype),
                                  heads // groups, axis=1)
  q_block = min(q_len, _PALLAS_LANES)
  k_block = min(k_len, 4 * _PALLAS_LANES)
  k_block = k_block if k_len % k_block == 0 else _PALLAS_LANES
  blocks = fa.BlockSizes(
      block_q=q_block, block_k_major=k_block, block_k=k_block, block_b=1,
      block_q_major_dkv=q_block, block_k_major_dkv=k_block,
      block_k_dkv=k_block, block_q_dkv=q_block, block_k_major_dq=k_block,
      block_k_dq=k_block, block_q_dq=q_block)
  out = fa.flash_attention(jnp.swapaxes(query, 1, 2), to_heads(key),
                           to_heads(value), ab=logit_bias, sm_scale=1.0,
                           block_sizes=blocks)
  out = jnp.swapaxes(out, 1, 2)
  return _zero_unseen(out, mask, k_len).astype(dtype)
