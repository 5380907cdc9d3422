"""Tokenized documents of one split, held as one flat token array.

A split of PG19 is ~2e9 tokens, so documents are not kept as Python lists:
all tokens sit in one array (uint16 when the vocabulary allows, so half the
memory of int32) with an offsets array, and a saved set is memory-mapped on
load so that a host only pages in the documents its rows read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterable, Optional, Sequence

import numpy as np

from brt.data import metrics

FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


class DocumentSet:
  """Documents as token arrays, with their UTF-8 byte and word counts.

  Attributes:
    tokens: all documents' tokens concatenated, 1-D.
    offsets: int64 (N + 1,); document i is tokens[offsets[i]:offsets[i+1]].
    num_bytes, num_words: int64 (N,), counts of the document's text, carried
      into eval batches for bits per byte and word-level perplexity.
    names: N strings naming each document (file or repository).
    vocab_size: tokens are in [0, vocab_size).
    answer_mask: None, or uint8 like `tokens`: 1 on the tokens a synthetic
      task scores for accuracy (see brt/data/synthetic.py).
  """

  answer_mask = None

  def __init__(self, tokens: np.ndarray, offsets: np.ndarray,
               num_bytes: np.ndarray, num_words: np.ndarray,
               names: Sequence[str], vocab_size: int):
    self.tokens = tokens
    self.offsets = np.asarray(offsets, np.int64)
    self.num_bytes = np.asarray(num_bytes, np.int64)
    self.num_words = np.asarray(num_words, np.int64)
    self.names = list(names)
    self.vocab_size = int(vocab_size)
    n = len(self.names)
    if not (self.offsets.shape == (n + 1,) and self.num_bytes.shape == (n,)
            and self.num_words.shape == (n,)):
      raise ValueError("DocumentSet: offsets must have one more entry than "
                       "names, and num_bytes/num_words one per document.")
    if self.offsets[0] != 0 or self.offsets[-1] != len(tokens) or np.any(
        np.diff(self.offsets) < 0):
      raise ValueError("DocumentSet: offsets must rise from 0 to len(tokens).")

  def __len__(self) -> int:
    return len(self.names)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.tokens[self.offsets[i]:self.offsets[i + 1]]

  def validate(self) -> None:
    """Raises if a token lies outside [0, vocab_size)."""
    if len(self.tokens) == 0:
      return
    hi = int(self.tokens.max())
    lo = int(self.tokens.min())
    if lo < 0 or hi >= self.vocab_size:
      raise ValueError(
          f"Token ids span [{lo}, {hi}] but the vocabulary has "
          f"{self.vocab_size} entries: the documents were tokenized with "
          "another vocabulary. Delete the cached tokens or fix vocab_size.")

  @classmethod
  def from_token_lists(cls, docs: Iterable[Sequence[int]], vocab_size: int,
                       names: Optional[Sequence[str]] = None,
                       texts: Optional[Sequence[str]] = None,
                       num_bytes: Optional[Sequence[int]] = None,
                       num_words: Optional[Sequence[int]] = None
                       ) -> "DocumentSet":
    """Builds a set from per-document token sequences.

    Byte and word counts come from `texts` when given, else from the explicit
    `num_bytes` / `num_words`, else they are zero.
    """
    arrays = [np.asarray(d, dtype=np.int64) for d in docs]
    n = len(arrays)
    if texts is not None:
      num_bytes = [metrics.count_utf8_bytes(t) for t in texts]
      num_words = [metrics.count_words(t) for t in texts]
    num_bytes = np.zeros(n, np.int64) if num_bytes is None else num_bytes
    num_words = np.zeros(n, np.int64) if num_words is None else num_words
    names = [str(i) for i in range(n)] if names is None else names
    lengths = np.array([len(a) for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = (np.concatenate(arrays) if arrays else np.zeros(0, np.int64))
    # Validate before the cast to a narrow dtype could wrap a bad id.
    cls(flat, offsets, num_bytes, num_words, names, vocab_size).validate()
    return cls(flat.astype(token_dtype(vocab_size)), offsets, num_bytes,
               num_words, names, vocab_size)

  def save(self, directory: str) -> None:
    """Writes the set to `directory` atomically (a reader never sees half)."""
    with DocumentSetWriter(directory, self.vocab_size) as writer:
      for i in range(len(self)):
        writer.add(self[i], self.names[i], self.num_bytes[i],
                   self.num_words[i])

  @classmethod
  def load(cls, directory: str, mmap: bool = True) -> "DocumentSet":
    with open(os.path.join(directory, "meta.json")) as f:
      meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{directory}: saved with format "
                       f"{meta.get('format_version')}, expected "
                       f"{FORMAT_VERSION}; delete it to rebuild.")
    dtype = np.dtype(meta["dtype"])
    path = os.path.join(directory, "tokens.bin")
    if mmap and os.path.getsize(path) > 0:  # an empty file cannot be mapped
      tokens = np.memmap(path, dtype=dtype, mode="r")
    else:
      tokens = np.fromfile(path, dtype=dtype)
    index = np.load(os.path.join(directory, "index.npz"))
    return cls(tokens, index["offsets"], index["num_bytes"],
               index["num_words"], meta["names"], meta["vocab_size"])

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "meta.json"))


class DocumentSetWriter:
  """Streams documents to disk, so a split larger than memory can be saved.

  Use as a context manager; the set appears at `directory` only when the
  block exits without error.
  """

  def __init__(self, directory: str, vocab_size: int):
    self.directory = directory
    self.vocab_size = int(vocab_size)
    self.dtype = token_dtype(vocab_size)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    self._tmp = tempfile.mkdtemp(prefix=".tmp-docs-", dir=parent)
    self._tokens = open(os.path.join(self._tmp, "tokens.bin"), "wb")
    self._offsets = [0]
    self._bytes: list[int] = []
    self._words: list[int] = []
    self._names: list[str] = []

  def add(self, tokens, name: str, num_bytes: int, num_words: int) -> None:
    tokens = np.asarray(tokens)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
      raise ValueError(
          f"Document {name!r} has token ids in [{tokens.min()}, "
          f"{tokens.max()}] but the vocabulary has {self.vocab_size} entries.")
    self._tokens.write(tokens.astype(self.dtype).tobytes())
    self._offsets.append(self._offsets[-1] + len(tokens))
    self._bytes.append(int(num_bytes))
    self._words.append(int(num_words))
    self._names.append(str(name))

  def __enter__(self) -> "DocumentSetWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self._tokens.close()
    if exc_type is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      return
    try:
      np.savez(os.path.join(self._tmp, "index.npz"),
               offsets=np.asarray(self._offsets, np.int64),
               num_bytes=np.asarray(self._bytes, np.int64),
               num_words=np.asarray(self._words, np.int64))
      with open(os.path.join(self._tmp, "meta.json"), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "dtype": self.dtype.str,
                   "vocab_size": self.vocab_size, "names": self._names}, f)
      if os.path.exists(self.directory):
        shutil.rmtree(self.directory)
      os.replace(self._tmp, self.directory)
    except BaseException:
      shutil.rmtree(self._tmp, ignore_errors=True)
      raise
