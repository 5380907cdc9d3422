"""A segment computed layer by layer equals the same segment computed block
by block (ModelConfig.layer_major), values and gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from conftest import VARIANTS, init_model, random_tokens, tiny_config

# Variants that can run layer by layer (no feedback): each gate and gate
# variant once, two recurrent layers, and Slide.
LAYER_MAJOR_VARIANTS = {
    **{name: VARIANTS[name] for name in (
        "xl", "rec_fixed_skip", "rec_fixed_single", "rec_lstm_dual",
        "rec_fixed_skip_reads_block_only", "rec_lstm_single_masked_start",
        "rec_fixed_dual_classic", "two_rec_rotary_mqa_plain_keys")},
    "slide_rec": dict(recurrent_layers=(1,), cache_across_segments=False),
}


def _two_segments(cfg, variables, tokens, resets):
  """Loss, logits and carries of two segments, the second with row resets
  (start of a document in row 1; carry dropout's resets in row 0), and the
  gradient of the loss."""
  model = brt.BlockRecurrentTransformer(cfg)

  def run(variables):
    carry = model.initial_carry(tokens[0].shape[0])
    outputs, loss = [], 0.0
    for segment, kw in zip(tokens, resets):
      logits, carry = model.apply(variables, segment, carry, **kw)
      # A fixed random projection: every logit moves the loss.
      loss = loss + jnp.sum(logits * jnp.sin(jnp.arange(logits.size)
                                              ).reshape(logits.shape))
      outputs.append((logits, carry))
    return loss, outputs

  return jax.jit(jax.value_and_grad(run, has_aux=True))(variables)


@pytest.mark.parametrize("name", sorted(LAYER_MAJOR_VARIANTS))
def test_layer_major_equals_block_major(name):
  cfg = tiny_config(num_layers=3, layer_major=True,
                    **LAYER_MAJOR_VARIANTS[name])
  _, variables = init_model(cfg)
  w = cfg.block_width
  tokens = [random_tokens(1, 2, 3 * w), random_tokens(2, 2, 3 * w)]
  resets = [dict(), dict(start_of_sequence=jnp.array([False, True]),
                        reset_cache=jnp.array([True, False]),
                        reset_state=jnp.array([True, False]))]
  (loss_l, out_l), grad_l = _two_segments(cfg, variables, tokens, resets)
  block_cfg = dataclasses.replace(cfg, layer_major=False)
  (loss_b, out_b), grad_b = _two_segments(block_cfg, variables, tokens, resets)
  np.testing.assert_allclose(loss_l, loss_b, rtol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves((out_l, grad_l)),
                       jax.tree_util.tree_leaves((out_b, grad_b))):
    want = np.asarray(want, np.float32)
    # Float32 sums in another order (a weight's gradient: one product over
    # the segment, or a sum of one per block): error relative to the leaf.
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-4,
                               atol=2e-5 * max(1.0, np.abs(want).max()))
  # Not trivially equal: the recurrent layers' parameters do get gradients.
  if cfg.recurrent_layers:
    state_grads = grad_l["params"]["blocks"][f"layer_{cfg.recurrent_layers[0]}"]
    assert np.abs(np.asarray(state_grads["q_state"]["kernel"])).max() > 1e-4


@pytest.mark.parametrize("overrides, reason", [
    (dict(recurrent_layers=(1,), feedback=True), "feedback"),
    (dict(memory_tokens=2), "memory tokens"),
    (dict(compressed_mem_factor=2), "compressed memory"),
    (dict(remat=True), "remat"),
])
def test_layer_major_is_refused_where_blocks_depend_on_more(overrides, reason):
  with pytest.raises(ValueError, match=reason):
    tiny_config(layer_major=True, **overrides)
  assert not tiny_config(layer_major=None, multi_query=True,
                         **overrides).runs_layer_major


def test_automatic_order_runs_layer_major_unless_float32_per_head_kv():
  assert tiny_config(multi_query=True).runs_layer_major
  assert tiny_config(multi_query=True, recurrent_layers=(1,)).runs_layer_major
  assert tiny_config(dtype="bfloat16").runs_layer_major
  assert not tiny_config().runs_layer_major  # A key/value head per head.
  assert tiny_config(layer_major=True).runs_layer_major
  assert not tiny_config(multi_query=True, layer_major=False).runs_layer_major
