"""The layers of the stack: a transformer layer whose variants (plain, feedback,
recurrent) share one token path, the recurrent cell's gates, and the MLP.

Every parameter carries logical axis names, so the same model runs on one
device or on a mesh by changing only the rules that map names to mesh axes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from brt import attention
from brt.config import ModelConfig

Array = jax.Array
_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "swish": nn.swish}


def dense(features, names, *, axis=-1, dtype=jnp.float32, use_bias=True,
          name=None, bias_init=nn.initializers.zeros):
  """A DenseGeneral whose kernel and bias carry logical axis names.

  `names` names the kernel's axes (input axes first, then output axes); the
  bias takes the output axes' names.
  """
  features = (features,) if isinstance(features, int) else tuple(features)
  return nn.DenseGeneral(
      features=features, axis=axis, dtype=dtype, use_bias=use_bias, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), names),
      bias_init=nn.with_logical_partitioning(
          bias_init, names[-len(features):]))


def layer_norm(name=None, dtype=jnp.float32):
  return nn.LayerNorm(
      dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    h = dense(cfg.mlp_size, ("embed", "mlp"), dtype=cfg.compute_dtype,
              name="wi")(x)
    h = _ACTIVATIONS[cfg.mlp_activation](h)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return dense(cfg.d_model, ("mlp", "embed"), dtype=cfg.compute_dtype,
                 name="wo")(h)


class FixedGate(nn.Module):
  """s' = s * g + z * (1 - g) with g = sigmoid(b), one learned bias per channel."""
  config: ModelConfig

  @nn.compact
  def __call__(self, state, update):
    bias = self.param(
        "bias", nn.with_logical_partitioning(
            nn.initializers.constant(self.config.fixed_gate_bias_init),
            ("embed",)), (self.config.d_model,))
    g = jax.nn.sigmoid(bias)
    return state * g + update.astype(jnp.float32) * (1.0 - g)


class LstmGate(nn.Module):
  """s' = s * f + z * i with z = tanh(W_z h + b_z), i = sigmoid(W_i h + b_i - 1),
  f = sigmoid(W_f h + b_f + 1): the -1/+1 offsets start the cell remembering."""
  config: ModelConfig

  @nn.compact
  def __call__(self, state, h):
    cfg = self.config
    # One (d, 3, d) kernel: z, input and forget projections in one matmul.
    proj = dense((3, cfg.d_model), ("embed", None, "embed_out"),
                 dtype=jnp.float32, name="proj")(h.astype(jnp.float32))
    z = jnp.tanh(proj[..., 0, :])
    i = jax.nn.sigmoid(proj[..., 1, :] - 1.0)
    f = jax.nn.sigmoid(proj[..., 2, :] + 1.0)
    return state * f + z * i


def make_gate(config: ModelConfig, name: str) -> nn.Module:
  gate_cls = FixedGate if config.gate == "fixed" else LstmGate
  return gate_cls(config, name=name)


class RelativePositionBias(nn.Module):
  """T5 relative-position bias for the (W, 2W) window: a learned scalar per
  head and distance bucket. Computed once per segment, outside the scan."""
  config: ModelConfig

  @nn.compact
  def __call__(self):
    cfg = self.config
    table = self.param(
        "table", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "heads")),
        (cfg.num_position_buckets, cfg.num_heads))
    buckets = attention.relative_position_buckets(
        attention.window_distances(cfg.block_width), cfg.num_position_buckets,
        cfg.max_position_distance)
    return jnp.transpose(table[buckets], (2, 0, 1))  # (H, W, 2W)


