"""Whole-document evaluation equals the plain forward pass on each document."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from brt.data.batching import eval_batcher
from brt.data.documents import DocumentSet
from brt.evaluation import (EvalResult, Evaluator, plot_loss_by_position,
                            token_nll)
from conftest import apply, init_model, tiny_config


def test_streamed_documents_equal_one_forward_pass_each(tmp_path):
  cfg = tiny_config(recurrent_layers=(1,), gate="lstm")
  model, variables = init_model(cfg)
  rng = np.random.RandomState(0)
  texts = ["a b c", "longer text here", "x", "the last one is long too"]
  lengths = [37, 11, 50, 23]  # Several segments each, ending mid-segment.
  docs = DocumentSet.from_token_lists(
      [rng.randint(0, cfg.vocab_size, n) for n in lengths], cfg.vocab_size,
      texts=texts)
  segment = 2 * cfg.block_width
  result = Evaluator(model).run(
      variables, eval_batcher(docs, batch_size=2, segment_length=segment),
      position_bin=8)

  total = 0.0
  for doc_id, n in enumerate(lengths):
    tokens = jnp.asarray(docs[doc_id], jnp.int32)[None]
    pad = (-(n - 1)) % cfg.block_width
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (0, pad)))
    logits, _ = apply(model, variables, inputs, model.initial_carry(1))
    nll = float(token_nll(logits[:, :n - 1], tokens[:, 1:]).sum())
    total += nll
    got = result.per_document[doc_id]
    assert got["num_tokens"] == n - 1
    np.testing.assert_allclose(got["loss"] * (n - 1), nll, rtol=1e-5)
    assert got["num_bytes"] == len(texts[doc_id].encode())
    assert got["num_words"] == len(texts[doc_id].split())

  m = result.metrics
  assert m["num_tokens"] == sum(lengths) - len(lengths)
  np.testing.assert_allclose(m["loss"] * m["num_tokens"], total, rtol=1e-5)
  # The position bins partition the same tokens and loss.
  assert result.position_count.sum() == m["num_tokens"]
  np.testing.assert_allclose(result.position_loss_sum.sum(), total, rtol=1e-5)
  assert len(result.position_count) == -(-max(n - 1 for n in lengths) // 8)

  again = EvalResult.from_json(json.loads(json.dumps(result.to_json())))
  assert again.metrics == result.metrics
  assert again.per_document == result.per_document
  np.testing.assert_array_equal(again.position_count, result.position_count)
  np.testing.assert_array_equal(again.position_loss_sum,
                                result.position_loss_sum)

  path = plot_loss_by_position({"rec": result}, str(tmp_path / "loss.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 1000


def _documents(cfg, lengths, seed=1):
  rng = np.random.RandomState(seed)
  return DocumentSet.from_token_lists(
      [rng.randint(0, cfg.vocab_size, n) for n in lengths], cfg.vocab_size)


def test_withheld_state_restarts_every_block_from_the_initial_state():
  cfg = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg)
  w = cfg.block_width
  lengths = [5 * w + 3, 2 * w + 1]
  docs = _documents(cfg, lengths)
  batches = lambda: eval_batcher(docs, batch_size=2, segment_length=w)
  withheld = Evaluator(model, withhold_state=True).run(variables, batches())
  plain = Evaluator(model).run(variables, batches())

  # By hand: block by block, the carry (and so the cache) passed on, the
  # state reset at every block.
  for doc_id, n in enumerate(lengths):
    tokens = jnp.asarray(docs[doc_id], jnp.int32)[None]
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (0, (-(n - 1)) % w)))
    carry, nll = model.initial_carry(1), 0.0
    for start in range(0, inputs.shape[1], w):
      logits, carry = model.apply(variables, inputs[:, start:start + w], carry,
                                  reset_state=jnp.ones((1,), bool))
      end = min(start + w, n - 1)
      nll += float(token_nll(logits[:, :end - start],
                             tokens[:, start + 1:end + 1]).sum())
    np.testing.assert_allclose(
        withheld.per_document[doc_id]["loss"] * (n - 1), nll, rtol=1e-5)
  # The state mattered: withholding it changed the loss.
  assert abs(withheld.metrics["loss"] - plain.metrics["loss"]) > 1e-4


def test_withholding_the_state_of_a_model_without_one_changes_nothing():
  cfg = tiny_config()  # Transformer-XL: no recurrent state.
  model, variables = init_model(cfg)
  docs = _documents(cfg, [4 * cfg.block_width + 2, 9])
  batches = lambda: eval_batcher(docs, batch_size=2,
                                 segment_length=cfg.block_width)
  withheld = Evaluator(model, withhold_state=True).run(variables, batches())
  plain = Evaluator(model).run(variables, batches())
  np.testing.assert_allclose(withheld.metrics["loss"], plain.metrics["loss"],
                             rtol=1e-6)


def test_withholding_the_state_needs_one_block_segments():
  cfg = tiny_config(recurrent_layers=(1,))
  model, variables = init_model(cfg)
  docs = _documents(cfg, [3 * cfg.block_width])
  with pytest.raises(ValueError, match="eval_segment_length"):
    Evaluator(model, withhold_state=True).run(
        variables, eval_batcher(docs, batch_size=1,
                                segment_length=2 * cfg.block_width))


def test_position_bins_of_hosts_of_different_lengths_are_summed(monkeypatch):
  """Each host saw other documents, so its bin arrays have its own length;
  two hosts are simulated by an all-gather that adds a second host's rows."""
  from jax.experimental import multihost_utils
  from brt import evaluation
  other = {"loss": np.array([1.0, 2.0, 3.0, 4.0]),
           "count": np.array([1.0, 1.0, 2.0, 2.0])}

  def allgather(x):
    x = np.asarray(x)
    if x.ndim == 0:  # The lengths.
      return np.array([x, len(other["count"])])
    return np.stack([x, np.stack([other["loss"], other["count"]])])

  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  loss, count = evaluation._sum_bins_over_hosts(  # pylint: disable=protected-access
      np.array([10.0, 20.0]), np.array([5.0, 6.0]))
  np.testing.assert_array_equal(loss, [11.0, 22.0, 3.0, 4.0])
  np.testing.assert_array_equal(count, [6.0, 7.0, 2.0, 2.0])
