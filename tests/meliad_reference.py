"""The paper's model as its code (meliad, e8af054) computes it, written out in
numpy from the equations (float64), with meliad's parameter names: what the
converter's tests compare brt against where meliad itself cannot run (CI has
no copy of it; scripts/check_meliad_parity.py runs the real one).

    params = random_params(spec, rng)        # meliad's DecoderStack tree
    logits, cache = forward(spec, params, tokens, start_of_sequence, cache)

The window is processed as meliad's DecoderStack does with feedback (the
whole stack per window of W tokens), which for a stack without feedback
gives what its per-layer scan gives.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
  """The meliad settings the reference covers (names as meliad's gin)."""
  vocab: int = 29
  layers: int = 2
  embed: int = 32
  heads: int = 4
  head: int = 8
  mlp: int = 48
  window: int = 4
  states: int = 3
  recurrent: tuple = ()      # recurrent_layer_indices, non-negative
  gate: str = "bias"         # recurrent_gate_type
  single: bool = False       # recurrent_single_gate
  skip: bool = True          # recurrent_skip_ffn
  feedback: bool = False     # dstack_window_length = window, feedback on
  normalize_keys: bool = True
  xl: bool = True            # use_long_xl_architecture

  def gin(self, sequence_length: int, batch_size: int) -> str:
    """meliad gin bindings that build this model (with base_htrans.gin's
    layer pieces written out)."""
    return f"""
NUM_LAYERS = {self.layers}
decoder_stack.TransformerTaskConfig:
  sequence_length = {sequence_length}
  batch_size = {batch_size}
  vocab_size = {self.vocab}
transformer_layer.TransformerLayer:
  num_heads = {self.heads}
  head_size = {self.head}
  window_length = {self.window}
  use_long_xl_architecture = {self.xl}
  relative_position_type = "t5"
  use_causal_mask = True
  attn_dropout_rate = 0.05
  recurrent_num_states = {self.states}
  recurrent_gate_type = "{self.gate}"
  recurrent_single_gate = {self.single}
  recurrent_skip_ffn = {self.skip}
  dtype = "float32"
transformer_base.TransformerBase:
  attn_mlp_factory = @transformer_attn/nn_components.MLP
  ffn_factory = @transformer_ffn/nn_components.MLP
  normalize_keys = {self.normalize_keys}
  dropout_rate = 0.05
transformer_attn/nn_components.MLP:
  num_layers = 1
  num_hidden_units = 0
  hidden_activation = None
  use_bias = False
transformer_ffn/nn_components.MLP:
  num_layers = 2
  num_hidden_units = {self.mlp}
  hidden_activation = "relu"
  use_bias = False
decoder_stack.DecoderStack:
  num_layers = %NUM_LAYERS
  embedding_size = {self.embed}
  layer_factory = @transformer_layer.TransformerLayer
  dstack_window_length = {self.window if self.feedback else 0}
  feedback_recurrence = {self.feedback}
  final_dropout_rate = 0.05
  recurrent_layer_indices = {tuple(self.recurrent)!r}
nn_components.LayerNorm:
  use_scale = True
  use_bias = False
  use_mean = False
"""


def random_params(spec: Spec, rng: np.random.RandomState) -> dict:
  """A DecoderStack parameter tree with meliad's names and shapes, random
  values of a size that makes every part matter."""
  d, hk, m = spec.embed, spec.heads * spec.head, spec.mlp
  kernel = lambda i, o, s=1.0: rng.normal(0, s / math.sqrt(i), (i, o))
  scale = lambda n: 1 + 0.2 * rng.normal(size=n)
  att_scale = lambda: 2 + rng.uniform(0, 2, spec.heads)

  def kvq(q2, positions=0):
    p = {"pre_attn_layernorm": {"scale": scale(d)},
         "keys_layer": {"kernel": kernel(d, hk)},
         "values_layer": {"kernel": kernel(d, hk)},
         "queries_layer": {"kernel": kernel(d, hk)}}
    if q2:
      p["queries2_layer"] = {"kernel": kernel(d, hk)}
    if spec.normalize_keys:
      p["attention_scale"] = att_scale()
    if positions:
      p["position_embeddings"] = rng.normal(size=(positions, d))
    return p

  def mlp(fan_in, gate_in=None):
    p = {"hidden0": {"kernel": kernel(fan_in, m)},
         "output_layer": {"kernel": kernel(m, d)}}
    if gate_in is not None:
      p.update(gate(m))
    return p

  def gate(fan_in):
    if spec.gate == "bias":
      return {"gate_bias": rng.normal(size=d)}
    return {g: {"kernel": kernel(fan_in, d), "bias": rng.normal(0, 0.5, d)}
            for g in ("input_gate", "forget_gate")}

  tree = {"embed": {"embedding": rng.normal(size=(spec.vocab, d))},
          "final_layernorm": {"scale": scale(d)}}
  for i in range(spec.layers):
    rec = i in spec.recurrent
    cross = rec or (spec.feedback and bool(spec.recurrent))
    tbase = {"_kvq": kvq(cross),
             "post_attn_mlp": {"output_layer": {
                 "kernel": kernel((2 if cross else 1) * hk, d)}},
             "pre_ffn_layernorm": {"scale": scale(d)},
             "ffn": mlp(d)}
    if cross and spec.normalize_keys:
      tbase["attention_scale2"] = att_scale()
    layer = {"tbase": tbase, "relative_positions": {
        "rel_embedding": rng.normal(0, 0.5, (spec.heads, 32))}}
    if rec:
      r = {"_kvq": kvq(True, spec.states)}
      if spec.normalize_keys:
        r["attention_scale2"] = att_scale()
      if spec.single:
        r["ffn"] = mlp(2 * hk, gate_in=True)
      else:
        r["post_attn_mlp"] = {"output_layer": {"kernel": kernel(2 * hk, d)},
                              **gate(2 * hk)}
        if not spec.skip:
          r["pre_ffn_layernorm"] = {"scale": scale(d)}
          r["ffn"] = mlp(d, gate_in=True)
      layer["recurrent_tbase"] = r
      layer["recurrent_initial_state"] = rng.normal(0, 0.5, (spec.states, d))
    tree[f"transformer{i}"] = layer
  return tree


def initial_cache(spec: Spec, batch: int) -> dict:
  zeros = lambda *s: np.zeros(s)
  return {"k": [zeros(batch, spec.window, spec.heads, spec.head)
                for _ in range(spec.layers)],
          "v": [zeros(batch, spec.window, spec.heads, spec.head)
                for _ in range(spec.layers)],
          "state": {i: zeros(batch, spec.states, spec.embed)
                    for i in spec.recurrent}}


def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _attention(q, k, v, bias=None, scale=None, mask=None):
  """meliad's simple_attention: (q.k + bias) * scale, masked at -1e6, and a
  softmax with an extra null logit of -1000."""
  a = np.einsum("bqhd,bkhd->bhqk", q, k)
  if bias is not None:
    a = a + bias
  if scale is not None:
    a = a * scale[None, :, None, None]
  if mask is not None:
    a = np.where(mask, a, -1e6)
  top = np.maximum(a.max(-1, keepdims=True), -1000.0)
  e = np.exp(a - top)
  w = e / (e.sum(-1, keepdims=True) + np.exp(-1000.0 - top))
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def _buckets(w):
  """T5 causal buckets (32, max distance 128) of the (W, 2W) window."""
  n = np.maximum((np.arange(w)[:, None] + w) - np.arange(2 * w)[None, :], 0)
  large = 16 + (np.log(np.maximum(n, 1) / 16) / np.log(8) * 16).astype(int)
  return np.where(n < 16, n, np.minimum(large, 31))


def forward(spec: Spec, params: dict, tokens: np.ndarray, sos: np.ndarray,
            cache: dict) -> tuple[np.ndarray, dict]:
  """Logits (B, L, V) of one segment, and the cache for the next."""
  b, length = tokens.shape
  w, h, hk = spec.window, spec.heads, spec.heads * spec.head
  split = lambda x: x.reshape(x.shape[0], x.shape[1], h, spec.head)
  rel = np.arange(2 * w)[None, :] - (np.arange(w)[:, None] + w)
  mask = (rel < 0) & (rel >= -w)
  fresh = sos[:, None, None, None]
  keys = [np.where(fresh, 0.0, k) for k in cache["k"]]
  values = [np.where(fresh, 0.0, v) for v in cache["v"]]
  states = {i: np.where(sos[:, None, None],
                        params[f"transformer{i}"]["recurrent_initial_state"],
                        s) for i, s in cache["state"].items()}
  x_all = params["embed"]["embedding"][tokens]
  outs = []

  def kvq(p, x, queries2):
    hx = _rms(x, p["pre_attn_layernorm"]["scale"])
    if "position_embeddings" in p:
      hx = hx + p["position_embeddings"]
    k, v, q = (split(hx @ p[n]["kernel"]) for n in
               ("keys_layer", "values_layer", "queries_layer"))
    q2 = split(hx @ p["queries2_layer"]["kernel"]) if queries2 else None
    if spec.normalize_keys:
      norm = lambda t: t / np.sqrt(np.sum(t * t, -1, keepdims=True) + 1e-6)
      k, q = norm(k), norm(q)
      q2 = None if q2 is None else norm(q2)
    else:
      q = q / math.sqrt(spec.head)
      q2 = None if q2 is None else q2 / math.sqrt(spec.head)
    return k, v, q, q2

  def scale_of(p, name):
    return p.get(name) if spec.normalize_keys else None

  def gated(p, hidden, state, out):
    if spec.gate == "bias":
      g = _sigmoid(p["gate_bias"])
      return state * g + out * (1 - g)
    f = _sigmoid(hidden @ p["forget_gate"]["kernel"]
                 + p["forget_gate"]["bias"] + 1)
    i = _sigmoid(hidden @ p["input_gate"]["kernel"]
                 + p["input_gate"]["bias"] - 1)
    return state * f + out * i

  def cell(r, state, attended):
    if spec.single:
      hidden = np.maximum(attended @ r["ffn"]["hidden0"]["kernel"], 0)
      out = np.tanh(hidden @ r["ffn"]["output_layer"]["kernel"])
      return gated(r["ffn"], hidden, state, out)
    proj = r["post_attn_mlp"]
    new = gated(proj, attended, state, attended @ proj["output_layer"]["kernel"])
    if spec.skip:
      return new
    f = _rms(new, r["pre_ffn_layernorm"]["scale"])
    hidden = np.maximum(f @ r["ffn"]["hidden0"]["kernel"], 0)
    return gated(r["ffn"], hidden, new, hidden @ r["ffn"]["output_layer"]["kernel"])

  for start in range(0, length, w):
    x = x_all[:, start:start + w]
    feedback_kv = None
    if spec.feedback and spec.recurrent:
      last = spec.recurrent[-1]
      r = params[f"transformer{last}"]["recurrent_tbase"]["_kvq"]
      feedback_kv = kvq(r, states[last], True)[:2]
    for i in range(spec.layers):
      p = params[f"transformer{i}"]
      tb = p["tbase"]
      rec = i in spec.recurrent
      cross_kv = None if rec else feedback_kv
      k, v, q, q2 = kvq(tb["_kvq"], x, rec or cross_kv is not None)
      if spec.xl:
        kw, vw = (np.concatenate([keys[i], k], 1),
                  np.concatenate([values[i], v], 1))
        bias = p["relative_positions"]["rel_embedding"][:, _buckets(w)]
        m = mask
      else:  # No cache: the window alone, causal, not itself.
        kw, vw = k, v
        bias = p["relative_positions"]["rel_embedding"][:, _buckets(w)[:, w:]]
        m = mask[:, w:]
      if rec:
        r = p["recurrent_tbase"]
        rk, rv, rq, rq2 = kvq(r["_kvq"], states[i], True)
        attended = np.concatenate(
            [_attention(rq, rk, rv, scale=scale_of(r["_kvq"], "attention_scale")),
             _attention(rq2, kw, vw, scale=scale_of(r, "attention_scale2"))],
            axis=2).reshape(b, spec.states, 2 * hk)
        new_state = cell(r, states[i], attended)
        cross_kv = (rk, rv)
      ys = [_attention(q, kw, vw, bias[None],
                       scale_of(tb["_kvq"], "attention_scale"), m[None, None])]
      if cross_kv is not None:
        ys.append(_attention(q2, *cross_kv,
                             scale=scale_of(tb, "attention_scale2")))
      y = np.concatenate(ys, axis=2).reshape(b, w, -1)
      x = x + y @ tb["post_attn_mlp"]["output_layer"]["kernel"]
      f = _rms(x, tb["pre_ffn_layernorm"]["scale"])
      x = x + np.maximum(f @ tb["ffn"]["hidden0"]["kernel"], 0) @ (
          tb["ffn"]["output_layer"]["kernel"])
      keys[i], values[i] = k, v
      if rec:
        states[i] = new_state
    outs.append(x)
  y = _rms(np.concatenate(outs, 1), params["final_layernorm"]["scale"])
  logits = y @ params["embed"]["embedding"].T / math.sqrt(spec.vocab)
  return logits, {"k": keys, "v": values, "state": states}
