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


@pytest.mark.parametrize("gate,variant", [
    ("fixed", "skip"), ("lstm", "skip"), ("fixed", "dual"), ("lstm", "dual"),
    ("fixed", "single"), ("lstm", "single")])
@pytest.mark.parametrize("feedback", [False, True])
def test_parameter_count_by_hand(gate, variant, feedback):
  """meliad's layout: scale-only norms, no biases, a tied embedding, readers
  sharing the writer's state keys/values, and its cells and gates."""
  v, d, h, k, m, s, buckets = 29, 32, 4, 8, 48, 3, 32
  cfg = tiny_config(num_layers=3, recurrent_layers=(1,), gate=gate,
                    gate_variant=variant, feedback=feedback)
  shapes = jax.eval_shape(brt.BlockRecurrentTransformer(cfg).init,
                          jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                          brt.initial_carry(cfg, 1))
  norm, mlp, attended = d, d * m + m * d, 2 * h * k
  plain = (norm + d * h * k + d * 2 * h * k + h * k * d + h  # + its scale
           + norm + mlp)
  reads_state = d * h * k + h * k * d + h  # 2nd query, wider out, scale
  gate_params = lambda fan_in: d if gate == "fixed" else fan_in * 2 * d + 2 * d
  writer = (norm + d * 2 * h * k + s * d   # state norm, keys/values, IDs
            + d * 2 * h * k + 2 * h)       # state queries and their scales
  if variant == "single":
    writer += attended * m + m * d + gate_params(m)
  else:
    writer += attended * d + gate_params(attended)
  if variant == "dual":
    writer += norm + mlp + gate_params(m)
  other = plain + reads_state if feedback else plain
  expected = (v * d + norm                # tied embedding, final norm
              + 3 * buckets * h           # relative-position tables
              + s * d                     # learned initial state
              + plain + reads_state + writer + 2 * other)
  assert count(shapes) == expected


def test_fixed_gate_formula():
  cfg = tiny_config()
  rng = np.random.RandomState(0)
  b, s, z = rng.randn(32), rng.randn(2, 3, 32), rng.randn(2, 3, 32)
  out = layers.FixedGate(cfg).apply({"params": {"bias": jnp.asarray(b)}},
                                    jnp.asarray(s), None, jnp.asarray(z))
  g = 1 / (1 + np.exp(-b))
  np.testing.assert_allclose(out, s * g + z * (1 - g), rtol=1e-5, atol=1e-6)


def test_lstm_gate_formula():
  """meliad's LSTM gate: the update z is the cell's output as it is; the
  input and forget gates are products of the hidden input h."""
  cfg = tiny_config()
  rng = np.random.RandomState(1)
  w, bias = 0.2 * rng.randn(48, 2, 32), rng.randn(2, 32)
  s, h, z = rng.randn(2, 3, 32), rng.randn(2, 3, 48), rng.randn(2, 3, 32)
  out = layers.LstmGate(cfg).apply(
      {"params": {"proj": {"kernel": jnp.asarray(w), "bias": jnp.asarray(bias)}}},
      jnp.asarray(s), jnp.asarray(h), jnp.asarray(z))
  sig = lambda x: 1 / (1 + np.exp(-x))
  i = sig(h @ w[:, 0] + bias[0] - 1)
  f = sig(h @ w[:, 1] + bias[1] + 1)
  np.testing.assert_allclose(out, s * f + z * i, rtol=1e-4, atol=1e-5)


def test_fixed_gate_keeps_half_the_state_at_initialisation():
  """meliad's fixed gate starts at sigmoid(N(0, 0.1)): about half of the old
  state is kept, per channel; brt's old start, 2, kept 0.88."""
  cfg = tiny_config(recurrent_layers=(1,), d_model=256, num_heads=4)
  _, variables = real_init(cfg)
  g = 1 / (1 + np.exp(-np.asarray(
      variables["params"]["blocks"]["layer_1"]["gate"]["bias"])))
  assert g.shape == (256,)
  assert abs(g.mean() - 0.5) < 0.01 and 0.01 < g.std() < 0.04
  _, variables = real_init(dataclasses.replace(
      cfg, fixed_gate_bias_init=2.0, fixed_gate_bias_std=0.0))
  np.testing.assert_array_equal(
      variables["params"]["blocks"]["layer_1"]["gate"]["bias"], 2.0)


def test_initialisers_follow_meliad():
  cfg = tiny_config(recurrent_layers=(1,), num_states=64, d_model=64,
                    gate="lstm", gate_variant="dual")
  _, variables = real_init(cfg)
  params = variables["params"]
  initial = np.asarray(params["blocks"]["initial_state_1"])
  assert initial.shape == (64, 64)
  assert abs(initial.std() - 0.1) < 0.01 and abs(initial.mean()) < 0.01
  cell = params["blocks"]["layer_1"]
  # LSTM gates: kernels at variance 0.1 / fan-in, biases N(0, 0.1).
  for name, fan_in in (("gate", 2 * 64), ("gate_mlp", cfg.mlp_size)):
    kernel = np.asarray(cell[name]["proj"]["kernel"])
    assert abs(kernel.std() / np.sqrt(0.1 / fan_in) - 1) < 0.05, name
    assert abs(np.asarray(cell[name]["proj"]["bias"]).std() - 0.1) < 0.02
  # Other kernels at variance 1 / fan-in; scales of normalised keys from 1.
  kernel = np.asarray(cell["out_tokens"]["kernel"])
  assert abs(kernel.std() * np.sqrt(2 * 64) - 1) < 0.05
  np.testing.assert_array_equal(cell["scale_self"], 1.0)
  # meliad's T5 table: N(0, 1 / buckets); the embedding N(0, 1).
  table = np.asarray(params["relpos_0"]["table"])
  assert abs(table.std() * np.sqrt(32) - 1) < 0.2
  assert abs(np.asarray(params["embed"]["embedding"]).std() - 1) < 0.05


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
