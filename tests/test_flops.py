"""The analytic FLOP count agrees with XLA's own count of the compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import flops


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(recurrent_layers=(1,)),
    dict(recurrent_layers=(1,), gate="lstm", gate_variant="dual", feedback=True),
    dict(recurrent_layers=(0,), multi_query=True, gate_variant="single"),
    dict(recurrent_layers=(1,), gate="lstm", gate_variant="single"),
    dict(recurrent_layers=(1,), gate="lstm", gate_variant="skip",
         tie_embeddings=False, use_bias=True, norm="layer", qk_norm=False),
    # Compressed memories (conv: the compressor's matmuls count) and a
    # recurrent layer whose state an earlier layer reads.
    dict(compressed_mem_factor=4, recurrent_layers=(1,),
         read_recurrent_layers=(0,)),
    dict(compressed_mem_factor=2, compressed_mem_slots=24, compression="mean",
         multi_query=True),
    dict(memory_tokens=8),  # RMT: 2M memory rows, no previous block.
    dict(memory_tokens=8, memory_xl_cache=True, multi_query=True),
])
def test_matmul_flops_match_xla_cost_analysis(overrides):
  cfg = _config(**overrides)
  ours, xla = flops.forward_flops_per_block(cfg), _xla_flops(cfg)
  # XLA also counts elementwise work (norms, softmax), about 1% here.
  assert 0.97 * xla < ours <= xla


def test_reading_the_previous_block_adds_the_flops_xla_counts():
  # Too small a share of the whole for the 3% band above to notice.
  off = _config(recurrent_layers=(1,), state_reads_previous_block=False)
  on = _config(recurrent_layers=(1,), state_reads_previous_block=True)
  ours = flops.forward_flops_per_block(on) - flops.forward_flops_per_block(off)
  assert ours > 0
  # XLA's difference also holds the softmax over the extra logits.
  np.testing.assert_allclose(ours, _xla_flops(on) - _xla_flops(off), rtol=0.1)


def _config(**overrides):
  return brt.ModelConfig(vocab_size=256, num_layers=2, d_model=256,
                         num_heads=4, block_width=32, num_states=16,
                         **overrides)


def _xla_flops(cfg):
  """XLA's FLOP count of one block's forward pass."""
  model = brt.BlockRecurrentTransformer(cfg)
  tokens = jnp.zeros((1, cfg.block_width), jnp.int32)  # One block: the scan
  carry = model.initial_carry(1)                       # body is counted once.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, carry)
  cost = jax.jit(model.apply).lower(shapes, tokens, carry).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]
