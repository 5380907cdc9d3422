"""Vocabularies: UTF-8 bytes, or SentencePiece trained on the training split.

The SentencePiece model is trained so that decoding gives back exactly the
text that was encoded, which code and bits-per-byte both need: no Unicode
normalisation, whitespace kept as is (indentation is syntax in Python), a
newline piece, and byte fallback so no character is ever unknown. It is
trained once, single-threaded with a fixed seed (the same corpus gives the
same model file, byte for byte), and cached beside the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import seqio
import sentencepiece as spm

log = logging.getLogger(__name__)

# seqio's conventions, shared with ByteVocabulary: 0 pads, 1 ends a sequence.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_MAX_LINE_CHARS = 4096  # at most 16 KiB of UTF-8, the trainer's limit below


class VocabularyCoverageError(ValueError):
  """The data has characters the vocabulary cannot represent."""


def byte_vocabulary() -> seqio.ByteVocabulary:
  return seqio.ByteVocabulary()


def _training_lines(texts: Iterable[str], max_bytes: Optional[int]
                    ) -> Iterator[str]:
  # SentencePiece trains on "sentences"; lines are the natural unit of both
  # books and code. Reading stops after max_bytes so that a 10 GB split costs
  # minutes, not hours; documents come in a fixed order, so this is
  # reproducible.
  # The trainer drops sentences longer than max_sentence_length, so long
  # lines (a paragraph per line, minified code) are cut into pieces.
  seen = 0
  for text in texts:
    for line in text.split("\n"):
      for i in range(0, len(line), _MAX_LINE_CHARS):
        yield line[i:i + _MAX_LINE_CHARS]
      seen += len(line) + 1
      if max_bytes is not None and seen >= max_bytes:
        return


def train_sentencepiece(texts: Iterable[str], model_path: str,
                        vocab_size: int, *, seed: int = 0,
                        model_type: str = "unigram",
                        max_training_bytes: Optional[int] = 200 << 20,
                        max_sentences: int = 2_000_000) -> str:
  """Trains a lossless SentencePiece model on `texts`; writes `model_path`."""
  if vocab_size < 300:
    # Byte fallback alone takes 256 pieces.
    raise ValueError(f"SentencePiece vocab_size must be at least 300 (256 "
                     f"byte pieces plus specials), got {vocab_size}.")
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    _train(texts, model, vocab_size, model_type, max_training_bytes,
           max_sentences)
  except RuntimeError as e:
    if "Vocabulary size too high" in str(e):
      raise ValueError(
          f"The training text is too small for a {vocab_size}-piece "
          f"SentencePiece model ({str(e).split('] ')[-1]}). Lower vocab_size "
          "or use the byte vocabulary.") from e
    raise
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  tmp = f"{model_path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, model_path)  # concurrent trainers write the same bytes
  return model_path


def _train(texts, model, vocab_size, model_type, max_training_bytes,
           max_sentences):
  spm.SentencePieceTrainer.train(
      sentence_iterator=_training_lines(texts, max_training_bytes),
      model_writer=model, vocab_size=vocab_size, model_type=model_type,
      character_coverage=1.0, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True,
      split_digits=True, user_defined_symbols=["\n"],
      max_sentence_length=4 * _MAX_LINE_CHARS,
      input_sentence_size=max_sentences, shuffle_input_sentence=True,
      # One thread: multi-threaded training is not bit-for-bit reproducible.
      num_threads=1, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      minloglevel=2)


def sentencepiece_vocabulary(model_path: str) -> seqio.SentencePieceVocabulary:
  """An existing `.model` file (ours, or e.g. T5's 32k model)."""
  if not os.path.isfile(model_path):
    raise FileNotFoundError(f"SentencePiece model {model_path!r} not found.")
  return seqio.SentencePieceVocabulary(model_path)


def split_fingerprint(directory: str) -> str:
  """A cheap hash of a directory tree's file names and sizes.

  Stored beside a cached model so that a changed training split is noticed
  without re-reading gigabytes of text.
  """
  h = hashlib.sha256()
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(f"{os.path.relpath(path, directory)}\0"
               f"{os.path.getsize(path)}\n".encode())
  return h.hexdigest()[:16]


def cached_sentencepiece(cache_dir: str, vocab_size: int,
                         texts_fn: Callable[[], Iterable[str]], *,
                         seed: int = 0, model_type: str = "unigram",
                         fingerprint: str = "",
                         max_training_bytes: Optional[int] = 200 << 20
                         ) -> seqio.SentencePieceVocabulary:
  """The cached model for these settings, training it first if needed.

  Args:
    cache_dir: where `spm_<type>_<size>_s<seed>.model` lives (beside the data).
    texts_fn: called only when training, returns the training documents.
    fingerprint: identifies the training data; a cached model trained on
      other data is retrained rather than silently reused.
  """
  stem = os.path.join(cache_dir, f"spm_{model_type}_{vocab_size}_s{seed}")
  model_path, info_path = stem + ".model", stem + ".json"
  info = {"vocab_size": vocab_size, "seed": seed, "model_type": model_type,
          "fingerprint": fingerprint, "max_training_bytes": max_training_bytes}
  if os.path.isfile(model_path) and os.path.isfile(info_path):
    with open(info_path) as f:
      if json.load(f) == info:
        return sentencepiece_vocabulary(model_path)
    log.warning("Retraining %s: its training data or settings changed.",
                model_path)
  log.info("Training a %d-piece SentencePiece model into %s", vocab_size,
           model_path)
  train_sentencepiece(texts_fn(), model_path, vocab_size, seed=seed,
                      model_type=model_type,
                      max_training_bytes=max_training_bytes)
  with open(info_path + ".tmp", "w") as f:
    json.dump(info, f)
  os.replace(info_path + ".tmp", info_path)
  return sentencepiece_vocabulary(model_path)


def check_coverage(tokens: np.ndarray, vocabulary: seqio.Vocabulary,
                   max_unk_fraction: float = 1e-3, what: str = "the data"
                   ) -> float:
  """Raises VocabularyCoverageError if too many tokens are unknown.

  Returns the fraction of unknown tokens. With byte fallback (our models,
  bytes) it is zero; a foreign model may lack the data's characters.
  """
  unk = vocabulary.unk_id
  if unk is None or len(tokens) == 0:
    return 0.0
  fraction = float(np.count_nonzero(tokens == unk)) / len(tokens)
  if fraction > max_unk_fraction:
    raise VocabularyCoverageError(
        f"The vocabulary does not cover {what}: {fraction:.2%} of tokens are "
        f"unknown (id {unk}), above max_unk_fraction={max_unk_fraction}. Use "
        "the byte vocabulary or a SentencePiece model trained on this data.")
  return fraction


def describe(vocabulary: seqio.Vocabulary) -> str:
  """A short stable name for a vocabulary, used to key token caches."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return "bytes"
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    with open(vocabulary.sentencepiece_model_file, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"spm{vocabulary.vocab_size}-{digest}"
  raise TypeError(f"Unsupported vocabulary {type(vocabulary).__name__}.")
