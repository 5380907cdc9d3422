"""Carry dropout for training (the PyTorch port's `xl_memories_dropout` and
`state_dropout`).

At each training segment's start, each batch row independently drops its
carried cache (with the compressed memory) with probability `cache_rate`,
and its recurrent state with probability `state_rate`, and starts from the
fresh values instead, as if a document started there for that part of the
carry. It teaches the model to cope without a carry (as at a document's
start) and keeps it from leaning on one part of the carry alone.

The draws come from the train state's RNG and step (`rng_for_step`), so a
resumed run draws exactly what the uninterrupted run would have. Evaluation
and sampling never call this: carry dropout is off there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Folded into the step's key so these draws are independent of the dropout
# RNG the model gets from the same step key ("carr" in ASCII).
_STREAM = 0x63617272


def check_rate(name: str, rate: float):
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"{name} is a per-row probability in [0, 1], got {rate}.")


def rng_for_step(step_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(step_key, _STREAM)


def draw_resets(rng: jax.Array, batch_size: int, cache_rate: float,
                state_rate: float) -> dict[str, jax.Array | None]:
  """Keyword arguments for the model's apply: which rows drop what.

  A rate of 0 gives None (no reset and no random draw: the training step is
  the same program as without carry dropout).
  """
  cache_key, state_key = jax.random.split(rng)

  def draw(key, rate):
    if rate == 0:
      return None
    return jax.random.uniform(key, (batch_size,)) < rate

  return {"reset_cache": draw(cache_key, cache_rate),
          "reset_state": draw(state_key, state_rate)}
