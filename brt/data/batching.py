"""Long-document batching, as the Block-Recurrent Transformer paper trains.

Each of the B rows of a batch reads one document in consecutive segments of
L tokens, so the model's carry (cache and recurrent state) flows from one
segment of a document to the next. When a row's document ends, the rest of
that segment is padding (loss_mask 0) and the row starts the next document in
the following segment with `start_of_sequence` True. Resets therefore only
happen at segment starts, which is the only place the model can reset.

Documents go to rows from one shared queue, in order of which row frees up
first (ties by row index). This keeps every row busy until the queue is
empty, so an epoch ends at about the same step in all rows, and it is
deterministic: which row gets which document depends only on document
lengths, which every host knows. Each host therefore simulates the queue for
all B rows (a few integer operations per row per step) but reads tokens only
for its own rows, and all hosts share one small position (`get_state`).
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from brt.data.documents import DocumentSet

STATE_VERSION = 1


class LongDocBatcher:
  """Iterator of (B/num_shards, L) numpy batches of consecutive segments.

  Each batch is a dict:
    inputs            (b, L) int32  tokens t[o : o+L] of the row's document.
    targets           (b, L) int32  t[o+1 : o+L+1], the next token of each.
    loss_mask         (b, L) float32, 1 where a target exists, 0 on padding.
    start_of_sequence (b,) bool     the row starts a new document here.
    end_of_document   (b,) bool     the document's last target is in here.
    doc_id            (b,) int32    index of the document, -1 for an empty row.
    doc_offset        (b,) int32    o, the position of inputs[:, 0] in the doc.
    doc_tokens, doc_bytes, doc_words (b,) int32: the document's number of
      targets (its length - 1), UTF-8 bytes and whitespace words, for metrics.
    answer_mask       (b, L) float32, 1 where the target is an answer token
      (only for documents with answer masks: synthetic tasks).

  Training (`num_epochs=None`) never ends: when the queue runs out, the next
  epoch's order is drawn with (seed, epoch). With `num_epochs=k` rows that
  find the queue empty are fully masked (doc_id -1) and iteration stops once
  every row is empty. `eval_batcher` is the single-pass, in-order case.

  Documents with fewer than two tokens have no (input, target) pair and are
  left out of the queue (`num_skipped_documents`).
  """

  def __init__(self, documents: DocumentSet, batch_size: int,
               segment_length: int, *, seed: int = 0, shuffle: bool = True,
               num_epochs: Optional[int] = None, shard_index: int = 0,
               num_shards: int = 1, pad_id: int = 0):
    if batch_size <= 0 or segment_length <= 0:
      raise ValueError("batch_size and segment_length must be positive, got "
                       f"{batch_size} and {segment_length}.")
    if num_shards <= 0 or batch_size % num_shards:
      raise ValueError(f"batch_size {batch_size} must split evenly over "
                       f"num_shards={num_shards} hosts.")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} not in [0, {num_shards}).")
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(
          f"num_epochs must be positive or None, got {num_epochs}.")
    self.documents = documents
    self.batch_size = batch_size
    self.segment_length = segment_length
    self.seed = seed
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.shard_index = shard_index
    self.num_shards = num_shards
    self.pad_id = pad_id
    self.rows_per_shard = batch_size // num_shards

    self._lengths = documents.lengths
    self._offsets = documents.offsets
    self._eligible = np.flatnonzero(self._lengths >= 2)
    self.num_skipped_documents = len(documents) - len(self._eligible)
    if len(self._eligible) == 0:
      raise ValueError(
          f"None of the {len(documents)} documents has two or more tokens, "
          "so there is nothing to train or evaluate on: the split is empty.")
    self._order_cache: tuple[int, np.ndarray] = (-1, self._eligible)
    self.set_state(self._initial_state())

  # --- position --------------------------------------------------------------

  def _config(self) -> dict:
    return {"batch_size": self.batch_size,
            "segment_length": self.segment_length, "seed": self.seed,
            "shuffle": self.shuffle, "num_documents": len(self.documents)}

  def _initial_state(self) -> dict:
    return {"version": STATE_VERSION, "config": self._config(), "step": 0,
            "epoch": 0, "cursor": 0,
            "rows": [[-1, 0] for _ in range(self.batch_size)]}

  def get_state(self) -> dict:
    """The position between batches: JSON-serialisable and O(batch_size).

    It is global (all rows, not only this host's), so every host saves the
    same value, and a run may resume with another number of hosts.
    """
    return {"version": STATE_VERSION, "config": self._config(),
            "step": self._step, "epoch": self._epoch, "cursor": self._cursor,
            "rows": copy.deepcopy(self._rows)}

  def set_state(self, state: dict) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"Data iterator state version {state.get('version')} "
                       f"is not {STATE_VERSION}.")
    if state["config"] != self._config():
      raise ValueError(
          "The saved data iterator position belongs to another pipeline: "
          f"saved {state['config']}, this one is {self._config()}. Restore "
          "with the same batch size, segment length, seed and data.")
    if len(state["rows"]) != self.batch_size:
      raise ValueError("Saved state has the wrong number of rows.")
    self._step = int(state["step"])
    self._epoch = int(state["epoch"])
    self._cursor = int(state["cursor"])
    self._rows = [[int(d), int(o)] for d, o in state["rows"]]

  # --- document queue ---------------------------------------------------------

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_cache[0] != epoch:
      order = self._eligible
      if self.shuffle:
        rng = np.random.default_rng([self.seed, epoch])
        order = order[rng.permutation(len(order))]
      self._order_cache = (epoch, order)
    return self._order_cache[1]

  def _next_document(self) -> int:
    if self._cursor >= len(self._eligible):
      if self.num_epochs is not None and self._epoch + 1 >= self.num_epochs:
        return -1
      self._epoch += 1
      self._cursor = 0
    doc = int(self._order(self._epoch)[self._cursor])
    self._cursor += 1
    return doc

  # --- iteration --------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    L = self.segment_length
    lengths = self._lengths
    rows = self._rows
    start = np.zeros(self.batch_size, bool)
    for r, (doc, off) in enumerate(rows):
      if doc < 0 or off >= lengths[doc] - 1:
        doc = self._next_document()
        rows[r] = [doc, 0]
        start[r] = doc >= 0
    if all(doc < 0 for doc, _ in rows):
      raise StopIteration

    b = self.rows_per_shard
    first = self.shard_index * b
    inputs = np.full((b, L), self.pad_id, np.int32)
    targets = np.full((b, L), self.pad_id, np.int32)
    loss_mask = np.zeros((b, L), np.float32)
    doc_id = np.full(b, -1, np.int32)
    doc_offset = np.zeros(b, np.int32)
    end = np.zeros(b, bool)
    answers = self.documents.answer_mask
    answer_mask = None if answers is None else np.zeros((b, L), np.float32)
    for i in range(b):
      doc, off = rows[first + i]
      if doc < 0:
        continue
      n = min(L, int(lengths[doc]) - 1 - off)
      begin = int(self._offsets[doc]) + off
      seg = self.documents.tokens[begin:begin + n + 1]
      inputs[i, :n] = seg[:n]
      targets[i, :n] = seg[1:]
      loss_mask[i, :n] = 1.0
      if answer_mask is not None:  # Aligned with the targets.
        answer_mask[i, :n] = answers[begin + 1:begin + n + 1]
      doc_id[i] = doc
      doc_offset[i] = off
      end[i] = off + L >= lengths[doc] - 1

    ids = np.maximum(doc_id, 0)
    valid = doc_id >= 0
    batch = {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": loss_mask,
        "start_of_sequence": start[first:first + b].copy(),
        "end_of_document": end,
        "doc_id": doc_id,
        "doc_offset": doc_offset,
        "doc_tokens": np.where(valid, lengths[ids] - 1, 0).astype(np.int32),
        "doc_bytes": np.where(valid, self.documents.num_bytes[ids],
                              0).astype(np.int32),
        "doc_words": np.where(valid, self.documents.num_words[ids],
                              0).astype(np.int32),
    }
    if answer_mask is not None:
      batch["answer_mask"] = answer_mask
    for row in rows:
      if row[0] >= 0:
        row[1] += L
    self._step += 1
    return batch


def eval_batcher(documents: DocumentSet, batch_size: int, segment_length: int,
                 *, shard_index: int = 0, num_shards: int = 1,
                 pad_id: int = 0) -> LongDocBatcher:
  """Whole documents of a split, each once, in order; ends when all are read."""
  return LongDocBatcher(documents, batch_size, segment_length, shuffle=False,
                        num_epochs=1, shard_index=shard_index,
                        num_shards=num_shards, pad_id=pad_id)
