"""Each source as a seqio task on a tiny corpus written here (no download)."""
import logging
import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from brt.data import batching, code_repos, tasks, vocabularies

BOOKS = {
    "train": {"a": "Call me Ishmael.\nSome years ago...\n",
              "b": "It was the best of times, it was the worst of times.\n"},
    "validation": {
        "v": "All happy families are alike; caf\u00e9 \u2014 fin.\n"},
    "test": {"t": "In the beginning.\n"},
}


def write_books(root, books=BOOKS):
  for split, docs in books.items():
    os.makedirs(root / split, exist_ok=True)
    for name, text in docs.items():
      (root / split / f"{name}.txt").write_text(text, encoding="utf-8")
  return root


def byte_ids(text):
  return [b + 3 for b in text.encode("utf-8")] + [1]  # EOS ends a document


def test_pg19_local_bytes_documents_counts_and_cache(tmp_path):
  root = write_books(tmp_path / "pg19")
  name = tasks.register_pg19_local(str(root))
  assert name == "pg19_local_bytes"
  docs = tasks.get_documents(name, "train")
  assert docs.names == ["a", "b"]
  for i, text in enumerate(BOOKS["train"].values()):
    np.testing.assert_array_equal(docs[i], byte_ids(text))
  docs = tasks.get_documents(name, "validation")
  text = BOOKS["validation"]["v"]
  assert docs.num_bytes.tolist() == [len(text.encode())] == [45]
  assert docs.num_words.tolist() == [8]
  # Cached beside the data, keyed by the files; a new book is noticed.
  cached = os.listdir(root / "tokens")
  assert len(cached) == 2
  assert isinstance(tasks.get_documents(name, "validation").tokens, np.memmap)
  (root / "validation" / "w.txt").write_text("More.\n")
  assert len(tasks.get_documents(name, "validation")) == 2
  assert len(os.listdir(root / "tokens")) == 3


def test_pg19_local_spm_is_trained_on_train_and_round_trips(tmp_path):
  # Enough distinct text for a small model: pseudo-words from syllables.
  rng = np.random.default_rng(0)
  syllables = ["ka", "lo", "mi", "ne", "su", "ra", "tel", "vin", "dor", "pe"]
  def line():
    return " ".join("".join(rng.choice(syllables, rng.integers(1, 4)))
                    for _ in range(12)) + ".\n"
  books = {"train": {f"b{i}": "".join(line() for _ in range(150))
                     for i in range(4)},
           "validation": {"v": "The queen \u2014 unseen words \u00e9!\n"},
           "test": {"t": "x"}}
  root = write_books(tmp_path / "pg19", books)
  name = tasks.register_pg19_local(str(root), vocabulary="spm",
                                   spm_vocab_size=300)
  assert name == "pg19_local_spm"
  assert os.path.exists(root / "vocab" / "spm_unigram_300_s0.model")
  vocab = vocabularies.sentencepiece_vocabulary(
      str(root / "vocab" / "spm_unigram_300_s0.model"))
  docs = tasks.get_documents(name, "validation")
  assert docs.vocab_size == 300
  assert docs[0][-1] == 1
  assert vocab.decode(docs[0][:-1].tolist()) == books["validation"]["v"]


def test_arxiv_local_and_non_utf8_file_skipped(tmp_path, caplog):
  root = write_books(tmp_path / "arxiv", {
      "train": {"p1": "We prove $x^2 \\geq 0$.\n"}, "validation": {},
      "test": {}})
  (root / "train" / "p2.txt").write_bytes(b"Caf\xe9 latin-1")
  name = tasks.register_arxiv_local(str(root))
  assert name == "arxiv_local_bytes"
  with caplog.at_level(logging.WARNING):
    docs = tasks.get_documents(name, "train", cache_dir=None)
  assert docs.names == ["p1"] and "p2.txt" in caplog.text
  with pytest.raises(ValueError, match="'validation' is empty"):
    tasks.get_documents(name, "validation", cache_dir=None)


