import numpy as np
import pytest

from brt.data import documents


def test_from_token_lists_layout_and_counts():
  docs = documents.DocumentSet.from_token_lists(
      [[1, 2, 3], [], [4]], vocab_size=10, texts=["a b", "", "\u00e9"])
  assert len(docs) == 3
  assert docs.tokens.dtype == np.uint16
  np.testing.assert_array_equal(docs.offsets, [0, 3, 3, 4])
  np.testing.assert_array_equal(docs[0], [1, 2, 3])
  assert len(docs[1]) == 0
  np.testing.assert_array_equal(docs.num_bytes, [3, 0, 2])
  np.testing.assert_array_equal(docs.num_words, [2, 0, 1])
  assert documents.DocumentSet.from_token_lists(
      [[70000]], vocab_size=80000).tokens.dtype == np.int32


def test_out_of_vocabulary_tokens_are_an_error():
  with pytest.raises(ValueError, match="vocabulary has 10 entries"):
    documents.DocumentSet.from_token_lists([[1, 10]], vocab_size=10)


def test_save_load_round_trip_memory_mapped(tmp_path):
  docs = documents.DocumentSet.from_token_lists(
      [[5, 6], [7, 8, 9]], vocab_size=300, names=["x", "y"],
      texts=["one", "two words"])
  docs.save(str(tmp_path / "set"))
  docs.save(str(tmp_path / "set"))  # overwriting is allowed
  back = documents.DocumentSet.load(str(tmp_path / "set"))
  assert isinstance(back.tokens, np.memmap)
  assert back.tokens.dtype == np.uint16
  np.testing.assert_array_equal(back.tokens, docs.tokens)
  np.testing.assert_array_equal(back.offsets, docs.offsets)
  np.testing.assert_array_equal(back.num_words, [1, 2])
  assert back.names == ["x", "y"] and back.vocab_size == 300
  assert not list(tmp_path.glob(".tmp-docs-*"))


def test_writer_streams_and_cleans_up_on_error(tmp_path):
  with documents.DocumentSetWriter(str(tmp_path / "w"), vocab_size=50) as w:
    w.add(np.array([1, 2, 3]), "a", 3, 1)
    w.add(np.array([], np.int64), "empty", 0, 0)
  back = documents.DocumentSet.load(str(tmp_path / "w"))
  np.testing.assert_array_equal(back.offsets, [0, 3, 3])
  with pytest.raises(ValueError, match="token ids in"):
    with documents.DocumentSetWriter(str(tmp_path / "x"), vocab_size=50) as w:
      w.add(np.array([1, 99]), "bad", 2, 1)
  assert not (tmp_path / "x").exists()
  assert not list(tmp_path.glob(".tmp-docs-*"))
  # An empty set loads too (nothing to memory-map).
  documents.DocumentSet.from_token_lists([], vocab_size=5).save(
      str(tmp_path / "e"))
  assert len(documents.DocumentSet.load(str(tmp_path / "e"))) == 0
