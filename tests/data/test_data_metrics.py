import math

import numpy as np

from brt.data import batching, documents, metrics

# A hand-made document: 6 whitespace words (a double space and a newline
# between some), 28 characters, 30 UTF-8 bytes (the em dash takes three).
TEXT = "The quick  brown\nfox \u2014 jumps"


def test_counts_on_hand_made_document():
  assert len(TEXT) == 28
  assert metrics.count_utf8_bytes(TEXT) == 30
  assert metrics.count_words(TEXT) == 6
  assert metrics.count_words("") == 0
  assert metrics.count_words(" \n\t ") == 0


def test_compute_metrics_known_values():
  # 12 bits of loss spread over 6 tokens, 30 bytes and 6 words.
  m = metrics.compute_metrics(12 * math.log(2), num_tokens=6, num_bytes=30,
                              num_words=6)
  assert math.isclose(m["bits_per_token"], 2.0)
  assert math.isclose(m["bits_per_byte"], 0.4)
  assert math.isclose(m["word_perplexity"], 4.0)
  assert math.isclose(m["loss"], 2 * math.log(2))
  assert math.isnan(metrics.compute_metrics(1.0, 0, 0, 0)["bits_per_byte"])


def test_accumulator_counts_each_document_once_across_segments():
  # Two byte-level documents, the first spanning three segments of 8.
  texts = [TEXT, "a b"]
  docs = documents.DocumentSet.from_token_lists(
      [list(t.encode()) for t in texts], vocab_size=256, texts=texts)
  acc = metrics.EvalAccumulator()
  n_batches = 0
  for batch in batching.eval_batcher(docs, batch_size=2, segment_length=8):
    # One nat per target token; padding carries garbage that must be ignored.
    loss = np.where(batch["loss_mask"] > 0, 1.0, 1e6)
    acc.update(batch, loss)
    n_batches += 1
  assert n_batches == 4  # 29 targets of the first document in 8-token pieces
  r = acc.result()
  assert r["num_documents"] == 2
  assert r["num_tokens"] == 29 + 2
  assert r["num_bytes"] == 30 + 3
  assert r["num_words"] == 6 + 2
  assert math.isclose(r["bits_per_byte"], 31 / 33 / math.log(2))
  assert math.isclose(r["word_perplexity"], math.exp(31 / 8))


def test_sharded_eval_totals_add_up_to_the_unsharded_result():
  texts = [TEXT, "a b", "one two three four"]
  docs = documents.DocumentSet.from_token_lists(
      [list(t.encode()) for t in texts], vocab_size=256, texts=texts)
  def run(shard, shards):
    acc = metrics.EvalAccumulator()
    for b in batching.eval_batcher(docs, batch_size=2, segment_length=4,
                                   shard_index=shard, num_shards=shards):
      acc.update(b, 0.5 * b["inputs"])  # any deterministic per-token loss
    return acc
  whole = run(0, 1).result()
  summed = metrics.metrics_from_totals(run(0, 2).totals() + run(1, 2).totals())
  assert summed == whole
  assert whole["num_documents"] == 3 and whole["num_bytes"] == 30 + 3 + 18