def test_github_local_one_document_per_repository(tmp_path):
  root = tmp_path / "code"
  for split in ("train", "validation", "test"):
    repo = root / split / f"repo_{split}"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main.py").write_text("print('hello')\n")
    (repo / "README.md").write_text("# readme\n")
    (repo / "data.bin").write_bytes(b"\x00\x01\x02")
  name = tasks.register_github_local(str(root), extensions=(".py", ".md"))
  assert name == "github_local_bytes"
  docs = tasks.get_documents(name, "train")
  expected = code_repos.read_repository(str(root / "train" / "repo_train"),
                                        extensions=(".py", ".md"))
  assert expected == ("<<< README.md >>>\n# readme\n"
                      "<<< src/main.py >>>\nprint('hello')\n")
  assert docs.names == ["repo_train"]
  np.testing.assert_array_equal(docs[0], byte_ids(expected))
  # Other filters make other documents, never a stale cached one.
  tasks.register_github_local(str(root), extensions=(".py",))
  np.testing.assert_array_equal(
      tasks.get_documents(name, "train")[0],
      byte_ids("<<< src/main.py >>>\nprint('hello')\n"))


def test_missing_directory_and_uncovered_vocabulary(tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare_data.sh"):
    tasks.register_pg19_local(str(tmp_path / "absent"))
  # A foreign model without byte fallback, trained on ASCII only, cannot
  # represent the Greek text of this corpus.
  model = tmp_path / "ascii"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["abc def ghi jkl mno pqr stu vwx yz"] * 50),
      model_prefix=str(model), vocab_size=30, character_coverage=1.0,
      minloglevel=2)
  root = write_books(tmp_path / "greek", {
      "train": {"g": "\u03b1\u03b2\u03b3 \u03b4\u03b5\u03b6\n"},
      "validation": {}, "test": {}})
  name = tasks.register_pg19_local(str(root), vocabulary=str(model) + ".model")
  assert name == "pg19_local_spm_ascii"
  with pytest.raises(vocabularies.VocabularyCoverageError,
                     match="does not cover split 'train'"):
    tasks.get_documents(name, "train")
  with pytest.raises(ValueError, match="Unknown vocabulary"):
    tasks.register_pg19_local(str(root), vocabulary="words")


@pytest.mark.parametrize("register", [tasks.register_pg19_tfds,
                                      tasks.register_arxiv_tfds])
def test_tfds_tasks_with_mocked_tfds(register, tmp_path):
  # tfds's mock generates examples from the feature spec: the seqio task,
  # rekeying and tokenisation run exactly as with the real download.
  name = register(tfds_data_dir=str(tmp_path))
  assert name in ("pg19_bytes", "arxiv_bytes")
  with tfds.testing.mock_data(num_examples=3,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    docs = tasks.get_documents(name, "test", cache_dir=None)
  assert len(docs) == 3
  for i in range(3):
    assert docs[i][-1] == 1 and docs.num_bytes[i] == len(docs[i]) - 1
  with pytest.raises(ValueError, match="existing SentencePiece"):
    register(vocabulary="spm")


def test_documents_through_the_batcher_rebuild_the_text(tmp_path):
  root = write_books(tmp_path / "pg19")
  docs = tasks.get_documents(tasks.register_pg19_local(str(root)), "train")
  vocab = vocabularies.byte_vocabulary()
  rows = {}
  for b in batching.eval_batcher(docs, batch_size=2, segment_length=16):
    for r in range(2):
      n = int(b["loss_mask"][r].sum())
      if n:
        rows.setdefault(int(b["doc_id"][r]), []).extend(
            b["inputs"][r, :n].tolist())
  texts = list(BOOKS["train"].values())
  # Inputs hold every token but the final EOS, which is only a target.
  assert [vocab.decode(rows[i]) for i in range(2)] == texts


def test_pipeline_streams_by_task_name(tmp_path):
  from brt.data import pipeline
  root = write_books(tmp_path / "pg19")
  name = tasks.register_pg19_local(str(root))
  train = pipeline.train_batches(name, batch_size=2, segment_length=8,
                                 shard_index=1, num_shards=2)
  b = next(train)
  assert b["inputs"].shape == (1, 8) and b["start_of_sequence"].all()
  ev = list(pipeline.eval_batches(name, batch_size=1, segment_length=64))
  # The one validation book, 45 bytes + EOS: 45 targets in one segment.
  assert len(ev) == 1 and ev[0]["loss_mask"].sum() == 45
