"""Shared helpers: tiny models that run in milliseconds on a CPU."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import xla_cpu
from brt.config import CLASSIC

# The XLA:CPU flag the command line sets (it changes speed, not values).
xla_cpu.tune_xla_flags()

# Deterministic float32 matmuls on every backend, so equalities are tight.
jax.config.update("jax_default_matmul_precision", "highest")

# The variants of the paper, each a set of ModelConfig overrides.
VARIANTS = {
    "xl": dict(),
    **{f"rec_{g}_{v}": dict(recurrent_layers=(1,), gate=g, gate_variant=v)
       for g in ("fixed", "lstm") for v in ("skip", "single", "dual")},
    # The paper's state update reads the block before as well; this one
    # only the completed block.
    "rec_fixed_skip_reads_block_only": dict(recurrent_layers=(1,),
                                            state_reads_previous_block=False),
    # Keys before a document masked instead of zeros: a document's first
    # token sees no key at all.
    "rec_lstm_single_masked_start": dict(recurrent_layers=(1,), gate="lstm",
                                         gate_variant="single",
                                         empty_cache="masked"),
    # brt's classic model (the block window, LayerNorm, GELU, biases, ...).
    "rec_fixed_dual_classic": dict(recurrent_layers=(1,), gate_variant="dual",
                                   **CLASSIC),
    "feedback_fixed": dict(recurrent_layers=(1,), feedback=True),
    "feedback_lstm_dual": dict(recurrent_layers=(1,), feedback=True,
                               gate="lstm", gate_variant="dual"),
    # The PyTorch port's choices (bench_pytorch_port.py) and then some.
    "two_rec_rotary_mqa_plain_keys": dict(
        recurrent_layers=(0, 1), position="rotary", multi_query=True,
        qk_norm=False),
}


def tiny_config(**overrides) -> brt.ModelConfig:
  base = dict(vocab_size=29, num_layers=2, d_model=32, num_heads=4,
              mlp_dim=48, block_width=4, num_states=3)
  base.update(overrides)
  return brt.ModelConfig(**base)


def random_tokens(seed, batch, length, vocab=29):
  rng = np.random.RandomState(seed)
  return jnp.asarray(rng.randint(0, vocab, (batch, length)), jnp.int32)


def init_model(cfg, batch=2, seed=0, execution=brt.ExecutionConfig()):
  """Returns (model, variables) with random parameters, without compiling init.

  Compiling `model.init` costs seconds (one RNG program per parameter), and
  the properties tested with this helper hold for any parameter values, so
  the shapes come from `jax.eval_shape` and the values from numpy. The real
  initialisers are tested in test_params.py.
  """
  model = brt.BlockRecurrentTransformer(cfg, execution)
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
def _jitted_apply(model):
  return jax.jit(lambda v, t, c, sos: model.apply(v, t, c, start_of_sequence=sos))


def apply(model, variables, tokens, carry, start_of_sequence=None):
  """model.apply, compiled once per model and shape (tests call it a lot)."""
  return _jitted_apply(model)(variables, tokens, carry, start_of_sequence)


def jax_leaves(tree):
  """The leaves of a pytree as float32 numpy arrays, for comparisons."""
  return [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(tree)]


def run_in_pieces(model, variables, tokens, piece, carry=None, sos=None):
  """Feeds `tokens` in consecutive calls of `piece` tokens, passing the carry."""
  carry = model.initial_carry(tokens.shape[0]) if carry is None else carry
  outs = []
  for start in range(0, tokens.shape[1], piece):
    logits, carry = apply(model, variables, tokens[:, start:start + piece],
                          carry, sos if start == 0 else None)
    outs.append(logits)
  return jnp.concatenate(outs, axis=1), carry


def assert_pieces_equal_one_call(model, variables, tokens, pieces, atol=1e-5):
  """Logits and carry of one call equal those of calls of each piece length;
  returns the one call's (logits, carry)."""
  whole, carry_whole = run_in_pieces(model, variables, tokens, tokens.shape[1])
  for piece in pieces:
    logits, carry = run_in_pieces(model, variables, tokens, piece)
    np.testing.assert_allclose(logits, whole, atol=atol, rtol=0)
    for a, b in zip(jax_leaves(carry), jax_leaves(carry_whole)):
      np.testing.assert_allclose(a, b, atol=atol, rtol=0)
  return whole, carry_whole


def assert_reset_row_is_fresh(model, variables, first, second):
  """After `first`, a start_of_sequence in row 0 of `second` gives exactly a
  fresh carry's logits and carry there, and leaves row 1 untouched; and the
  carry did matter for row 0. Returns (reset carry, fresh carry)."""
  _, carry = apply(model, variables, first, model.initial_carry(2))
  sos = jnp.array([True, False])
  reset_logits, reset_carry = apply(model, variables, second, carry, sos)
  kept_logits, _ = apply(model, variables, second, carry)
  fresh_logits, fresh_carry = apply(model, variables, second,
                                    model.initial_carry(2))
  np.testing.assert_array_equal(reset_logits[0], fresh_logits[0])
  np.testing.assert_array_equal(reset_logits[1], kept_logits[1])
  for a, b in zip(jax_leaves(reset_carry), jax_leaves(fresh_carry)):
    np.testing.assert_array_equal(a[0], b[0])
  assert np.abs(np.asarray(kept_logits[0] - fresh_logits[0])).max() > 1e-4
  return reset_carry, fresh_carry


def changed_positions(model, variables, tokens, position, piece=None):
  """Positions whose logits change when the token at `position` changes.

  The text is fed in calls of `piece` tokens (default: one call), passing the
  carry, so that influence through the carry across segments is covered too.
  """
  piece = piece or tokens.shape[1]
  edited = tokens.at[:, position].set((tokens[:, position] + 7) % 29)
  run = lambda t: np.asarray(run_in_pieces(model, variables, t, piece)[0])
  diff = np.abs(run(tokens) - run(edited)).max(axis=(0, 2))
  return diff > 0


def teacher_forced_logits(sampler, text, prompt_length):
  """Prefill `prompt_length` tokens, then decode the rest one token at a time,
  feeding the true next token; returns the logits of every position."""
  model, w = sampler.model, sampler.model.config.block_width
  dec, last = sampler.prefill(text[:, :prompt_length])
  full, _ = sampler._forward(sampler.variables, text,
                             model.initial_carry(text.shape[0]))
  outs = [full[:, :prompt_length - 1], last[:, None]]  # prompt via prefill
  end_block = jax.jit(functools.partial(model.apply, method="end_block"))
  for t in range(prompt_length, text.shape[1]):
    logits, dec = sampler._decode(sampler.variables, text[:, t:t + 1], dec)
    if int(dec["offset"]) == w:
      dec = end_block(sampler.variables, dec)
    outs.append(logits)
  return jnp.concatenate(outs, axis=1), full
