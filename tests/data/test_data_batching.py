import json

import numpy as np
import pytest

from brt.data import batching, documents

VOCAB = 100_000


def make_docs(lengths):
  # Token values encode (document, position) so any misplaced token shows.
  return documents.DocumentSet.from_token_lists(
      [1000 * (d + 1) + np.arange(n) for d, n in enumerate(lengths)],
      vocab_size=VOCAB)


def collect(it):
  return [b for b in it]


def test_small_example_exact_batches():
  # Docs of 6 and 3 tokens, one row, segments of 4: the first document gives
  # 5 targets (4 + 1 padded), the second 2 (padded), each restarting a row.
  docs = make_docs([6, 3])
  batches = collect(batching.eval_batcher(docs, batch_size=1, segment_length=4))
  assert len(batches) == 3
  b0, b1, b2 = batches
  np.testing.assert_array_equal(b0["inputs"], [[1000, 1001, 1002, 1003]])
  np.testing.assert_array_equal(b0["targets"], [[1001, 1002, 1003, 1004]])
  np.testing.assert_array_equal(b0["loss_mask"], [[1, 1, 1, 1]])
  np.testing.assert_array_equal(b1["inputs"], [[1004, 0, 0, 0]])
  np.testing.assert_array_equal(b1["targets"], [[1005, 0, 0, 0]])
  np.testing.assert_array_equal(b1["loss_mask"], [[1, 0, 0, 0]])
  np.testing.assert_array_equal(b2["inputs"], [[2000, 2001, 0, 0]])
  np.testing.assert_array_equal(b2["targets"], [[2001, 2002, 0, 0]])
  np.testing.assert_array_equal(b2["loss_mask"], [[1, 1, 0, 0]])
  assert [b["start_of_sequence"][0] for b in batches] == [True, False, True]
  assert [b["end_of_document"][0] for b in batches] == [False, True, True]
  assert [b["doc_offset"][0] for b in batches] == [0, 4, 0]
  assert [b["doc_tokens"][0] for b in batches] == [5, 5, 2]
  assert b0["inputs"].dtype == np.int32 and b0["targets"].dtype == np.int32
  assert b0["loss_mask"].dtype == np.float32
  assert b0["start_of_sequence"].dtype == np.bool_


def check_rows_and_rebuild(docs, batches, segment_length):
  """Checks each row's stream and returns every document as read, by id."""
  L = segment_length
  read = {}
  num_rows = batches[0]["inputs"].shape[0]
  for r in range(num_rows):
    prev_doc, prev_off = -1, 0
    for b in batches:
      doc, off = int(b["doc_id"][r]), int(b["doc_offset"][r])
      mask = b["loss_mask"][r]
      if doc < 0:
        assert mask.sum() == 0 and not b["start_of_sequence"][r]
        prev_doc = -1
        continue
      tokens = docs[doc]
      n = int(mask.sum())
      assert n == min(L, len(tokens) - 1 - off)
      np.testing.assert_array_equal(mask[:n], 1)
      np.testing.assert_array_equal(mask[n:], 0)
      np.testing.assert_array_equal(b["inputs"][r, :n], tokens[off:off + n])
      # targets are the inputs shifted by one within the document
      np.testing.assert_array_equal(b["targets"][r, :n],
                                    tokens[off + 1:off + n + 1])
      np.testing.assert_array_equal(b["inputs"][r, n:], 0)
      if b["start_of_sequence"][r]:
        assert off == 0
      else:
        assert doc == prev_doc and off == prev_off + L
      if off == 0:
        assert b["start_of_sequence"][r]
        read.setdefault(doc, []).append([])
      read[doc][-1].append(tokens[off:off + n + 1] if b["end_of_document"][r]
                           else tokens[off:off + n])
      prev_doc, prev_off = doc, off
  return {d: [np.concatenate(parts) for parts in reads]
          for d, reads in read.items()}


LENGTHS = [1, 37, 5, 2, 64, 9, 0, 23, 41, 3, 17, 8]


@pytest.mark.parametrize("shuffle", [False, True])
def test_one_epoch_reads_every_document_exactly_once(shuffle):
  docs = make_docs(LENGTHS)
  it = batching.LongDocBatcher(docs, batch_size=3, segment_length=8, seed=4,
                               shuffle=shuffle, num_epochs=1)
  batches = collect(it)
  read = check_rows_and_rebuild(docs, batches, 8)
  # Documents with fewer than two tokens have nothing to predict.
  eligible = [d for d, n in enumerate(LENGTHS) if n >= 2]
  assert it.num_skipped_documents == 2
  assert sorted(read) == eligible
  for d in eligible:
    assert len(read[d]) == 1
    np.testing.assert_array_equal(read[d][0], docs[d])
  total_targets = sum(float(b["loss_mask"].sum()) for b in batches)
  assert total_targets == sum(n - 1 for n in LENGTHS if n >= 2)


