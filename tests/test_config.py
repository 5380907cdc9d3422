"""Bad configurations and inputs fail early, saying what is wrong and how to fix it."""

import jax.numpy as jnp
import pytest

import brt
from conftest import apply, init_model, tiny_config


@pytest.mark.parametrize("overrides,message", [
    (dict(recurrent_layers=(3,)), r"recurrent layer index \[3\] out of range"),
    (dict(num_heads=5), r"num_heads=5 does not divide d_model=32"),
    (dict(gate="gru"), r"gate='gru' is not one of"),
    (dict(gate_variant="triple"), r"gate_variant='triple'"),
    (dict(feedback=True), r"feedback=True needs a recurrent layer"),
    (dict(position="rotary", head_dim=5, num_heads=4), r"even head_dim"),
    (dict(block_width=0), r"block_width must be a positive integer"),
    (dict(dropout_rate=1.0), r"dropout_rate"),
    (dict(fixed_gate_bias_std=-0.1), r"fixed_gate_bias_std must be >= 0"),
])
def test_invalid_configs_are_rejected(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(**overrides)


def test_recurrent_layers_normalised():
  cfg = tiny_config(num_layers=3, recurrent_layers=[2, 0])
  assert cfg.recurrent_layers == (0, 2)
  hash(cfg)  # Frozen and hashable: usable as a static jit argument.


def test_segment_must_be_whole_blocks():
  cfg = tiny_config()
  model, variables = init_model(cfg)
  with pytest.raises(ValueError, match=r"not a positive multiple of block_width=4"):
    model.apply(variables, jnp.zeros((2, 6), jnp.int32), model.initial_carry(2))


def test_tokens_outside_vocabulary():
  cfg = tiny_config()
  model, variables = init_model(cfg)
  with pytest.raises(ValueError, match=r"tokens outside the vocabulary.*vocab_size=29"):
    model.apply(variables, jnp.full((2, 4), 29, jnp.int32), model.initial_carry(2))


def test_carry_of_other_batch_or_model():
  cfg = tiny_config()
  model, variables = init_model(cfg)
  tokens = jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(ValueError, match=r"batch size 3.*initial_carry\(2\)"):
    model.apply(variables, tokens, model.initial_carry(3))
  other = brt.initial_carry(tiny_config(recurrent_layers=(1,)), 2)
  with pytest.raises(ValueError, match=r"carry does not match"):
    apply(model, variables, tokens, other)
