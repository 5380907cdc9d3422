"""Synthetic long-range tasks: deterministic, answers where the config says,
answer masks through seqio and the batcher, and the accuracy metric."""

import os
import tempfile

import numpy as np
import pytest

from brt.data import batching, synthetic, tasks
from brt.evaluation import answer_accuracy, predicted_correctly


def write_books() -> str:
  """A small corpus in PG19's layout for the passkey task to hide its number
  in (built at import: the parametrisation below needs its path)."""
  root = tempfile.mkdtemp(prefix="brt_books_")
  rng = np.random.RandomState(0)
  words = ["the", "king", "said", "and", "to", "her", "of", "a", "night",
           "sword", "my", "lord"]
  for split in ("train", "validation", "test"):
    os.makedirs(os.path.join(root, split))
    for book in range(2):
      lines = (" ".join(rng.choice(words, 10)) + "." for _ in range(60))
      with open(os.path.join(root, split, f"book{book}.txt"), "w") as f:
        f.write("\n".join(lines))
  return root


BOOKS = write_books()


def configs():
  return [synthetic.CopyConfig(distance=40),
          synthetic.RetrievalConfig(distance=50, num_pairs=3),
          synthetic.PasskeyConfig(data_dir=BOOKS, distance=90)]


def info_end(cfg, text):
  """Index of the last token of the information each answer needs."""
  if isinstance(cfg, synthetic.CopyConfig):
    return len(text) - len(text.lstrip(".")) + cfg.length - 1
  if isinstance(cfg, synthetic.RetrievalConfig):
    return len(text) - len(text.lstrip(".")) + 2 * cfg.num_pairs - 1
  marker = "The pass key is "
  return text.index(marker) + len(marker) + cfg.digits - 1


@pytest.mark.parametrize("cfg", configs(), ids=lambda c: type(c).__name__)
def test_generators_are_deterministic_and_answers_sit_at_the_distance(cfg):
  for i in range(20):
    text, spans = synthetic.generate(cfg, "train", i)
    assert (text, spans) == synthetic.generate(cfg, "train", i)
    assert text.isascii()
    # The first answer token is exactly `distance` after the information.
    assert spans[0][0] - info_end(cfg, text) == cfg.distance
    answers = [text[a:b] for a, b in spans]
    if isinstance(cfg, synthetic.CopyConfig):
      start = len(text) - len(text.lstrip("."))
      assert answers == [text[start:start + cfg.length]]
    elif isinstance(cfg, synthetic.RetrievalConfig):
      start = len(text) - len(text.lstrip("."))
      pairs = text[start:start + 2 * cfg.num_pairs]
      table = dict(zip(pairs[::2], pairs[1::2]))
      # Each answer is the value of the key just before it.
      assert [table[text[a - 1]] for a, _ in spans] == answers
      assert sorted(text[a - 1] for a, _ in spans) == sorted(table)
    else:
      key = text.split("The pass key is ")[1][:cfg.digits]
      assert answers == [key] and key.isdigit()
  # Seeds and splits give other documents; the evaluation split is held out.
  texts = {synthetic.generate(cfg, "train", i)[0] for i in range(20)}
  evals = {synthetic.generate(cfg, "validation", i)[0] for i in range(20)}
  other = type(cfg)(**{**cfg.__dict__, "seed": 1})
  reseeded = {synthetic.generate(other, "train", i)[0] for i in range(20)}
  assert len(texts) == 20 and not texts & evals and not texts & reseeded


def test_too_short_a_distance_is_explained():
  with pytest.raises(ValueError, match="distance is too short"):
    synthetic.generate(synthetic.RetrievalConfig(distance=2), "train", 0)


def test_answer_masks_reach_the_batches():
  name = tasks.register_retrieval(distance=30, num_pairs=3, num_documents=6,
                                  num_eval_documents=5, name="retrieval_test")
  docs = tasks.get_documents(name, "validation")
  assert len(docs) == 5 and docs.answer_mask.sum() == 5 * 3
  batch = next(batching.eval_batcher(docs, 5, 64))
  mask = batch["answer_mask"] > 0
  # The scored targets are the digits right after a "?<key>" query.
  for row in range(5):
    text, spans = synthetic.generate(tasks._SYNTHETIC[name], "validation",
                                     int(docs.names[batch["doc_id"][row]]
                                         .split("_")[1]))
    want = [ord(text[a]) + 3 for a, _ in spans]  # Byte ids after 3 specials.
    assert batch["targets"][row][mask[row]].tolist() == want
    inputs = batch["inputs"][row]
    assert all(inputs[i - 1] == ord("?") + 3 for i in np.flatnonzero(mask[row]))
  # Other tasks' batches have no answer mask.
  plain = batching.LongDocBatcher(type(docs).from_token_lists([[1, 2, 3]], 8),
                                  1, 4)
  assert "answer_mask" not in next(plain)


def test_answer_accuracy_scores_perfect_and_wrong_answers():
  targets = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
  mask = np.array([[0, 1, 1, 0], [0, 0, 0, 1]], np.float32)
  perfect = np.eye(10)[targets] * 5.0  # argmax == target everywhere
  wrong = perfect.copy()
  wrong[mask > 0] = np.eye(10)[(targets[mask > 0] + 1) % 10] * 5.0
  assert answer_accuracy(predicted_correctly(perfect, targets), mask) == (3, 3)
  # Wrong on every answer, right on every other token: scored 0 of 3.
  right, count = answer_accuracy(predicted_correctly(wrong, targets), mask)
  assert (right, count) == (0, 3)
  assert np.asarray(predicted_correctly(wrong, targets))[mask == 0].all()
  half = wrong.copy()
  half[0, 1] = perfect[0, 1]
  assert answer_accuracy(predicted_correctly(half, targets), mask) == (1, 3)


def test_evaluator_reports_answer_accuracy_of_the_model():
  import jax.numpy as jnp
  from brt.data.documents import DocumentSet
  from brt.evaluation import Evaluator
  from conftest import apply, init_model, tiny_config
  cfg = tiny_config(memory_tokens=2)  # Also evaluates an RMT model.
  model, variables = init_model(cfg)
  rng = np.random.RandomState(0)
  lengths = [13, 9, 17]
  docs = DocumentSet.from_token_lists(
      [rng.randint(0, cfg.vocab_size, n) for n in lengths], cfg.vocab_size)
  docs.answer_mask = (rng.rand(sum(lengths)) < 0.5).astype(np.uint8)
  result = Evaluator(model).run(variables, batching.eval_batcher(docs, 2, 8))
  right = count = 0
  for i, n in enumerate(lengths):
    tokens = jnp.asarray(docs[i], jnp.int32)[None]
    pad = (-(n - 1)) % cfg.block_width
    logits, _ = apply(model, variables,
                      jnp.pad(tokens[:, :-1], ((0, 0), (0, pad))),
                      model.initial_carry(1))
    hit = np.asarray(logits[0, :n - 1].argmax(-1) == tokens[0, 1:])
    mask = docs.answer_mask[docs.offsets[i] + 1:docs.offsets[i + 1]] > 0
    right, count = right + hit[mask].sum(), count + mask.sum()
  assert result.metrics["answer_tokens"] == count > 0
  assert result.metrics["answer_accuracy"] == pytest.approx(right / count)
