"""The incremental decoder computes exactly what the full forward pass does,
and sampling is reproducible and honours its filters."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt.sampling import Sampler, SamplingConfig, choose_tokens
from conftest import (VARIANTS, init_model, random_tokens,
                      teacher_forced_logits, tiny_config)


@pytest.mark.parametrize("name", [
    "xl", "rec_fixed_skip", "rec_lstm_dual", "rec_fixed_single",
    "feedback_lstm_dual", "rec_fixed_skip_reads_block_only",
    "rec_lstm_single_masked_start", "rec_fixed_dual_classic",
    "two_rec_rotary_mqa_plain_keys"])
def test_decoder_logits_equal_the_forward_pass(name):
  cfg = tiny_config(**VARIANTS[name])
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables, prefill_blocks=2)
  w = cfg.block_width
  text = random_tokens(5, 2, 4 * w)
  # A one-token prompt, one ending mid-block, and one of whole blocks
  # (longer than a prefill chunk).
  for prompt_length in (1, w + 2, 3 * w):
    decoded, full = teacher_forced_logits(sampler, text, prompt_length)
    # One-row and block-wide matmuls sum in different orders; float32 noise,
    # amplified through the LSTM gates of random weights, stays below 2e-5 of
    # the logits' scale. A wrong mask, cache or state errs by O(scale).
    scale = float(jnp.abs(full).max())
    np.testing.assert_allclose(decoded, full, atol=2e-5 * scale, rtol=0)


def test_greedy_equals_top_k_1_and_tiny_top_p():
  cfg = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables)
  prompt = random_tokens(6, 2, 5)
  greedy = sampler.generate(prompt, 9, rng=jax.random.PRNGKey(0),
                            sampling=SamplingConfig(temperature=0))
  top1 = sampler.generate(prompt, 9, rng=jax.random.PRNGKey(1),
                          sampling=SamplingConfig(top_k=1))
  nucleus = sampler.generate(prompt, 9, rng=jax.random.PRNGKey(2),
                             sampling=SamplingConfig(top_p=1e-6))
  np.testing.assert_array_equal(top1["tokens"], greedy["tokens"])
  np.testing.assert_array_equal(nucleus["tokens"], greedy["tokens"])
  # Greedy continuation is the argmax of the forward pass at every step.
  text = jnp.concatenate([prompt, greedy["tokens"]], axis=1)
  pad = (-text.shape[1]) % cfg.block_width
  logits, _ = sampler._forward(variables, jnp.pad(text, ((0, 0), (0, pad))),
                               model.initial_carry(2))
  np.testing.assert_array_equal(
      jnp.argmax(logits[:, prompt.shape[1] - 1:text.shape[1] - 1], -1),
      greedy["tokens"])


def test_continuing_from_a_kept_carry_equals_the_whole_prompt():
  """The carry after text of whole blocks, kept by the caller, then the
  rest of the prompt: the same continuation as the whole prompt."""
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm")
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables, prefill_blocks=1)
  w = cfg.block_width
  text = random_tokens(8, 2, 3 * w + 2)
  greedy = SamplingConfig(temperature=0)
  whole = sampler.generate(text, 7, rng=jax.random.PRNGKey(0),
                           sampling=greedy)
  _, carry = sampler._forward(variables, text[:, :2 * w],
                              model.initial_carry(2))
  rest = sampler.generate(text[:, 2 * w:], 7, rng=jax.random.PRNGKey(0),
                          sampling=greedy, carry=carry)
  np.testing.assert_array_equal(rest["tokens"], whole["tokens"])
  _, last_whole = sampler.prefill(text)
  _, last_rest = sampler.prefill(text[:, 2 * w:], carry)
  np.testing.assert_allclose(last_rest, last_whole, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="carry does not fit"):
    sampler.generate(text[:1, 2 * w:], 3, rng=jax.random.PRNGKey(0),
                     carry=carry)


def test_sampling_is_reproducible_per_seed():
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm")
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables)
  prompt = random_tokens(7, 3, 6)
  run = lambda seed: np.asarray(sampler.generate(
      prompt, 12, rng=jax.random.PRNGKey(seed))["tokens"])
  np.testing.assert_array_equal(run(3), run(3))
  assert (run(3) != run(4)).any()


def test_filters_restrict_the_candidates():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(4, 50), jnp.float32)
  top3 = set()
  for seed in range(30):
    tokens = choose_tokens(logits, jax.random.PRNGKey(seed), SamplingConfig(top_k=3))
    for row, token in enumerate(np.asarray(tokens)):
      top3.add((row, token in np.argsort(-logits[row])[:3]))
  assert top3 == {(0, True), (1, True), (2, True), (3, True)}
  # Nucleus: with p=0.5 only the tokens covering the first half of the mass.
  probs = np.asarray(jax.nn.softmax(logits))
  for seed in range(30):
    tokens = np.asarray(choose_tokens(logits, jax.random.PRNGKey(seed),
                                      SamplingConfig(top_p=0.5)))
    for row, token in enumerate(tokens):
      order = np.argsort(-probs[row])
      rank = int(np.where(order == token)[0][0])
      assert probs[row][order[:rank]].sum() < 0.5


def test_stop_token_ends_a_row():
  cfg = tiny_config()
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables)
  prompt = random_tokens(8, 2, 3)
  free = sampler.generate(prompt, 10, rng=jax.random.PRNGKey(0),
                          sampling=SamplingConfig(temperature=0))["tokens"]
  stop = int(free[0, 2])
  out = sampler.generate(prompt, 10, rng=jax.random.PRNGKey(0),
                         sampling=SamplingConfig(temperature=0, stop_token=stop))
  first = int(np.argmax(np.asarray(free[0]) == stop))
  assert int(out["lengths"][0]) == first + 1
  assert (np.asarray(out["tokens"][0, first:]) == stop).all()
  np.testing.assert_array_equal(out["tokens"][0, :first], free[0, :first])


def test_bad_prompts_are_rejected():
  cfg = tiny_config()
  model, variables = init_model(cfg)
  sampler = Sampler(model, variables)
  with pytest.raises(ValueError, match="prompt is empty"):
    sampler.prefill(jnp.zeros((1, 0), jnp.int32))
  with pytest.raises(ValueError, match="outside the model's vocabulary of 29"):
    sampler.prefill(jnp.array([[3, 40]], jnp.int32))
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(top_p=0.0)
