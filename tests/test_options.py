"""Model options: dropout, remat, bfloat16, biases, tied embeddings, and the
attention and position arithmetic against plain reference computations."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import attention, layers
from conftest import apply, init_model, jax_leaves, random_tokens, tiny_config


def test_t5_buckets_known_values():
  d = np.array([0, 1, 15, 16, 31, 32, 63, 64, 127, 128, 1000])
  # Exact below 16; then 16 + floor(16 * log(d / 16) / log(8)), capped at 31.
  expected = [0, 1, 15, 16, 21, 21, 26, 26, 31, 31, 31]
  np.testing.assert_array_equal(
      attention.relative_position_buckets(d, 32, 128), expected)


def test_block_window_mask_sees_previous_block_and_causal_prefix():
  mask = attention.window_mask(4, window="blocks")
  # Query i sees W + i + 1 keys: the whole previous block and itself.
  np.testing.assert_array_equal(mask.sum(axis=1), [5, 6, 7, 8])
  assert mask[0, :5].all() and not mask[0, 5:].any()


def test_sliding_window_mask_sees_exactly_the_w_keys_before():
  mask = attention.window_mask(4)
  # Query i sits at position 4 + i and sees keys i .. 3 + i: not itself.
  expected = np.zeros((4, 8), bool)
  for i in range(4):
    expected[i, i:i + 4] = True
  np.testing.assert_array_equal(mask, expected)


def test_rotary_logits_depend_only_on_relative_position():
  rng = np.random.RandomState(0)
  q, k = rng.randn(1, 1, 1, 8), rng.randn(1, 1, 1, 8)

  def logit(pq, pk):
    sin, cos = attention.rotary_tables(np.array([pq, pk]), 8, 10_000.0)
    rq = attention.apply_rotary(jnp.asarray(q), sin[:1], cos[:1])
    rk = attention.apply_rotary(jnp.asarray(k), sin[1:], cos[1:])
    return float(jnp.sum(rq * rk))

  assert logit(7, 3) == pytest.approx(logit(107, 103), rel=1e-4)
  assert logit(7, 3) != pytest.approx(logit(7, 5), rel=1e-3)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("per_head_scale", [False, True])
def test_attend_matches_naive_softmax_attention(kv_heads, per_head_scale):
  rng = np.random.RandomState(1)
  b, nq, nk, h, d = 2, 3, 5, 4, 8
  q, k, v = rng.randn(b, nq, h, d), rng.randn(b, nk, kv_heads, d), rng.randn(b, nk, kv_heads, d)
  bias = rng.randn(h, nq, nk)
  mask = rng.rand(b, 1, nq, nk) > 0.3
  mask[..., 0] = True
  scale = np.array([0.5, 0.2, 1.0, 0.7]) if per_head_scale else np.full(h, 0.5)
  out = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                         scale=jnp.asarray(scale) if per_head_scale else 0.5,
                         bias=jnp.asarray(bias), mask=jnp.asarray(mask))
  expected = np.zeros((b, nq, h, d))
  for bi in range(b):
    for hi in range(h):
      g = hi * kv_heads // h
      logits = q[bi, :, hi] @ k[bi, :, g].T * scale[hi] + bias[hi]
      logits = np.where(mask[bi, 0], logits, -np.inf)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      expected[bi, :, hi] = w @ v[bi, :, g]
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_dropout_is_off_by_default_and_reproducible_when_on():
  cfg = tiny_config(recurrent_layers=(1,), dropout_rate=0.3)
  model, variables = init_model(cfg)
  tokens = random_tokens(0, 2, 8)
  carry = model.initial_carry(2)
  base, _ = model.apply(variables, tokens, carry)
  again, _ = model.apply(variables, tokens, carry, deterministic=True)
  np.testing.assert_array_equal(base, again)
  run = lambda seed: model.apply(variables, tokens, carry, deterministic=False,
                                 rngs={"dropout": jax.random.PRNGKey(seed)})[0]
  np.testing.assert_array_equal(run(1), run(1))
  assert np.abs(np.asarray(run(1) - run(2))).max() > 1e-3
  assert np.abs(np.asarray(run(1) - base)).max() > 1e-3


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_changes_nothing_but_memory(remat):
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm")
  model, variables = init_model(cfg)
  rematted = brt.BlockRecurrentTransformer(cfg,
                                           brt.ExecutionConfig(remat=remat))
  tokens = random_tokens(1, 2, 12)

  def loss(m, params):
    logits, _ = m.apply({"params": params}, tokens, m.initial_carry(2))
    return jnp.mean(logits ** 2)

  grad = lambda m: jax.value_and_grad(lambda p: loss(m, p))
  l1, g1 = jax.jit(grad(model))(variables["params"])
  l2, g2 = jax.jit(grad(rematted))(variables["params"])
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The block step is rematerialised (jax's remat primitive), with the policy.
  jaxpr = str(jax.make_jaxpr(grad(rematted))(variables["params"]))
  assert "remat2[" in jaxpr
  assert "remat2[" not in str(jax.make_jaxpr(grad(model))(
      variables["params"]))
  assert ("policy=None" in jaxpr) == (remat == "full")


def test_bfloat16_activations_keep_float32_parameters():
  cfg32 = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg32)
  cfg16 = tiny_config(recurrent_layers=(1,), dtype="bfloat16")
  model16 = brt.BlockRecurrentTransformer(cfg16)
  tokens = random_tokens(2, 2, 8)
  # The same float32 parameters serve both; only activations differ.
  shapes = jax.eval_shape(model16.init, jax.random.PRNGKey(0), tokens,
                          model16.initial_carry(2))
  assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {np.dtype("float32")}
  l32, _ = apply(model, variables, tokens, model.initial_carry(2))
  l16, carry16 = apply(model16, variables, tokens, model16.initial_carry(2))
  assert l16.dtype == jnp.float32
  assert carry16["cache"][0]["k"].dtype == jnp.bfloat16
  assert carry16["state"][0].dtype == jnp.float32  # The state accumulates.
  p32, p16 = jax.nn.softmax(l32), jax.nn.softmax(l16)
  assert float(jnp.abs(p32 - p16).max()) < 0.1


def test_bfloat16_model_keeps_the_position_bias_in_float32():
  """The relative-position bias is a constant of the block scan: its gradient
  is summed over the blocks in the bias's dtype, so it must stay float32."""
  model, variables = init_model(tiny_config(dtype="bfloat16"))
  window = model.apply(variables, method=lambda m: m._window())  # pylint: disable=protected-access
  assert window["bias"].dtype == jnp.float32


