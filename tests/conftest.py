"""Shared helpers: tiny models that run in milliseconds on a CPU."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt

# Deterministic float32 matmuls on every backend, so equalities are tight.
jax.config.update("jax_default_matmul_precision", "highest")

# The variants of the paper, each a set of ModelConfig overrides.
VARIANTS = {
    "xl": dict(),
    **{f"rec_{g}_{v}": dict(recurrent_layers=(1,), gate=g, gate_variant=v)
       for g in ("fixed", "lstm") for v in ("skip", "single", "dual")},
    "feedback_fixed": dict(recurrent_layers=(1,), feedback=True),
    "feedback_lstm_dual": dict(recurrent_layers=(1,), feedback=True,
                               gate="lstm", gate_variant="dual"),
    "two_rec_rotary_mqa_qknorm": dict(recurrent_layers=(0, 1), position="rotary",
                                      multi_query=True, qk_norm=True),
}


def tiny_config(**overrides) -> brt.ModelConfig:
  base = dict(vocab_size=29, num_layers=2, d_model=32, num_heads=4,
              mlp_dim=48, block_width=4, num_states=3)
  base.update(overrides)
  return brt.ModelConfig(**base)


def random_tokens(seed, batch, length, vocab=29):
  rng = np.random.RandomState(seed)
  return jnp.asarray(rng.randint(0, vocab, (batch, length)), jnp.int32)


def init_model(cfg, batch=2, seed=0):
  """Returns (model, variables) with random parameters, without compiling init.

  Compiling `model.init` costs seconds (one RNG program per parameter), and
  the properties tested with this helper hold for any parameter values, so
  the shapes come from `jax.eval_shape` and the values from numpy. The real
  initialisers are tested in test_params.py.
  """
  model = brt.BlockRecurrentTransformer(cfg)
  tokens = jnp.zeros((batch, cfg.block_width), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(
      model.init, jax.random.PRNGKey(0), tokens, model.initial_carry(batch)))
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    value = rng.normal(0.0, 0.3, leaf.shape)
    if "scale" in name and "ln_" in name:  # LayerNorm scales around 1.
      value = 1.0 + 0.1 * value
    return jnp.asarray(value, leaf.dtype)

  return model, jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
  return request.param


@functools.lru_cache(maxsize=None)
def _jitted_apply(cfg):
  model = brt.BlockRecurrentTransformer(cfg)
  return jax.jit(lambda v, t, c, sos: model.apply(v, t, c, start_of_sequence=sos))


def apply(model, variables, tokens, carry, start_of_sequence=None):
  """model.apply, compiled once per config and shape (tests call it a lot)."""
  return _jitted_apply(model.config)(variables, tokens, carry, start_of_sequence)
