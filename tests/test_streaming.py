"""The central property: how a text is cut into calls does not change logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import VARIANTS, apply, init_model, random_tokens, tiny_config

ATOL = 1e-5


def run_in_pieces(model, variables, tokens, piece, carry=None, sos=None):
  """Feeds `tokens` in consecutive calls of `piece` tokens, passing the carry."""
  carry = model.initial_carry(tokens.shape[0]) if carry is None else carry
  outs = []
  for start in range(0, tokens.shape[1], piece):
    logits, carry = apply(model, variables, tokens[:, start:start + piece],
                          carry, sos if start == 0 else None)
    outs.append(logits)
  return jnp.concatenate(outs, axis=1), carry


def test_one_call_equals_blocks_and_segments(variant):
  cfg = tiny_config(**VARIANTS[variant])
  model, variables = init_model(cfg)
  tokens = random_tokens(1, 2, 4 * cfg.block_width)
  whole, carry_whole = run_in_pieces(model, variables, tokens, tokens.shape[1])
  for piece in (cfg.block_width, 2 * cfg.block_width):
    pieces, carry_pieces = run_in_pieces(model, variables, tokens, piece)
    np.testing.assert_allclose(pieces, whole, atol=ATOL, rtol=0)
    for a, b in zip(jax_leaves(carry_pieces), jax_leaves(carry_whole)):
      np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
  # The logits are not trivially equal: different tokens give other logits.
  other, _ = run_in_pieces(model, variables, (tokens + 1) % cfg.vocab_size,
                           tokens.shape[1])
  assert np.abs(np.asarray(other - whole)).max() > 1e-3


def jax_leaves(tree):
  import jax
  return [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("name", ["xl", "rec_lstm_dual", "feedback_fixed"])
def test_reset_row_equals_fresh_carry(name):
  cfg = tiny_config(**VARIANTS[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  first = random_tokens(2, 2, 3 * w)
  second = random_tokens(3, 2, 2 * w)
  _, carry = apply(model, variables, first, model.initial_carry(2))
  sos = jnp.array([True, False])
  reset_logits, reset_carry = apply(model, variables, second, carry, sos)
  kept_logits, _ = apply(model, variables, second, carry)
  fresh_logits, fresh_carry = apply(model, variables, second,
                                          model.initial_carry(2))
  # Row 0 restarts exactly as from a fresh carry; row 1 is untouched.
  np.testing.assert_array_equal(reset_logits[0], fresh_logits[0])
  np.testing.assert_array_equal(reset_logits[1], kept_logits[1])
  for a, b in zip(jax_leaves(reset_carry), jax_leaves(fresh_carry)):
    np.testing.assert_array_equal(a[0], b[0])
  # And the carry did matter for row 0 before the reset.
  assert np.abs(np.asarray(kept_logits[0] - fresh_logits[0])).max() > 1e-4


def test_slide_resets_cache_every_segment_xl_does_not():
  slide_cfg = tiny_config(cache_across_segments=False)
  xl_cfg = tiny_config()
  model, variables = init_model(xl_cfg)  # Same parameters for both.
  slide = type(model)(slide_cfg)
  w = xl_cfg.block_width
  first, second = random_tokens(4, 2, 2 * w), random_tokens(5, 2, 2 * w)
  xl_1, xl_carry = apply(model, variables, first, model.initial_carry(2))
  sl_1, sl_carry = apply(slide, variables, first, slide.initial_carry(2))
  np.testing.assert_array_equal(sl_1, xl_1)  # Within a segment: identical.
  sl_2, _ = apply(slide, variables, second, sl_carry)
  fresh_2, _ = apply(slide, variables, second, slide.initial_carry(2))
  np.testing.assert_array_equal(sl_2, fresh_2)  # The cache was dropped.
  xl_2, _ = apply(model, variables, second, xl_carry)
  assert np.abs(np.asarray(xl_2 - fresh_2)).max() > 1e-4  # XL kept it.


def test_slide_keeps_recurrent_state_across_segments():
  cfg = tiny_config(cache_across_segments=False, recurrent_layers=(1,))
  model, variables = init_model(cfg)
  w = cfg.block_width
  first, second = random_tokens(6, 2, 2 * w), random_tokens(7, 2, 2 * w)
  _, carry = apply(model, variables, first, model.initial_carry(2))
  carried, _ = apply(model, variables, second, carry)
  fresh, _ = apply(model, variables, second, model.initial_carry(2))
  assert np.abs(np.asarray(carried - fresh)).max() > 1e-4