@pytest.mark.parametrize("products", ["plain", "xla_cpu"])
def test_bfloat16_gradients_track_float32_gradients(products):
  """The mixed-precision backward (bf16 products; brt/xla_cpu.py accumulates
  them in float32) gives float32 gradients pointing where the float32
  model's do, for every parameter."""
  cfg32 = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg32)
  model16 = brt.BlockRecurrentTransformer(
      tiny_config(recurrent_layers=(1,), dtype="bfloat16"),
      brt.ExecutionConfig(products=products))
  tokens = random_tokens(4, 2, 17)

  def grads(m):
    def loss(params):
      logits, _ = m.apply({"params": params}, tokens[:, :-1],
                          m.initial_carry(2))
      return -jnp.mean(jnp.take_along_axis(
          jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))
    return jax.jit(jax.grad(loss))(variables["params"])

  flat32 = jax.tree_util.tree_leaves_with_path(grads(model))
  flat16 = jax.tree_util.tree_leaves(grads(model16))
  for (path, g32), g16 in zip(flat32, flat16):
    assert g16.dtype == jnp.float32
    a, b = np.ravel(g32), np.ravel(g16)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
    assert cosine > 0.98, (jax.tree_util.keystr(path), cosine)


def test_bias_free_model_is_the_biased_model_with_zero_biases():
  """use_bias=False drops exactly the biases of the products and layer norms
  (the gates keep theirs), and computes what the biased model computes when
  those biases are zero."""
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm", gate_variant="dual",
                    use_bias=True, norm="layer", tie_embeddings=False)
  model, variables = init_model(cfg)
  free = brt.BlockRecurrentTransformer(dataclasses.replace(cfg, use_bias=False))
  _, free_shapes = init_model(free.config)
  biased = flax.traverse_util.flatten_dict(variables["params"])
  kept = flax.traverse_util.flatten_dict(free_shapes["params"])
  dropped = sorted("/".join(k) for k in biased.keys() - kept.keys())
  assert dropped and all(k.endswith("/bias") and "gate" not in k
                         for k in dropped), dropped
  assert any("gate" in "/".join(k) and k[-1] == "bias" for k in kept)
  zeroed = {k: jnp.zeros_like(v) if k not in kept else v
            for k, v in biased.items()}
  tokens = random_tokens(5, 2, 12)
  want, want_carry = apply(
      model, {"params": flax.traverse_util.unflatten_dict(zeroed)}, tokens,
      model.initial_carry(2))
  got, got_carry = apply(
      free, {"params": flax.traverse_util.unflatten_dict(
          {k: biased[k] for k in kept})}, tokens, free.initial_carry(2))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  for a, b in zip(jax_leaves(got_carry), jax_leaves(want_carry)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mlp_recomputes_its_activation_instead_of_storing_it(dtype):
  """With the XLA:CPU products, the backward pass keeps two hidden-sized
  arrays of the MLP (the activation's input, and its output for wo's weight
  gradient), not the intermediates of GELU's formula; the gradients are
  those of the plain formula."""
  cfg = tiny_config(dtype=dtype, mlp_activation="gelu", use_bias=True)
  mlp = layers.Mlp(cfg, products="xla_cpu")
  x = jnp.asarray(np.random.RandomState(6).randn(3, cfg.d_model), jnp.float32)
  params = nn.meta.unbox(mlp.init(jax.random.PRNGKey(0), x))
  _, vjp = jax.vjp(lambda p, x: mlp.apply(p, x)[1], params, x)
  hidden = [r for r in jax.tree_util.tree_leaves(vjp)
            if r.shape == (3, cfg.mlp_size)]
  assert len(hidden) == 2, [r.shape for r in jax.tree_util.tree_leaves(vjp)]
  if dtype == "float32":
    def plain(p, x):
      p = p["params"]
      h = jax.nn.gelu(x @ p["wi"]["kernel"] + p["wi"]["bias"])
      return h @ p["wo"]["kernel"] + p["wo"]["bias"]
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
    got = jax.grad(loss(lambda p, x: mlp.apply(p, x)[1]), (0, 1))(params, x)
    want = jax.grad(loss(plain), (0, 1))(params, x)
    for a, b in zip(jax_leaves(got), jax_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tied_embeddings_are_the_table_over_sqrt_vocab():
  """meliad's output layer: the embedding's transpose, logits / sqrt(V); the
  same as an output layer holding exactly that."""
  cfg = tiny_config(tie_embeddings=True)
  model, variables = init_model(cfg)
  assert "unembed" not in variables["params"]
  untied = brt.BlockRecurrentTransformer(
      dataclasses.replace(cfg, tie_embeddings=False))
  table = variables["params"]["embed"]["embedding"]
  params = dict(variables["params"],
                unembed={"kernel": table.T / np.sqrt(cfg.vocab_size)})
  tokens = random_tokens(3, 2, 8)
  logits, _ = apply(model, variables, tokens, model.initial_carry(2))
  want, _ = apply(untied, {"params": params}, tokens, untied.initial_carry(2))
  assert logits.shape == (2, 8, cfg.vocab_size)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def _state_update(cfg, variables, state, block, prev=None, prev_visible=None):
  """The recurrent layer 1's state after reading `block` (and `prev`)."""
  layer = layers.TransformerLayer(cfg, "recurrent")
  params = {"params": variables["params"]["blocks"]["layer_1"]}

  def update(module):
    return module.update_state(state, module.read_state(state), block,
                               prev, prev_visible)

  return layer.apply(params, method=update)


def test_state_reads_previous_block_as_more_keys_and_only_where_visible():
  on = tiny_config(recurrent_layers=(1,), state_reads_previous_block=True)
  off = dataclasses.replace(on, state_reads_previous_block=False)
  _, variables = init_model(on)  # The option adds no parameters.
  rng = np.random.RandomState(0)
  shape = (2, on.block_width, on.num_kv_heads, on.head_size)
  block = {n: jnp.asarray(rng.normal(size=shape), jnp.float32) for n in "kv"}
  prev = {n: jnp.asarray(rng.normal(size=shape), jnp.float32) for n in "kv"}
  state = jnp.asarray(rng.normal(size=(2, on.num_states, on.d_model)),
                      jnp.float32)
  alone = _state_update(off, variables, state, block)
  # A block before a document's first is hidden: the block alone.
  visible = lambda rows: jnp.repeat(jnp.array(rows)[:, None], on.block_width, 1)
  hidden = _state_update(on, variables, state, block, prev,
                         visible([False, False]))
  np.testing.assert_allclose(hidden, alone, atol=1e-6, rtol=0)
  # Keys the state reads twice weigh as once: prev = the block itself gives
  # the block alone, so the 2W keys are joined along the right axis.
  doubled = _state_update(on, variables, state, block, block,
                          visible([True, True]))
  np.testing.assert_allclose(doubled, alone, atol=1e-5, rtol=0)
  # A visible previous block moves the state, in the rows that see it only.
  mixed = _state_update(on, variables, state, block, prev,
                        visible([True, False]))
  assert np.abs(np.asarray(mixed[0] - alone[0])).max() > 1e-3
  np.testing.assert_allclose(mixed[1], alone[1], atol=1e-6, rtol=0)

