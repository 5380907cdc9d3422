"""No token sees the future; without recurrence, nothing is seen too far back."""

import numpy as np
import pytest

from conftest import (VARIANTS, changed_positions, init_model, random_tokens,
                      tiny_config)


@pytest.mark.parametrize("name", ["xl", "rec_lstm_dual", "feedback_fixed",
                                  "two_rec_rotary_mqa_plain_keys"])
def test_no_logit_before_a_changed_token_changes(name):
  cfg = tiny_config(**VARIANTS[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(8, 2, 6 * w)
  # Mid-block, first and last token of a block, and in the second segment.
  for position in (1, w, 2 * w - 1, 3 * w + 2):
    changed = changed_positions(model, variables, tokens, position, piece=3 * w)
    assert not changed[:position].any(), f"logits before {position} changed"
    assert changed[position], f"token {position} does not affect its own logit"


@pytest.mark.parametrize("num_layers", [1, 2])
def test_sliding_reach_is_exactly_the_window_per_layer(num_layers):
  """meliad's window: each token attends to exactly the W tokens before it,
  so with one layer the logit at t depends on tokens t - W .. t and on no
  other; each further layer reaches W further back."""
  cfg = tiny_config(num_layers=num_layers)
  assert cfg.window == "sliding"
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(9, 1, 8 * w)
  for position in (0, 1, w - 1, 3 * w + 2):
    changed = changed_positions(model, variables, tokens, position, piece=2 * w)
    expected = np.zeros(8 * w, bool)
    expected[position:position + num_layers * w + 1] = True
    np.testing.assert_array_equal(changed, expected, err_msg=f"t={position}")


@pytest.mark.parametrize("num_layers", [1, 2])
def test_block_window_reach_is_bounded_by_the_blocks(num_layers):
  cfg = tiny_config(num_layers=num_layers, window="blocks")
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(9, 1, 8 * w)
  changed = changed_positions(model, variables, tokens, 0)
  # Each layer reaches back one more block: token 0 (no cache before it) is
  # seen by the first (num_layers + 1) * W positions -- for one layer that is
  # 2W - 1 tokens back -- and by nothing after them.
  reach = (num_layers + 1) * w
  assert changed[:reach].all()
  assert not changed[reach:].any()


def test_reach_with_recurrence_goes_through_the_state():
  cfg = tiny_config(num_layers=1, recurrent_layers=(0,))
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(10, 1, 8 * w)
  changed = changed_positions(model, variables, tokens, 0, piece=2 * w)
  assert changed[2 * w:].all(), "the state should carry token 0 to the end"
