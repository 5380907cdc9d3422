"""Synthetic long-range tasks: copy, associative retrieval, passkey in a book.

Each document is one episode: some information, then `distance` tokens
later its use, whose tokens (the "answer") are the only ones scored for
accuracy. Documents are generated on the fly, deterministically from
(seed, split, index), so every run and every host sees the same data and the
evaluation split ("validation", "test") is held out: other seeds, and for the
passkey other books. Text is ASCII except for book text, and the tasks use
the byte vocabulary, so an answer's byte span is its token span.

`distance` counts tokens from the last token of the information to the first
answer token; every answer is at least that far from the information.

    gen = RetrievalConfig(distance=80)
    text, spans = generate(gen, "train", 0)   # spans: [(start, end)] in bytes
"""

from __future__ import annotations

import dataclasses
import string
from typing import Optional, Union

import numpy as np

from brt.data import local_files

Span = tuple[int, int]
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
FILLER = "."


@dataclasses.dataclass(frozen=True)
class CopyConfig:
  """`<string><filler>=<string>\\n`: copy a random string after a gap."""
  distance: int = 80
  length: int = 6  # Characters to copy.
  alphabet: str = string.ascii_lowercase[:16]
  max_lead: int = 8  # Random filler before the string, 0..max_lead.
  num_documents: int = 2048  # Per split (validation/test: num_eval_documents).
  num_eval_documents: int = 256
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
  """`<k1><v1><k2><v2>...<filler>?<kq><vq>...\\n`: key -> value pairs, then
  queries of every key (shuffled), each answered by its value."""
  distance: int = 80
  num_pairs: int = 4
  keys: str = string.ascii_lowercase[:16]
  values: str = string.digits
  max_lead: int = 8
  num_documents: int = 2048
  num_eval_documents: int = 256
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class PasskeyConfig:
  """Book text with "The pass key is NNNNN." hidden in it and, `distance`
  tokens later, "What is the pass key? The pass key is NNNNN." (answer: the
  digits of the second one). Training documents come from the corpus's
  train split, evaluation documents from the split evaluated."""
  data_dir: str = "data/gutenberg_plays"
  distance: int = 80
  digits: int = 5
  max_lead: int = 16  # Book text before the key, 0..max_lead bytes.
  num_documents: int = 2048
  num_eval_documents: int = 256
  seed: int = 0


TaskConfig = Union[CopyConfig, RetrievalConfig, PasskeyConfig]

_QUESTION = " What is the pass key? The pass key is "


def _rng(cfg: TaskConfig, split: str, index: int) -> np.random.Generator:
  if split not in _SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}: use one of {tuple(_SPLIT_IDS)}.")
  return np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])


def _choice(rng, alphabet: str, n: int, replace: bool = True) -> str:
  return "".join(alphabet[i] for i in rng.choice(len(alphabet), n,
                                                  replace=replace))


def _filler(n: int, what: str) -> str:
  if n < 0:
    raise ValueError(f"distance is too short for the {what}; raise it by "
                     f"at least {-n}.")
  return FILLER * n


def num_documents(cfg: TaskConfig, split: str) -> int:
  return cfg.num_documents if split == "train" else cfg.num_eval_documents


def generate(cfg: TaskConfig, split: str, index: int
             ) -> tuple[str, list[Span]]:
  """Document `index` of a split: its text and its answers' byte spans."""
  rng = _rng(cfg, split, index)
  if isinstance(cfg, CopyConfig):
    return _copy(cfg, rng)
  if isinstance(cfg, RetrievalConfig):
    return _retrieval(cfg, rng)
  if isinstance(cfg, PasskeyConfig):
    return _passkey(cfg, rng, split)
  raise TypeError(f"Not a synthetic task config: {cfg!r}")


def _copy(cfg: CopyConfig, rng) -> tuple[str, list[Span]]:
  lead = FILLER * int(rng.integers(0, cfg.max_lead + 1))
  s = _choice(rng, cfg.alphabet, cfg.length)
  # Last character of s at p; filler, "=" and the answer at p + distance.
  head = lead + s + _filler(cfg.distance - 2, "request") + "="
  return head + s + "\n", [(len(head), len(head) + cfg.length)]


def _retrieval(cfg: RetrievalConfig, rng) -> tuple[str, list[Span]]:
  if cfg.num_pairs > len(cfg.keys):
    raise ValueError(f"num_pairs={cfg.num_pairs} exceeds the "
                     f"{len(cfg.keys)} distinct keys; add keys or use fewer.")
  lead = FILLER * int(rng.integers(0, cfg.max_lead + 1))
  keys = _choice(rng, cfg.keys, cfg.num_pairs, replace=False)
  values = _choice(rng, cfg.values, cfg.num_pairs)
  text = lead + "".join(k + v for k, v in zip(keys, values))
  # Last value at p; filler, "?k", and the first answer at p + distance.
  text += _filler(cfg.distance - 3, "first query")
  spans = []
  for i in rng.permutation(cfg.num_pairs):
    text += "?" + keys[i]
    spans.append((len(text), len(text) + 1))
    text += values[i]
  return text + "\n", spans


_BOOKS: dict[tuple[str, str], str] = {}


def _book_text(data_dir: str, split: str) -> str:
  """The split's books, concatenated with newlines (cached per process)."""
  key = (data_dir, split)
  if key not in _BOOKS:
    texts = [text for _, text in local_files.read_text_split(data_dir, split)]
    # ASCII only: then bytes and characters line up, and a spliced number is
    # always its own tokens.
    _BOOKS[key] = "\n".join(texts).encode("ascii", "ignore").decode("ascii")
  return _BOOKS[key]


def _passkey(cfg: PasskeyConfig, rng, split: str) -> tuple[str, list[Span]]:
  book = _book_text(cfg.data_dir, split)
  key = _choice(rng, string.digits, cfg.digits)
  tail = ". Remember it."
  lead_len = int(rng.integers(0, cfg.max_lead + 1))
  # The key's last digit at p; tail, book text, question, answer at
  # p + distance.
  gap = cfg.distance - 1 - len(tail) - len(_QUESTION)
  if gap < 0:
    raise ValueError(f"distance={cfg.distance} is too short for the passkey "
                     f"question; use at least {cfg.distance - gap}.")
  need = lead_len + gap
  if len(book) < need + 1:
    raise ValueError(f"The {split} books of {cfg.data_dir} hold "
                     f"{len(book)} characters, fewer than the {need} needed.")
  start = int(rng.integers(0, len(book) - need))
  lead, text = book[start:start + lead_len], book[start + lead_len:start + need]
  head = lead + " The pass key is " + key + tail + text + _QUESTION
  return head + key + ".\n", [(len(head), len(head) + cfg.digits)]


def answer_mask(cfg: TaskConfig, split: str, index: int,
                num_tokens: int) -> np.ndarray:
  """(num_tokens,) uint8, 1 on the answer tokens of document `index`.

  Byte vocabulary: token i is byte i (EOS appended after the last byte).
  """
  text, spans = generate(cfg, split, index)
  if num_tokens not in (len(text.encode()), len(text.encode()) + 1):
    raise ValueError(
        f"Document {index} has {num_tokens} tokens for {len(text.encode())} "
        "bytes: synthetic tasks need the byte vocabulary.")
  mask = np.zeros(num_tokens, np.uint8)
  for start, end in spans:
    mask[start:end] = 1
  return mask


def data_dir_of(cfg: TaskConfig) -> Optional[str]:
  return getattr(cfg, "data_dir", None)
