"""One compiled block step: the program does not grow with the segment."""

import jax
import jax.numpy as jnp

from conftest import init_model, tiny_config


def count_equations(jaxpr) -> int:
  """Equations in a jaxpr, including those of nested jaxprs (scan bodies)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          total += count_equations(getattr(inner, "jaxpr", inner))
  return total


def test_program_size_independent_of_number_of_blocks():
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm", gate_variant="dual")
  model, variables = init_model(cfg, batch=1)

  def size(num_blocks):
    tokens = jnp.zeros((1, num_blocks * cfg.block_width), jnp.int32)
    jaxpr = jax.make_jaxpr(model.apply)(variables, tokens,
                                        model.initial_carry(1))
    return count_equations(jaxpr.jaxpr)

  small, large = size(8), size(64)
  assert small == large
  assert small > 100  # The count does see into the scan body.


def test_compiled_program_text_is_the_same_size():
  cfg = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg, batch=1)

  def lines(num_blocks):
    tokens = jnp.zeros((1, num_blocks * cfg.block_width), jnp.int32)
    lowered = jax.jit(model.apply).lower(variables, tokens,
                                         model.initial_carry(1))
    return len(lowered.as_text().splitlines())

  assert lines(8) == lines(64)
