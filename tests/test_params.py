"""Parameters: counts and gate formulas checked by hand, real initialisers,
and gradients that reach the recurrent cell's own parameters."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import layers
from conftest import VARIANTS, random_tokens, tiny_config


def real_init(cfg, batch=2):
  model = brt.BlockRecurrentTransformer(cfg)
  tokens = random_tokens(0, batch, cfg.block_width)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens,
                                  model.initial_carry(batch))
  return model, nn.meta.unbox(variables)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("gate,variant", [("fixed", "skip"), ("lstm", "dual"),
                                          ("fixed", "single")])
@pytest.mark.parametrize("feedback", [False, True])
def test_parameter_count_by_hand(gate, variant, feedback):
  v, d, h, k, m, s, buckets = 29, 32, 4, 8, 48, 3, 32
  cfg = tiny_config(num_layers=3, recurrent_layers=(1,), gate=gate,
                    gate_variant=variant, feedback=feedback)
  shapes = jax.eval_shape(brt.BlockRecurrentTransformer(cfg).init,
                          jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                          brt.initial_carry(cfg, 1))
  ln = 2 * d
  mlp = d * m + m + m * d + d
  plain = ln + d * h * k + d * 2 * h * k + h * k * d + d + ln + mlp
  reads_state = ln + d * h * k + h * k * d + d * 2 * h * k  # 2nd query, kv_state
  gate_params = d if gate == "fixed" else d * 3 * d + 3 * d
  recurrent = (plain + reads_state + s * d      # + state IDs
               + d * 2 * h * k + 2 * h * k * d + d  # state queries, out_state
               + gate_params)
  if variant != "skip":
    recurrent += ln + mlp
  if variant == "dual":
    recurrent += gate_params
  other = plain + reads_state if feedback else plain
  expected = (v * d + d * v + v + ln      # embed, unembed, final norm
              + 3 * buckets * h           # relative-position tables
              + s * d                     # learned initial state
              + recurrent + 2 * other)
  assert count(shapes) == expected


def test_fixed_gate_formula():
  cfg = tiny_config()
  rng = np.random.RandomState(0)
  b, s, z = rng.randn(32), rng.randn(2, 3, 32), rng.randn(2, 3, 32)
  out = layers.FixedGate(cfg).apply({"params": {"bias": jnp.asarray(b)}},
                                    jnp.asarray(s), jnp.asarray(z))
  g = 1 / (1 + np.exp(-b))
  np.testing.assert_allclose(out, s * g + z * (1 - g), rtol=1e-5, atol=1e-6)


def test_lstm_gate_formula():
  cfg = tiny_config()
  rng = np.random.RandomState(1)
  w, bias = 0.2 * rng.randn(32, 3, 32), rng.randn(3, 32)
  s, h = rng.randn(2, 3, 32), rng.randn(2, 3, 32)
  out = layers.LstmGate(cfg).apply(
      {"params": {"proj": {"kernel": jnp.asarray(w), "bias": jnp.asarray(bias)}}},
      jnp.asarray(s), jnp.asarray(h))
  sig = lambda x: 1 / (1 + np.exp(-x))
  z = np.tanh(h @ w[:, 0] + bias[0])
  i = sig(h @ w[:, 1] + bias[1] - 1)
  f = sig(h @ w[:, 2] + bias[2] + 1)
  np.testing.assert_allclose(out, s * f + z * i, rtol=1e-4, atol=1e-5)


def test_initialisers_follow_the_config():
  cfg = tiny_config(recurrent_layers=(1,), num_states=64, d_model=64,
                    fixed_gate_bias_init=1.5, state_init_std=0.1)
  _, variables = real_init(cfg)
  params = variables["params"]
  initial = np.asarray(params["blocks"]["initial_state_1"])
  assert initial.shape == (64, 64)
  assert abs(initial.std() - 0.1) < 0.01 and abs(initial.mean()) < 0.01
  np.testing.assert_array_equal(params["blocks"]["layer_1"]["gate"]["bias"], 1.5)
  # meliad's gate: N(0, 0.1) per channel.
  _, variables = real_init(dataclasses.replace(
      cfg, d_model=256, fixed_gate_bias_init=0.0, fixed_gate_bias_std=0.1))
  bias = np.asarray(variables["params"]["blocks"]["layer_1"]["gate"]["bias"])
  assert bias.shape == (256,)
  assert abs(bias.std() - 0.1) < 0.015 and abs(bias.mean()) < 0.02


@pytest.mark.parametrize("name", ["rec_fixed_skip", "rec_lstm_dual",
                                  "feedback_fixed"])
def test_gradients_reach_the_recurrent_parameters(name):
  cfg = tiny_config(**VARIANTS[name])
  model, variables = real_init(cfg)
  tokens = random_tokens(3, 2, 3 * cfg.block_width)

  def loss_fn(params):
    logits, _ = model.apply({"params": params}, tokens,
                            model.initial_carry(2))
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

  grads = jax.jit(jax.grad(loss_fn))(variables["params"])
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(np.asarray(leaf)).all()
  blocks = grads["blocks"]
  cell = blocks["layer_1"]
  watched = {"initial state": blocks["initial_state_1"],
             "state IDs": cell["state_ids"], "gate": cell["gate"]}
  if cfg.gate_variant == "dual":
    watched["second gate"] = cell["gate_mlp"]
  for what, grad in watched.items():
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grad))
    assert norm > 0, f"no gradient reaches the {what}"
