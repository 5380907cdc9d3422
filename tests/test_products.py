"""The two product paths (ExecutionConfig.products) compute the same model:
stock JAX ("plain", the default) and the XLA:CPU-tuned products with their
own backward passes ("xla_cpu"), for every variant and both precisions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from conftest import VARIANTS, init_model, random_tokens, tiny_config

# Beyond the paper's variants: the other memories.
CONFIGS = {**VARIANTS,
           "rmt": dict(memory_tokens=2),
           "compressed_conv": dict(compressed_mem_factor=2),
           "xl_layernorm_dropout": dict(norm="layer", use_bias=True,
                                        dropout_rate=0.1,
                                        attention_dropout_rate=0.1)}
PLAIN = brt.ExecutionConfig(products="plain")
XLA_CPU = brt.ExecutionConfig(products="xla_cpu")


def _loss_and_grads(cfg, execution, params, tokens):
  """A loss over a segment of several blocks (each block's gradient flows
  into the one before through the carry) and its gradients."""
  model = brt.BlockRecurrentTransformer(cfg, execution)

  def loss(params):
    logits, _ = model.apply(
        {"params": params}, tokens, model.initial_carry(tokens.shape[0]),
        deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      params)
  return value, logits, grads


def _both_paths(cfg, seed=0):
  _, variables = init_model(cfg, seed=seed)
  tokens = random_tokens(seed, 2, 3 * cfg.block_width)
  return [_loss_and_grads(cfg, ex, variables["params"], tokens)
          for ex in (PLAIN, XLA_CPU)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_paths_give_the_same_values_and_gradients(name):
  cfg = tiny_config(**CONFIGS[name])
  (v1, l1, g1), (v2, l2, g2) = _both_paths(cfg)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)
  flat1, flat2 = (jax.tree_util.tree_leaves_with_path(g) for g in (g1, g2))
  for (path, a), (_, b) in zip(flat1, flat2):
    # Relative to the leaf's largest gradient: small entries are sums that
    # cancel, where the order of summation shows.
    np.testing.assert_allclose(a, b, rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(b).max()),
                               err_msg=jax.tree_util.keystr(path))
  assert max(float(jnp.abs(a).max()) for _, a in flat1) > 0


def _cosine(a, b):
  a, b = (np.concatenate([np.ravel(np.asarray(x, np.float64))
                          for x in jax.tree_util.tree_leaves(t)])
          for t in (a, b))
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["rec_lstm_dual", "feedback_fixed"])
def test_bfloat16_paths_agree_with_each_other_and_with_float32(name):
  """16-bit activations round differently on the two paths (the tuned one
  keeps every product's accumulation in float32, backward included), so
  both are held to the float32 model: logits within bf16 rounding, the
  gradient pointing the same way."""
  cfg = tiny_config(**CONFIGS[name])
  _, variables = init_model(cfg)
  tokens = random_tokens(0, 2, 3 * cfg.block_width)
  _, l32, g32 = _loss_and_grads(cfg, PLAIN, variables["params"], tokens)
  (_, l1, g1), (_, l2, g2) = _both_paths(dataclasses.replace(
      cfg, dtype="bfloat16"))
  for logits in (l1, l2):
    np.testing.assert_allclose(logits, l32, atol=0.1, rtol=0.05)
  for grads in (g1, g2):
    assert _cosine(grads, g32) > 0.99
  assert _cosine(g1, g2) > 0.99
