"""Whole-document evaluation equals the plain forward pass on each document."""

import json
import os

import jax.numpy as jnp
import numpy as np

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
