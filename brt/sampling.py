"""Sampling with the incremental decoder.

The prompt's whole blocks go through the ordinary block-parallel forward pass
(in chunks of segments, so memory stays bounded); its last partial block and
every new token go through `BlockRecurrentTransformer.decode`, which keeps the
keys/values of the previous and the current block and the recurrent state,
updated when a block completes. A new token costs the same whatever the
length of the text before it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from brt.model import BlockRecurrentTransformer, check_decodable


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0  # 0 = greedy.
  top_k: int = 0  # 0 = no top-k filter.
  top_p: float = 1.0  # 1 = no nucleus filter.
  stop_token: int | None = None  # Rows stop after emitting it.

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}.")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


def choose_tokens(logits, rng, cfg: SamplingConfig):
  """Draws one token per row from (B, V) logits."""
  if cfg.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (at least one token).
    drop = jnp.cumsum(probs, axis=-1) - probs >= cfg.top_p
    sorted_logits = jnp.where(drop, -jnp.inf, sorted_logits)
    logits = jnp.full_like(logits, -jnp.inf).at[
        jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class Sampler:
  """Continues prompts with a trained model; compiled functions are reused.

    sampler = Sampler(model, variables)
    out = sampler.generate(prompt_tokens, 512, rng=jax.random.PRNGKey(0),
                           sampling=SamplingConfig(temperature=0.8, top_p=0.95))
  """

  def __init__(self, model: BlockRecurrentTransformer, variables,
               prefill_blocks: int = 8):
    check_decodable(model.config)  # Fail at construction, not mid-prompt.
    self.model = model
    self.variables = variables
    self.prefill_blocks = prefill_blocks
    self._forward = jax.jit(model.apply)
    self._start = jax.jit(functools.partial(model.apply,
                                            method="start_decoding"))
    self._decode = jax.jit(functools.partial(model.apply, method="decode"))

  def prefill(self, prompt, carry=None):
    """Runs a (B, P) prompt; returns (decoder state, logits of its last token).

    carry: the carry after text that came before the prompt (what
    `model.apply` returned for it; any number of whole blocks), so that a
    caller who kept it continues without running that text again. Default:
    the prompt starts a document.
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, length = prompt.shape
    if length == 0:
      raise ValueError("The prompt is empty: give at least one token (e.g. "
                       "a start-of-document or newline token).")
    _check_vocab(prompt, self.model.config.vocab_size)
    w = self.model.config.block_width
    if carry is None:
      carry = self.model.initial_carry(batch)
    elif jax.tree_util.tree_structure(carry) != jax.tree_util.tree_structure(
        self.model.initial_carry(batch)) or carry["valid"].shape != (batch,):
      raise ValueError(
          "carry does not fit this model and prompt: pass the carry that "
          f"model.apply returned for {batch} rows of text before the prompt.")
    last = None
    full = length - length % w
    chunk = self.prefill_blocks * w
    for start in range(0, full, chunk):
      logits, carry = self._forward(self.variables,
                                    prompt[:, start:min(start + chunk, full)],
                                    carry)
      last = logits[:, -1]
    dec = self._start(self.variables, carry)
    if full < length:
      logits, dec = self._decode(self.variables, prompt[:, full:], dec)
      last = logits[:, -1]
    return dec, last

  def generate(self, prompt, num_tokens: int, *, rng,
               sampling: SamplingConfig = SamplingConfig(), carry=None):
    """Returns {"tokens": (B, num_tokens) int32, "lengths": (B,)}.

    After a row emits `stop_token` its remaining tokens are `stop_token` and
    its length counts the tokens up to and including it. `carry`: as for
    `prefill`, the text before the prompt.
    """
    dec, last = self.prefill(prompt, carry)
    tokens, lengths = self._loop(num_tokens, sampling)(
        self.variables, dec, last, rng)
    return {"tokens": tokens, "lengths": lengths}

  @functools.lru_cache(maxsize=16)
  def _loop(self, num_tokens, sampling):
    model, w = self.model, self.model.config.block_width
    stop = -1 if sampling.stop_token is None else sampling.stop_token

    def step(variables, state, _):
      dec, last, rng, done, length = state
      rng, key = jax.random.split(rng)
      token = choose_tokens(last, key, sampling)
      token = jnp.where(done, stop, token)
      logits, dec = model.apply(variables, token[:, None], dec, method="decode")
      dec = jax.lax.cond(dec["offset"] == w,
                         lambda d: model.apply(variables, d, method="end_block"),
                         lambda d: d, dec)
      length = length + (~done).astype(jnp.int32)
      done = done | (token == stop)
      return (dec, logits[:, 0], rng, done, length), token

    @jax.jit
    def loop(variables, dec, last, rng):
      batch = last.shape[0]
      init = (dec, last, rng, jnp.zeros((batch,), bool),
              jnp.zeros((batch,), jnp.int32))
      (_, _, _, _, lengths), tokens = jax.lax.scan(
          functools.partial(step, variables), init, None, length=num_tokens)
      return tokens.T, lengths

    return loop


def _check_vocab(tokens, vocab_size):
  values = np.asarray(tokens)
  if values.min() < 0 or values.max() >= vocab_size:
    raise ValueError(
        f"The prompt has token ids in [{values.min()}, {values.max()}], "
        f"outside the model's vocabulary of {vocab_size}; encode it with the "
        "vocabulary the model was trained with.")