class TransformerLayer(nn.Module):
  """One layer applied to one block of W tokens.

  kind "plain": self-attention over [previous block, causal prefix] + MLP.
  kind "feedback": as plain, plus cross-attention from the tokens to a
    recurrent state it only reads.
  kind "recurrent": the block-recurrent cell. The tokens read the state as in
    "feedback"; the state reads itself and the block's tokens with the same
    keys/values but its own queries, and is updated through a gate.
  """
  config: ModelConfig
  kind: str  # "plain", "feedback" or "recurrent"

  def _attention_scale(self, name):
    cfg = self.config
    if not cfg.qk_norm:
      return cfg.head_size ** -0.5
    # Normalised q and k give logits in [-1, 1]; a learned per-head scale
    # (initialised to sqrt(k), the plain path's typical logit range) sets the
    # temperature.
    return self.param(name, nn.with_logical_partitioning(
        nn.initializers.constant(cfg.head_size ** 0.5), ("heads",)),
        (cfg.num_heads,))

  def _qk(self, q, k):
    if self.config.qk_norm:
      return attention.l2_normalize(q), attention.l2_normalize(k)
    return q, k

  @nn.compact
  def __call__(self, x: Array, cache: dict[str, Array], cache_visible: Array,
               window: dict[str, Any], state: Array | None,
               deterministic: bool):
    """Args:
      x: (B, W, d) token activations of this block.
      cache: {"k", "v"}: (B, W, G, k) keys/values of the previous block.
      cache_visible: (B,) bool, False where the cache must be ignored (first
        block of a document, or of a segment in "Slide").
      window: block-invariant constants: "mask" (W, 2W), "bias" (H, W, 2W) or
        None, "sin"/"cos" rotary tables for the 2W window positions or None.
      state: (B, S, d) float32, the state carried in from the previous block
        (already reset in rows that start a document), for the recurrent
        and feedback kinds; None for plain layers.
    Returns:
      (x, new cache for this layer, new state or None).
    """
    cfg = self.config
    dt = cfg.compute_dtype
    reads_state = self.kind != "plain"
    num_q = 2 if reads_state else 1  # Self-attention (+ token->state) queries.

    # ---- keys/values of the tokens and (if read) of the state -------------
    h = layer_norm("ln_tokens")(x).astype(dt)
    q_x = dense((num_q, cfg.num_heads, cfg.head_size),
                ("embed", None, "heads", "kv"), dtype=dt, use_bias=False,
                name="q_tokens")(h)
    kv_x = dense((2, cfg.num_kv_heads, cfg.head_size),
                 ("embed", None, "kv_heads", "kv"), dtype=dt, use_bias=False,
                 name="kv_tokens")(h)
    k_x, v_x = kv_x[:, :, 0], kv_x[:, :, 1]

    if reads_state:
      hs = layer_norm("ln_state")(state)
      if self.kind == "recurrent":
        # State IDs: a learned position per state vector, so that the state
        # vectors (which have no order) can specialise.
        hs = hs + self.param(
            "state_ids", nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("states", "embed")),
            (cfg.num_states, cfg.d_model))
      hs = hs.astype(dt)
      kv_s = dense((2, cfg.num_kv_heads, cfg.head_size),
                   ("embed", None, "kv_heads", "kv"), dtype=dt, use_bias=False,
                   name="kv_state")(hs)
      k_s, v_s = kv_s[:, :, 0], kv_s[:, :, 1]

    # ---- vertical direction: the tokens ----------------------------------
    k_win = jnp.concatenate([cache["k"].astype(dt), k_x], axis=1)
    v_win = jnp.concatenate([cache["v"].astype(dt), v_x], axis=1)
    q_self = q_x[:, :, 0]
    if window["sin"] is not None:
      w = cfg.block_width
      q_self = attention.apply_rotary(q_self, window["sin"][w:], window["cos"][w:])
      k_win = attention.apply_rotary(k_win, window["sin"], window["cos"])
    # The first W keys are the cache: hide them in rows without one.
    visible = jnp.concatenate(
        [jnp.broadcast_to(cache_visible[:, None], (x.shape[0], cfg.block_width)),
         jnp.ones((x.shape[0], cfg.block_width), bool)], axis=1)
    mask = window["mask"][None] & visible[:, None, :]  # (B, W, 2W)
    q_self, k_win = self._qk(q_self, k_win)
    outs = [attention.attend(q_self, k_win, v_win,
                             scale=self._attention_scale("scale_self"),
                             bias=window["bias"], mask=mask[:, None])]
    if reads_state:
      q_read, k_read = self._qk(q_x[:, :, 1], k_s)
      outs.append(attention.attend(q_read, k_read, v_s,
                                   scale=self._attention_scale("scale_read")))
    y = dense(cfg.d_model, (None, "heads", "kv", "embed"), axis=(-3, -2, -1),
              dtype=dt, name="out_tokens")(jnp.stack(outs, axis=2))
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = Mlp(cfg, name="mlp")(layer_norm("ln_mlp")(x).astype(dt), deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)

    new_cache = {"k": k_x, "v": v_x}
    if self.kind != "recurrent":
      return x, new_cache, None

    # ---- horizontal direction: the state ---------------------------------
    q_s = dense((2, cfg.num_heads, cfg.head_size),
                ("embed", None, "heads", "kv"), dtype=dt, use_bias=False,
                name="q_state")(hs)
    qs_self, ks_self = self._qk(q_s[:, :, 0], k_s)
    qs_tok, ks_tok = self._qk(q_s[:, :, 1], k_x)
    outs = [attention.attend(qs_self, ks_self, v_s,
                             scale=self._attention_scale("scale_state_self")),
            attention.attend(qs_tok, ks_tok, v_x,
                             scale=self._attention_scale("scale_state_tokens"))]
    z = dense(cfg.d_model, (None, "heads", "kv", "embed"), axis=(-3, -2, -1),
              dtype=dt, name="out_state")(jnp.stack(outs, axis=2))
    z = nn.Dropout(cfg.dropout_rate)(z, deterministic=deterministic)
    new_state = make_gate(cfg, "gate")(state, z)
    if cfg.gate_variant != "skip":
      m = Mlp(cfg, name="mlp_state")(
          layer_norm("ln_mlp_state")(new_state).astype(dt), deterministic)
      m = nn.Dropout(cfg.dropout_rate)(m, deterministic=deterministic)
      if cfg.gate_variant == "single":
        new_state = new_state + m.astype(jnp.float32)
      else:  # "dual"
        new_state = make_gate(cfg, "gate_mlp")(new_state, m)
    return x, new_cache, new_state
