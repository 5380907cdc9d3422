"""Whole-document evaluation at constant memory, and loss against position.

Documents stream through the model one segment per step, every batch row
reading its own document, with the carry passed along exactly as in
training; so a book of any length costs the memory of one segment. What is
kept grows only with the number of documents and of position bins:
per-document loss sums (bits/token, bits/byte, word perplexity) and the mean
loss in bins of `position_bin` tokens, which shows whether a model uses the
distant past (recurrence should pay off late in books).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from brt import partitioning
from brt.data.metrics import (EvalAccumulator, compute_metrics,
                              metrics_from_totals)
from brt.model import BlockRecurrentTransformer

_MODEL_FIELDS = ("inputs", "targets", "start_of_sequence")


def token_nll(logits, targets):
  """Per-token negative log-likelihood in nats, (B, L) float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def predicted_correctly(logits, targets):
  """(B, L) bool: the most likely token is the target (greedy decoding)."""
  return jnp.argmax(logits, axis=-1) == targets


def answer_accuracy(correct, answer_mask) -> tuple[float, float]:
  """(answer tokens predicted right, answer tokens): accuracy is scored on
  the answer tokens of synthetic tasks only (`answer_mask` 1); `correct`
  from `predicted_correctly`."""
  mask = np.asarray(answer_mask, np.float64) > 0
  return float(np.sum(np.asarray(correct)[mask])), float(np.sum(mask))


@dataclasses.dataclass
class EvalResult:
  metrics: dict  # bits_per_token, bits_per_byte, word_perplexity, counts.
  per_document: dict[int, dict]  # doc_id -> the same metrics for that doc.
  position_bin: int
  position_loss_sum: np.ndarray  # Summed loss of the tokens in each bin.
  position_count: np.ndarray  # Number of tokens in each bin.

  def to_json(self) -> dict:
    """A JSON-serialisable dict; `from_json` reads it back (for plots that
    compare runs evaluated at different times)."""
    return {"metrics": self.metrics,
            "per_document": {str(k): v for k, v in self.per_document.items()},
            "position_bin": self.position_bin,
            "position_loss_sum": self.position_loss_sum.tolist(),
            "position_count": self.position_count.tolist()}

  @classmethod
  def from_json(cls, data: Mapping) -> "EvalResult":
    if "position_count" not in data:
      raise ValueError("This evaluation file has no loss-by-position bins; "
                       "evaluate the checkpoint again with --mode=eval.")
    return cls(dict(data["metrics"]),
               {int(k): v for k, v in data["per_document"].items()},
               int(data["position_bin"]),
               np.asarray(data["position_loss_sum"], np.float64),
               np.asarray(data["position_count"], np.float64))

  def loss_by_position(self):
    """(bin start positions, mean loss in nats) for bins that have tokens."""
    keep = self.position_count > 0
    starts = np.arange(len(self.position_count)) * self.position_bin
    return starts[keep], self.position_loss_sum[keep] / self.position_count[keep]


