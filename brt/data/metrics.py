"""Language-model metrics over whole documents.

Bits per token depend on the vocabulary; bits per UTF-8 byte and word-level
perplexity (PG19's convention: words are whitespace-separated) do not, so
models with different vocabularies can be compared on the same text.
"""
import dataclasses
import math
from typing import Mapping

import numpy as np

LN2 = math.log(2.0)


def count_utf8_bytes(text: str) -> int:
  return len(text.encode("utf-8"))


def count_words(text: str) -> int:
  # str.split() with no argument splits on any run of Unicode whitespace,
  # which is how PG19 counts words for its word-level perplexity.
  return len(text.split())


def compute_metrics(loss_nats: float, num_tokens: int, num_bytes: int,
                    num_words: int) -> dict:
  """Metrics from a summed loss (natural log) and the counts it covers.

  Returns NaN for a metric whose count is zero rather than raising, so a
  metric writer can still log the others.
  """
  def ratio(n):
    return loss_nats / n if n > 0 else float("nan")
  return {
      "loss": ratio(num_tokens),
      "bits_per_token": ratio(num_tokens) / LN2,
      "bits_per_byte": ratio(num_bytes) / LN2,
      "word_perplexity": (math.exp(min(ratio(num_words), 700.0))
                          if num_words > 0 else float("nan")),
      "num_tokens": int(num_tokens),
      "num_bytes": int(num_bytes),
      "num_words": int(num_words),
  }


@dataclasses.dataclass
class _DocTotals:
  loss_nats: float = 0.0
  tokens: int = 0
  bytes: int = 0
  words: int = 0


class EvalAccumulator:
  """Sums an eval stream's per-token losses by document.

  Batches come from `LongDocBatcher` (fields `loss_mask`, `doc_id`,
  `doc_bytes`, `doc_words`); a document spans many batches and rows, so its
  byte and word counts are taken once per document id, not once per segment.
  """

  def __init__(self):
    self.docs: dict[int, _DocTotals] = {}

  def update(self, batch: Mapping[str, np.ndarray], token_loss) -> None:
    """token_loss: (B, L) per-token loss in nats (any value on padding)."""
    mask = np.asarray(batch["loss_mask"], np.float64)
    loss = np.where(mask > 0, np.asarray(token_loss, np.float64), 0.0)
    for r, doc in enumerate(np.asarray(batch["doc_id"])):
      if doc < 0:
        continue
      totals = self.docs.setdefault(int(doc), _DocTotals())
      totals.loss_nats += float(loss[r].sum())
      totals.tokens += int(mask[r].sum())
      totals.bytes = int(batch["doc_bytes"][r])
      totals.words = int(batch["doc_words"][r])

  def totals(self) -> np.ndarray:
    """[loss_nats, tokens, bytes, words, documents]: with host-sharded eval
    each host holds other documents, so sum these over hosts and pass them
    to `metrics_from_totals`."""
    t = self.docs.values()
    return np.array([sum(d.loss_nats for d in t), sum(d.tokens for d in t),
                     sum(d.bytes for d in t), sum(d.words for d in t),
                     len(self.docs)], np.float64)

  def result(self) -> dict:
    return metrics_from_totals(self.totals())


def metrics_from_totals(totals) -> dict:
  loss, tokens, n_bytes, words, docs = (float(x) for x in totals)
  out = compute_metrics(loss, int(tokens), int(n_bytes), int(words))
  out["num_documents"] = int(docs)
  return out
