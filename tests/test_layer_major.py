"""A segment computed layer by layer equals the same segment computed block
by block (ExecutionConfig.layer_major), values and gradients."""

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


def _two_segments(cfg, variables, tokens, resets, execution):
  """Loss, logits and carries of two segments, the second with row resets
  (start of a document in row 1; carry dropout's resets in row 0), and the
  gradient of the loss."""
  model = brt.BlockRecurrentTransformer(cfg, execution)

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
  cfg = tiny_config(num_layers=3, **LAYER_MAJOR_VARIANTS[name])
  _, variables = init_model(cfg)
  w = cfg.block_width
  tokens = [random_tokens(1, 2, 3 * w), random_tokens(2, 2, 3 * w)]
  resets = [dict(), dict(start_of_sequence=jnp.array([False, True]),
                        reset_cache=jnp.array([True, False]),
                        reset_state=jnp.array([True, False]))]
  (loss_l, out_l), grad_l = _two_segments(
      cfg, variables, tokens, resets, brt.ExecutionConfig(layer_major=True))
  (loss_b, out_b), grad_b = _two_segments(
      cfg, variables, tokens, resets, brt.ExecutionConfig(layer_major=False))
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


@pytest.mark.parametrize("overrides, execution, reason", [
    (dict(recurrent_layers=(1,), feedback=True), {}, "feedback"),
    (dict(memory_tokens=2), {}, "memory tokens"),
    (dict(compressed_mem_factor=2), {}, "compressed memory"),
    ({}, dict(remat="full"), "remat"),
    ({}, dict(remat="dots_saveable"), "remat"),
])
def test_layer_major_is_refused_where_blocks_depend_on_more(
    overrides, execution, reason):
  cfg = tiny_config(multi_query=True, **overrides)
  with pytest.raises(ValueError, match=reason):
    brt.ExecutionConfig(layer_major=True, **execution).check(cfg)
  for backend in ("cpu", "gpu", "tpu"):
    assert not brt.ExecutionConfig(**execution).runs_layer_major(cfg, backend)


def test_automatic_order_on_cpu_runs_layer_major_unless_float32_per_head_kv():
  auto = lambda cfg: brt.ExecutionConfig().runs_layer_major(cfg, "cpu")
  assert auto(tiny_config(multi_query=True))
  assert auto(tiny_config(multi_query=True, recurrent_layers=(1,)))
  assert auto(tiny_config(dtype="bfloat16"))
  assert not auto(tiny_config())  # A key/value head per head.
  assert brt.ExecutionConfig(layer_major=True).runs_layer_major(tiny_config())
  assert not brt.ExecutionConfig(layer_major=False).runs_layer_major(
      tiny_config(multi_query=True))


def test_automatic_order_on_accelerators_runs_layer_major_where_possible():
  for backend in ("gpu", "tpu"):
    for cfg in (tiny_config(), tiny_config(recurrent_layers=(1,))):
      assert brt.ExecutionConfig().runs_layer_major(cfg, backend)
