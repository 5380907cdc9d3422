"""Carry dropout: rate 0 changes nothing, rate 1 is a fresh carry every
segment, each part drops alone, and the draws are reproducible."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import brt
from brt import carry_dropout
from brt.trainer import TrainConfig, TrainState, make_train_step
from conftest import (apply, init_model, jax_leaves, random_tokens,
                      tiny_config)

REC = dict(recurrent_layers=(1,), compressed_mem_factor=2)


def carried(model, variables, seed=20):
  """A carry after two segments, so cache, state and memory hold something."""
  carry = model.initial_carry(2)
  for s in (seed, seed + 1):
    _, carry = apply(model, variables, random_tokens(s, 2, 3 * 4), carry)
  return carry


def run(model, variables, tokens, carry, **resets):
  return model.apply(variables, tokens, carry, **resets)


def test_model_resets_each_part_alone():
  cfg = tiny_config(**REC)
  model, variables = init_model(cfg)
  carry = carried(model, variables)
  tokens = random_tokens(3, 2, 3 * cfg.block_width)
  ones = jnp.ones((2,), bool)
  kept, _ = run(model, variables, tokens, carry)
  # Both parts: a fresh carry.
  both, both_carry = run(model, variables, tokens, carry, reset_cache=ones,
                         reset_state=ones)
  fresh, fresh_carry = run(model, variables, tokens, model.initial_carry(2))
  np.testing.assert_array_equal(both, fresh)
  for a, b in zip(jax_leaves(both_carry), jax_leaves(fresh_carry)):
    np.testing.assert_array_equal(a, b)
  # The cache alone: what "Slide" (cache dropped every segment) computes.
  slide = brt.BlockRecurrentTransformer(
      dataclasses.replace(cfg, cache_across_segments=False))
  cache_only, _ = run(model, variables, tokens, carry, reset_cache=ones)
  np.testing.assert_array_equal(cache_only, run(slide, variables, tokens,
                                                carry)[0])
  # The state alone: the carried cache with the learned initial state.
  initial = variables["params"]["blocks"]["initial_state_1"]
  with_initial = dict(carry, state=(jnp.broadcast_to(initial, carry["state"][0].shape),))
  state_only, _ = run(model, variables, tokens, carry, reset_state=ones)
  np.testing.assert_array_equal(state_only, run(model, variables, tokens,
                                                with_initial)[0])
  # Each of them changed something.
  for logits in (both, cache_only, state_only):
    assert np.abs(np.asarray(logits - kept)).max() > 1e-4
  assert np.abs(np.asarray(cache_only - state_only)).max() > 1e-4


def make_state(model, variables, carry, tx):
  params = variables["params"]
  return TrainState(step=jnp.asarray(3, jnp.int32), params=params,
                    opt_state=tx.init(params), carry=carry,
                    rng=jax.random.PRNGKey(7))


def test_train_step_at_rates_0_and_1():
  cfg = tiny_config(**REC)
  model, variables = init_model(cfg)
  carry = carried(model, variables)
  tx = optax.sgd(0.1)
  tokens = random_tokens(4, 2, 3 * cfg.block_width + 1)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_mask": jnp.ones(tokens[:, 1:].shape, jnp.float32),
           "start_of_sequence": jnp.zeros((2,), bool)}
  step = lambda **rates: jax.jit(make_train_step(model, tx, **rates))
  plain_state, plain = step()(make_state(model, variables, carry, tx), batch)
  zero_state, zero = step(cache_dropout=0.0, state_dropout=0.0)(
      make_state(model, variables, carry, tx), batch)
  for a, b in zip(jax_leaves(zero_state), jax_leaves(plain_state)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(zero["loss"], plain["loss"])
  # Rate 1: the step trains exactly as from a fresh carry.
  one_state, one = step(cache_dropout=1.0, state_dropout=1.0)(
      make_state(model, variables, carry, tx), batch)
  fresh_state, fresh = step()(
      make_state(model, variables, model.initial_carry(2), tx), batch)
  np.testing.assert_array_equal(one["loss"], fresh["loss"])
  for a, b in zip(jax_leaves(one_state), jax_leaves(fresh_state)):
    np.testing.assert_array_equal(a, b)
  assert abs(float(one["loss"]) - float(plain["loss"])) > 1e-4


def test_draws_are_reproducible_per_key_and_follow_the_rate():
  draw = lambda seed, step: carry_dropout.draw_resets(
      carry_dropout.rng_for_step(jax.random.fold_in(jax.random.PRNGKey(seed),
                                                    step)), 4000, 0.3, 0.6)
  a, b = draw(0, 5), draw(0, 5)
  for name in ("reset_cache", "reset_state"):
    np.testing.assert_array_equal(a[name], b[name])
    assert (np.asarray(a[name]) != np.asarray(draw(0, 6)[name])).any()
    assert (np.asarray(a[name]) != np.asarray(draw(1, 5)[name])).any()
  assert abs(float(a["reset_cache"].mean()) - 0.3) < 0.03
  assert abs(float(a["reset_state"].mean()) - 0.6) < 0.03
  # The two parts are drawn independently.
  assert (np.asarray(a["reset_cache"]) != np.asarray(a["reset_state"])).any()
  assert carry_dropout.draw_resets(jax.random.PRNGKey(0), 3, 0.0, 0.0) == {
      "reset_cache": None, "reset_state": None}


def test_rates_outside_0_1_are_rejected():
  with pytest.raises(ValueError, match="TrainConfig.state_dropout is a per-row"):
    TrainConfig(state_dropout=1.5)