class Evaluator:
  """Streams eval batches (brt.data: `eval_batches`) through a model.

  With a `mesh` (the trainer's), batches are this host's rows of a global
  batch sharded over its `data` axis, and the totals are summed over hosts.

  `withhold_state=True` is an ablation: every block starts from the learned
  initial state (RMT: the initial memory) while the cache of the previous
  block is kept, so the difference to a plain evaluation is what the model
  gets from its recurrent memory. The model resets the state at segment
  starts, so segments must be one block long.
  """

  def __init__(self, model: BlockRecurrentTransformer, mesh=None,
               withhold_state: bool = False):
    self.model = model
    self.mesh = mesh
    self.withhold_state = withhold_state

    @jax.jit
    def step(variables, inputs, targets, carry, start_of_sequence):
      reset_state = (jnp.ones(inputs.shape[:1], bool) if withhold_state
                     else None)
      logits, carry = model.apply(variables, inputs, carry,
                                  start_of_sequence=start_of_sequence,
                                  reset_state=reset_state)
      return (token_nll(logits, targets), predicted_correctly(logits, targets),
              carry)

    self._step = step

  def run(self, variables, batches: Iterable[Mapping[str, np.ndarray]], *,
          position_bin: int = 1024, max_batches: int | None = None) -> EvalResult:
    accumulator = EvalAccumulator()
    loss_sum = np.zeros(0)
    count = np.zeros(0)
    carry = None
    answers = np.zeros(2)  # Answer tokens right, answer tokens.
    width = self.model.config.block_width
    has_answers = False
    for i, batch in enumerate(batches):
      if max_batches is not None and i >= max_batches:
        break
      inputs = {k: batch[k] for k in _MODEL_FIELDS}
      if self.withhold_state and inputs["inputs"].shape[1] != width:
        raise ValueError(
            "Evaluating with the recurrent state withheld resets it at every "
            f"segment start, so segments must be one block ({width} tokens) "
            f"long, got {inputs['inputs'].shape[1]}; set "
            f"TrainConfig.eval_segment_length = {width}.")
      if self.mesh is not None:
        inputs = partitioning.put_batch(inputs, self.mesh)
      if carry is None:
        carry = self.model.initial_carry(inputs["inputs"].shape[0])
        if self.mesh is not None:
          carry = jax.device_put(carry, partitioning.batch_major_shardings(
              carry, self.mesh))
      nll, correct, carry = self._step(
          variables, inputs["inputs"], inputs["targets"], carry,
          inputs["start_of_sequence"])
      nll = partitioning.local_rows(nll).astype(np.float64)
      accumulator.update(batch, nll)
      if "answer_mask" in batch:
        has_answers = True
        answers += answer_accuracy(partitioning.local_rows(correct),
                                   batch["answer_mask"])
      # Position of each target in its document, binned.
      mask = np.asarray(batch["loss_mask"]) > 0
      positions = (np.asarray(batch["doc_offset"])[:, None]
                   + np.arange(nll.shape[1])[None, :])
      bins = positions[mask] // position_bin
      size = int(bins.max()) + 1 if bins.size else 0
      if size > len(loss_sum):
        loss_sum = np.pad(loss_sum, (0, size - len(loss_sum)))
        count = np.pad(count, (0, size - len(count)))
      np.add.at(loss_sum, bins, nll[mask])
      np.add.at(count, bins, 1)
    per_document = {doc: compute_metrics(t.loss_nats, t.tokens, t.bytes, t.words)
                    for doc, t in accumulator.docs.items()}
    totals = accumulator.totals()
    if jax.process_count() > 1:  # Each host read other documents.
      from jax.experimental import multihost_utils
      totals = multihost_utils.process_allgather(totals).sum(axis=0)
      answers = multihost_utils.process_allgather(answers).sum(axis=0)
      loss_sum, count = _sum_bins_over_hosts(loss_sum, count)
    metrics = metrics_from_totals(totals)
    if has_answers:
      metrics["answer_accuracy"] = (answers[0] / answers[1] if answers[1]
                                    else float("nan"))
      metrics["answer_tokens"] = int(answers[1])
    return EvalResult(metrics, per_document, position_bin, loss_sum, count)


def _sum_bins_over_hosts(loss_sum, count):
  """Hosts saw different documents, so their bin arrays differ in length."""
  from jax.experimental import multihost_utils
  size = int(multihost_utils.process_allgather(np.int32(len(count))).max())
  pad = lambda a: np.pad(a, (0, size - len(a)))
  both = multihost_utils.process_allgather(np.stack([pad(loss_sum), pad(count)]))
  return both[:, 0].sum(axis=0), both[:, 1].sum(axis=0)


def plot_loss_by_position(curves: Mapping[str, EvalResult], path: str,
                          title: str = "loss against position in the document"):
  """Writes a PNG with one line per model: mean bits/token per position bin."""
  import matplotlib  # Imported here: plotting is optional for evaluation.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for label, result in curves.items():
    starts, loss = result.loss_by_position()
    ax.plot(starts + result.position_bin / 2, loss / np.log(2), marker=".",
            label=label)
  ax.set_xscale("symlog", linthresh=max(r.position_bin for r in curves.values()))
  ax.set_xlabel("position in document (tokens)")
  ax.set_ylabel("bits per token")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