def test_eval_hands_out_documents_in_order():
  docs = make_docs(LENGTHS)
  starts = []
  for b in batching.eval_batcher(docs, batch_size=3, segment_length=8):
    starts += [int(d) for d in b["doc_id"][b["start_of_sequence"]]]
  assert starts == [d for d, n in enumerate(LENGTHS) if n >= 2]


def test_training_wraps_into_reshuffled_epochs():
  docs = make_docs(LENGTHS)
  it = batching.LongDocBatcher(docs, batch_size=2, segment_length=8, seed=1)
  starts = []
  while len(starts) < 3 * 10:
    b = next(it)
    starts += [int(d) for d in b["doc_id"][b["start_of_sequence"]]]
  epochs = [starts[:10], starts[10:20], starts[20:30]]
  for e in epochs:
    assert sorted(e) == [d for d, n in enumerate(LENGTHS) if n >= 2]
  assert epochs[0] != epochs[1]  # reshuffled with (seed, epoch)
  assert it.get_state()["epoch"] >= 2
  two = batching.LongDocBatcher(docs, batch_size=2, segment_length=8,
                                num_epochs=2, seed=1)
  read = check_rows_and_rebuild(docs, collect(two), 8)
  assert all(len(v) == 2 for v in read.values())


def test_same_seed_same_batches_other_seed_other_order():
  docs = make_docs(LENGTHS)
  def first(seed, n=12):
    it = batching.LongDocBatcher(docs, batch_size=2, segment_length=8,
                                 seed=seed)
    return np.stack([next(it)["inputs"] for _ in range(n)])
  np.testing.assert_array_equal(first(3), first(3))
  assert not np.array_equal(first(3), first(4))


@pytest.mark.parametrize("skip", [0, 1, 7, 19])
def test_resume_from_saved_position_gives_identical_batches(skip):
  docs = make_docs(LENGTHS)
  def make():
    return batching.LongDocBatcher(docs, batch_size=3, segment_length=8,
                                   seed=9)
  it = make()
  for _ in range(skip):
    next(it)
  saved = json.loads(json.dumps(it.get_state()))  # goes through a checkpoint
  expected = [next(it) for _ in range(25)]  # crosses an epoch boundary
  resumed = make()
  next(resumed)  # a rebuilt pipeline may have moved; restoring resets it
  resumed.set_state(saved)
  for want in expected:
    got = next(resumed)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_state_is_small_and_refuses_another_pipeline():
  docs = make_docs(LENGTHS)
  it = batching.LongDocBatcher(docs, batch_size=4, segment_length=8)
  next(it)
  state = it.get_state()
  assert len(json.dumps(state)) < 400
  other = batching.LongDocBatcher(docs, batch_size=4, segment_length=16)
  with pytest.raises(ValueError, match="another pipeline"):
    other.set_state(state)


@pytest.mark.parametrize("shuffle,num_epochs", [(False, 1), (True, None)])
def test_host_shards_together_equal_the_unsharded_batch(shuffle, num_epochs):
  docs = make_docs(LENGTHS)
  kw = dict(batch_size=4, segment_length=8, seed=2, shuffle=shuffle,
            num_epochs=num_epochs)
  full = batching.LongDocBatcher(docs, **kw)
  shards = [batching.LongDocBatcher(docs, shard_index=i, num_shards=2, **kw)
            for i in range(2)]
  seen = [set(), set()]
  for _ in range(40):
    try:
      want = next(full)
    except StopIteration:
      for s in shards:
        with pytest.raises(StopIteration):
          next(s)
      break
    parts = [next(s) for s in shards]
    assert parts[0]["inputs"].shape == (2, 8)
    for k in want:
      np.testing.assert_array_equal(
          np.concatenate([p[k] for p in parts]), want[k], err_msg=k)
    for i, p in enumerate(parts):
      seen[i] |= {int(d) for d in p["doc_id"][p["start_of_sequence"]]}
    # All hosts hold the same global position.
    assert shards[0].get_state() == shards[1].get_state() == full.get_state()
  if num_epochs == 1:
    # In one epoch the two hosts read disjoint documents that cover all.
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {d for d, n in enumerate(LENGTHS) if n >= 2}


def test_bad_arguments_and_empty_split():
  docs = make_docs([5, 5])
  with pytest.raises(ValueError, match="split evenly"):
    batching.LongDocBatcher(docs, batch_size=3, segment_length=4,
                            num_shards=2)
  with pytest.raises(ValueError, match="split is empty"):
    batching.LongDocBatcher(make_docs([1, 0]), batch_size=1, segment_length=4)
