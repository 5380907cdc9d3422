import hashlib
import os

import numpy as np
import pytest

from brt.data import vocabularies

SAMPLES = [
    "Hello  world\n\n  indented\tTab caf\u00e9 \U0001F642 \r\n",
    "def f(x):\n    return x ** 2  # squares\n",
    "",
    "  leading and trailing  ",
    "\u4e2d\u6587 never seen in training",
]

def _words(seed, n):
  # Pseudo-words from syllables: enough distinct pieces for a small model.
  rng = np.random.default_rng(seed)
  syllables = ["ka", "lo", "mi", "ne", "su", "ra", "tel", "vin", "dor", "pe"]
  return " ".join("".join(rng.choice(syllables, rng.integers(1, 4)))
                  for _ in range(n))


TRAIN = [_words(0, 3000), _words(1, 3000),
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n" * 20,
    "import os\n\n\ndef main():\n    for i in range(10):\n"
    "        print(i, os.getcwd())\n" * 20,
]


def test_byte_vocabulary_round_trips():
  v = vocabularies.byte_vocabulary()
  assert v.vocab_size == 259
  for s in SAMPLES:
    ids = v.encode(s)
    assert len(ids) == len(s.encode("utf-8"))
    assert v.decode(ids) == s


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("spm") / "m.model")
  return vocabularies.train_sentencepiece(TRAIN, path, vocab_size=320, seed=0)


def test_sentencepiece_round_trips_and_is_reproducible(spm_model, tmp_path):
  v = vocabularies.sentencepiece_vocabulary(spm_model)
  assert v.vocab_size == 320
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  for s in SAMPLES:
    assert v.decode(v.encode(s)) == s
  # Pieces longer than a character were learned from the training text.
  assert len(v.encode(TRAIN[0])) < 0.6 * len(TRAIN[0])
  again = vocabularies.train_sentencepiece(TRAIN, str(tmp_path / "b.model"),
                                           vocab_size=320, seed=0)
  digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
  assert digest(again) == digest(spm_model)


def test_cached_sentencepiece_trains_once_and_retrains_on_new_data(tmp_path):
  calls = []
  def texts():
    calls.append(1)
    return TRAIN
  a = vocabularies.cached_sentencepiece(str(tmp_path), 320, texts,
                                        fingerprint="f1")
  b = vocabularies.cached_sentencepiece(str(tmp_path), 320, texts,
                                        fingerprint="f1")
  assert len(calls) == 1
  assert a.sentencepiece_model_file == b.sentencepiece_model_file
  assert (os.path.basename(a.sentencepiece_model_file)
          == "spm_unigram_320_s0.model")
  vocabularies.cached_sentencepiece(str(tmp_path), 320, texts,
                                    fingerprint="f2")
  assert len(calls) == 2


def test_split_fingerprint_changes_with_the_files(tmp_path):
  (tmp_path / "a.txt").write_text("x")
  f1 = vocabularies.split_fingerprint(str(tmp_path))
  assert f1 == vocabularies.split_fingerprint(str(tmp_path))
  (tmp_path / "b.txt").write_text("y")
  assert vocabularies.split_fingerprint(str(tmp_path)) != f1


def test_coverage_error_names_the_problem(spm_model):
  v = vocabularies.byte_vocabulary()
  assert vocabularies.check_coverage(np.array(v.encode("abc")), v) == 0.0
  tokens = np.array([5, 2, 2, 7])  # half unknown
  with pytest.raises(vocabularies.VocabularyCoverageError,
                     match="50.00% of tokens are unknown"):
    vocabularies.check_coverage(tokens, v)
  with pytest.raises(ValueError, match="too small for a 5000-piece"):
    vocabularies.train_sentencepiece(["tiny text"], "x.model",
                                     vocab_size=5000)
  with pytest.raises(ValueError, match="at least 300"):
    vocabularies.train_sentencepiece(TRAIN, "x.model", vocab_size=100)
  with pytest.raises(FileNotFoundError):
    vocabularies.sentencepiece_vocabulary("/nonexistent.model")
