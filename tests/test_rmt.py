"""RMT memory tokens: streaming, resets, causality and the BPTT depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import memory_tokens
from brt.sampling import Sampler
from conftest import (assert_pieces_equal_one_call,
                      assert_reset_row_is_fresh, init_model, random_tokens,
                      run_in_pieces, tiny_config)

RMT = {
    "rmt": dict(memory_tokens=2),
    "rmt_xl_rotary": dict(memory_tokens=2, memory_xl_cache=True,
                          position="rotary"),
}


@pytest.mark.parametrize("name", sorted(RMT))
def test_memory_passed_in_the_carry_equals_one_scan(name):
  cfg = tiny_config(**RMT[name])
  model, variables = init_model(cfg)
  tokens = random_tokens(11, 2, 4 * cfg.block_width)
  whole, _ = assert_pieces_equal_one_call(
      model, variables, tokens, (cfg.block_width, 2 * cfg.block_width))
  # The memory is really carried: a fresh memory gives other logits for the
  # second half.
  w2 = 2 * cfg.block_width
  fresh, _ = run_in_pieces(model, variables, tokens[:, w2:], w2)
  assert np.abs(np.asarray(fresh - whole[:, w2:])).max() > 1e-3


@pytest.mark.parametrize("name", sorted(RMT))
def test_start_of_sequence_resets_the_memory(name):
  cfg = tiny_config(**RMT[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  reset_carry, _ = assert_reset_row_is_fresh(
      model, variables, random_tokens(12, 2, 3 * w), random_tokens(13, 2, 2 * w))
  assert "memory" in reset_carry


def changed_positions(model, variables, tokens, position, piece):
  edited = tokens.at[:, position].set((tokens[:, position] + 7) % 29)
  a, carry_a = run_in_pieces(model, variables, tokens, piece)
  b, carry_b = run_in_pieces(model, variables, edited, piece)
  return np.abs(np.asarray(a - b)).max(axis=(0, 2)) > 0, carry_a, carry_b


@pytest.mark.parametrize("name", sorted(RMT))
def test_no_token_sees_a_later_one_even_through_the_write_memory(name):
  cfg = tiny_config(**RMT[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(14, 2, 6 * w)
  for position in (1, w, 2 * w - 1, 3 * w + 2):
    changed, _, _ = changed_positions(model, variables, tokens, position,
                                      piece=3 * w)
    assert not changed[:position].any(), f"logits before {position} changed"
    assert changed[position]


def test_the_write_memory_reaches_only_later_blocks():
  # One layer, no XL cache: a block's tokens see only the block and the read
  # memory, so the last token of block 0 can reach block 1 only through the
  # write memory -- and must not reach any other token of block 0.
  cfg = tiny_config(num_layers=1, **RMT["rmt"])
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(15, 1, 4 * w)
  changed, carry_a, carry_b = changed_positions(model, variables, tokens,
                                                w - 1, piece=w)
  assert not changed[:w - 1].any()
  assert changed[w:].all(), "the memory should carry the token onwards"
  # Without memory tokens the same model sees nothing of block 0 from block 2.
  xl = tiny_config(num_layers=1)
  model_xl, variables_xl = init_model(xl)
  changed_xl, _, _ = changed_positions(model_xl, variables_xl, tokens, w - 1,
                                       piece=w)
  assert not changed_xl[2 * w:].any()


def block_grads(cfg, num_blocks=4):
  """d(logits of block j) / d(initial memory), for each block j."""
  model, variables = init_model(cfg, batch=1)
  w = cfg.block_width
  tokens = random_tokens(16, 1, num_blocks * w)

  @jax.jit
  def grad(initial, weights):
    def loss(initial):
      params = jax.tree_util.tree_map(lambda x: x, variables["params"])
      params["blocks"]["memory"]["initial_memory"] = initial
      logits, _ = model.apply({"params": params}, tokens,
                              model.initial_carry(1))
      return jnp.sum(logits[0, :, 0] * weights)
    return jax.grad(loss)(initial)

  initial = variables["params"]["blocks"]["memory"]["initial_memory"]
  return [np.abs(np.asarray(grad(initial, jnp.repeat(
      jnp.arange(num_blocks) == j, w).astype(jnp.float32)))).max()
          for j in range(num_blocks)]


def test_gradient_reaches_the_memory_through_k_blocks_and_not_beyond():
  grads = block_grads(tiny_config(memory_tokens=2, memory_bptt_blocks=2))
  assert grads[0] > 0 and grads[1] > 0  # Read directly, then via one hop.
  assert grads[2] == 0 and grads[3] == 0  # Cut where block 2 reads it.
  # Unlimited depth: the last block's loss reaches the initial memory.
  unlimited = block_grads(tiny_config(memory_tokens=2))
  assert all(g > 0 for g in unlimited)


def test_detach_schedule():
  cfg = tiny_config(memory_tokens=2, memory_bptt_blocks=3)
  np.testing.assert_array_equal(memory_tokens.detach_schedule(cfg, 7),
                                [1, 0, 0, 1, 0, 0, 1])
  assert not memory_tokens.detach_schedule(tiny_config(memory_tokens=2),
                                           5).any()


@pytest.mark.parametrize("overrides,match", [
    (dict(memory_tokens=-1), "memory_tokens must be a non-negative"),
    (dict(memory_tokens=2, memory_bptt_blocks=0), "memory_bptt_blocks must"),
    (dict(memory_xl_cache=True), "set memory_tokens > 0"),
    (dict(memory_tokens=2, recurrent_layers=(1,)), "cannot be combined"),
])
def test_bad_memory_configs_are_explained(overrides, match):
  with pytest.raises(ValueError, match=match):
    tiny_config(**overrides)


def test_sampler_names_the_limitation():
  cfg = tiny_config(memory_tokens=2)
  model = brt.BlockRecurrentTransformer(cfg)
  with pytest.raises(NotImplementedError, match="RMT memory tokens"):
    Sampler(model, {})
