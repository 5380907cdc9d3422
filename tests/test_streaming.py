"""The central property: how a text is cut into calls does not change logits."""

import numpy as np
import pytest

from conftest import (VARIANTS, apply, assert_pieces_equal_one_call,
                      assert_reset_row_is_fresh, init_model, random_tokens,
                      run_in_pieces, tiny_config)

ATOL = 1e-5


def test_one_call_equals_blocks_and_segments(variant):
  cfg = tiny_config(**VARIANTS[variant])
  model, variables = init_model(cfg)
  tokens = random_tokens(1, 2, 4 * cfg.block_width)
  whole, _ = assert_pieces_equal_one_call(
      model, variables, tokens, (cfg.block_width, 2 * cfg.block_width), ATOL)
  # The logits are not trivially equal: different tokens give other logits.
  other, _ = run_in_pieces(model, variables, (tokens + 1) % cfg.vocab_size,
                           tokens.shape[1])
  assert np.abs(np.asarray(other - whole)).max() > 1e-3


@pytest.mark.parametrize("name", ["xl", "rec_lstm_dual", "feedback_fixed"])
def test_reset_row_equals_fresh_carry(name):
  cfg = tiny_config(**VARIANTS[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  assert_reset_row_is_fresh(model, variables, random_tokens(2, 2, 3 * w),
                            random_tokens(3, 2, 2 * w))


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
