"""Compressed memories: streaming, causality and resets still hold, and a
token reaches past the cache through the compressed memory only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt import attention, compressed_memory
from brt.sampling import Sampler
from conftest import (assert_pieces_equal_one_call, assert_reset_row_is_fresh,
                      changed_positions, init_model, random_tokens,
                      teacher_forced_logits, tiny_config)

# W = 4: c = 2 gives 2 slots per block; 4 slots hold two compressed blocks.
CONFIGS = {
    "conv": dict(compressed_mem_factor=2, compressed_mem_slots=4,
                 recurrent_layers=(1,)),
    "mean_rotary_mqa": dict(compressed_mem_factor=4, compressed_mem_slots=3,
                            compression="mean", position="rotary",
                            multi_query=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_call_equals_blocks_and_segments(name):
  cfg = tiny_config(**CONFIGS[name])
  model, variables = init_model(cfg)
  tokens = random_tokens(1, 2, 6 * cfg.block_width)
  _, carry_whole = assert_pieces_equal_one_call(
      model, variables, tokens, (cfg.block_width, 3 * cfg.block_width))
  assert "compressed" in carry_whole
  # Three compressed blocks passed through a memory of fewer slots: it is full.
  assert np.asarray(carry_whole["compressed"]["valid"]).all()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_logit_before_a_changed_token_changes(name):
  cfg = tiny_config(**CONFIGS[name])
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(8, 2, 6 * w)
  for position in (1, w - 1, 2 * w, 3 * w + 2):
    changed = changed_positions(model, variables, tokens, position, piece=3 * w)
    assert not changed[:position].any(), f"logits before {position} changed"
    assert changed[position]


def test_reset_row_equals_fresh_carry():
  cfg = tiny_config(**CONFIGS["conv"])
  model, variables = init_model(cfg)
  w = cfg.block_width
  # The whole carry of row 0, compressed memory included, is a fresh one's.
  reset_carry, _ = assert_reset_row_is_fresh(
      model, variables, random_tokens(2, 2, 4 * w), random_tokens(3, 2, 3 * w))
  assert "compressed" in reset_carry


@pytest.mark.parametrize("window", ["sliding", "blocks"])
@pytest.mark.parametrize("compressed", [False, True])
def test_reach_extends_through_the_compressed_memory(compressed, window):
  overrides = dict(num_layers=1, window=window)
  if compressed:
    overrides.update(compressed_mem_factor=2, compressed_mem_slots=4)
  cfg = tiny_config(**overrides)
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(9, 1, 8 * w)
  changed = changed_positions(model, variables, tokens, 0, piece=2 * w)
  # Token 0 is seen by the W tokens after it ("sliding"), or by all of block 1
  # through the cache ("blocks"); compressed when block 0 leaves the cache, it
  # is read by blocks 2 and 3 (4 slots = two compressed blocks) and pushed
  # out before block 4.
  expected = np.zeros(8 * w, bool)
  expected[:(w + 1 if window == "sliding" else 2 * w)] = True
  if compressed:
    expected[2 * w:4 * w] = True
  np.testing.assert_array_equal(changed, expected)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decoder_logits_equal_the_forward_pass(name):
  cfg = tiny_config(**CONFIGS[name])
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables, prefill_blocks=2)
  w = cfg.block_width
  text = random_tokens(5, 2, 6 * w)
  for prompt_length in (1, 3 * w + 2):
    decoded, full = teacher_forced_logits(sampler, text, prompt_length)
    scale = float(jnp.abs(full).max())
    np.testing.assert_allclose(decoded, full, atol=2e-5 * scale, rtol=0)


def test_conv_starts_as_mean_pooling():
  cfg = tiny_config(compressed_mem_factor=2)
  kv = {n: jnp.asarray(np.random.RandomState(i).randn(2, 4, 4, 8), jnp.float32)
        for i, n in enumerate("kv")}
  conv = compressed_memory.Compressor(cfg)
  params = conv.init(jax.random.PRNGKey(0), kv)
  out = conv.apply(params, kv)
  mean = compressed_memory.mean_pool(kv, 2)
  for n in "kv":
    np.testing.assert_allclose(out[n], mean[n], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean[n], kv[n].reshape(2, 2, 2, 4, 8).mean(2),
                               rtol=1e-6)


def test_fifo_drops_the_oldest_and_zeroes_invisible_slots():
  memory = jnp.arange(1, 5, dtype=jnp.float32).reshape(1, 4)  # slots 1..4
  visible = jnp.array([[False, True, True, True]])
  block = jnp.array([[5.0, 6.0]])
  out = compressed_memory.push(memory, visible, block, jnp.array([True]))
  np.testing.assert_array_equal(out, [[3, 4, 5, 6]])
  out = compressed_memory.push(memory, visible, block, jnp.array([False]))
  np.testing.assert_array_equal(out, [[3, 4, 0, 0]])
  cfg = tiny_config(compressed_mem_factor=2, compressed_mem_slots=3)
  np.testing.assert_array_equal(compressed_memory.push_visible(
      jnp.array([[False, False, True]]), jnp.array([True]), cfg),
      [[True, True, True]])


def test_slot_positions_and_distances():
  # W = 4, c = 2, C = 3: slot j stands for tokens -(3 - j) * 2 .. +1.
  np.testing.assert_array_equal(attention.key_positions(4, 3, 2),
                                [-6, -4, -2, 0, 1, 2, 3, 4, 5, 6, 7])
  d = attention.window_distances(4, 3, 2)
  np.testing.assert_array_equal(d[0, :4], [10, 8, 6, 4])  # query at 4
  for window in ("sliding", "blocks"):
    assert attention.window_mask(4, 3, 2, window)[:, :3].all()


def test_bad_compression_configs_name_the_fix():
  with pytest.raises(ValueError, match="must divide block_width=4"):
    tiny_config(compressed_mem_factor=3)
  with pytest.raises(ValueError, match="compression='max' is not one of"):
    tiny_config(compressed_mem_factor=2, compression="max")
  with pytest.raises(ValueError, match="compressed_mem_slots must be a positive"):
    tiny_config(compressed_mem_factor=2, compressed_mem_slots=0)
