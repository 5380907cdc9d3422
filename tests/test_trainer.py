"""The training loop: learning, exact resume, non-finite losses, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt.checkpoints import IncompatibleCheckpointError
from brt.data.batching import LongDocBatcher, eval_batcher
from brt.data.documents import DocumentSet
from brt.optim import OptimizerConfig
from brt.trainer import NonFiniteLossError, TrainConfig, Trainer
from conftest import tiny_config

SEGMENT = 16  # Two blocks of W = 8.


def learnable_documents(num_docs=12, seed=0) -> DocumentSet:
  """Documents repeating a random 5-token motif: the next token is always
  the one 5 back, which attention over the window can learn fast."""
  rng = np.random.RandomState(seed)
  docs = [np.tile(rng.randint(3, 29, 5), 60)[:rng.randint(40, 150)]
          for _ in range(num_docs)]
  texts = [" ".join(map(str, d)) for d in docs]
  return DocumentSet.from_token_lists(docs, 29, texts=texts)


def make_trainer(workdir, num_steps, *, model=None, **train):
  model = model or tiny_config(block_width=8, recurrent_layers=(1,))
  train = {**dict(batch_size=4, segment_length=SEGMENT, num_steps=num_steps,
                  log_every=1, checkpoint_every=3, mesh_shape=(1, 1)), **train}
  return Trainer(model, TrainConfig(**train),
                 OptimizerConfig(learning_rate=1e-2, warmup_steps=5),
                 str(workdir), verbose=False)


def batches(docs):
  return LongDocBatcher(docs, 4, SEGMENT, seed=0)


def train_losses(trainer):
  return [r["loss"] for r in trainer.history if r["kind"] == "train"]


def test_loss_decreases_and_eval_reports_whole_documents(tmp_path):
  docs = learnable_documents()
  trainer = make_trainer(tmp_path, 40, eval_every=40, checkpoint_every=40)
  trainer.train(batches(docs), lambda: eval_batcher(docs, 4, SEGMENT))
  trainer.close()
  losses = train_losses(trainer)
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < 0.6 * losses[0], losses
  (evaluation,) = [r for r in trainer.history if r["kind"] == "eval"]
  assert evaluation["num_documents"] == len(docs)
  assert evaluation["num_tokens"] == int((docs.lengths - 1).sum())
  assert evaluation["bits_per_token"] < losses[0] / np.log(2)


def _params(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]


def test_resume_is_exact(tmp_path):
  """6 steps straight == 3 steps, a new trainer from the workdir, 3 more;
  with dropout and carry dropout on, so the RNG must be restored too."""
  docs = learnable_documents()
  model = tiny_config(block_width=8, recurrent_layers=(1,), dropout_rate=0.1)
  rates = dict(cache_dropout=0.5, state_dropout=0.5)
  straight = make_trainer(tmp_path / "a", 6, model=model, **rates)
  state_a = straight.train(batches(docs))
  straight.close()

  first = make_trainer(tmp_path / "b", 6, model=model, **rates)
  first.train(batches(docs), until_step=3)
  first.close()
  assert first.checkpointer.all_steps() == [3]
  second = make_trainer(tmp_path / "b", 6, model=model, **rates)
  state_b = second.train(batches(docs))  # A fresh iterator: position restored.
  second.close()

  assert train_losses(first) + train_losses(second) == train_losses(straight)
  assert int(state_b.step) == 6
  for a, b in zip(_params(state_a), _params(state_b)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree_util.tree_leaves(state_a.carry),
                  jax.tree_util.tree_leaves(state_b.carry)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  trainer = make_trainer(tmp_path, 10, log_every=100, checkpoint_every=2)
  real_step, calls = trainer._step_fn, []

  def poisoned(state, batch):  # The 5th step's loss comes back NaN.
    state, metrics = real_step(state, batch)
    calls.append(1)
    if len(calls) == 5:
      metrics = dict(metrics, loss=jnp.float32(jnp.nan))
    return state, metrics

  trainer._step_fn = poisoned
  with pytest.raises(NonFiniteLossError, match=r"step 5 .*last good "
                     r"checkpoint is step 4"):
    trainer.train(batches(learnable_documents()))
  trainer.close()
  assert trainer.checkpointer.all_steps() == [2, 4]


def test_checkpoint_of_another_config_is_refused(tmp_path):
  trainer = make_trainer(tmp_path, 3)
  trainer.train(batches(learnable_documents()))
  trainer.close()
  other = make_trainer(tmp_path, 3, model=tiny_config(
      block_width=8, recurrent_layers=(1,), num_states=5))
  with pytest.raises(IncompatibleCheckpointError,
                     match=r"num_states: checkpoint 3, this run 5"):
    other.restore_or_init()
  other.close()


def test_workdir_in_a_missing_directory_is_refused(tmp_path):
  from brt.experiment import prepare_workdir
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare_workdir(str(tmp_path / "missing" / "run"))


def test_train_config_errors_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match="not a positive multiple of "
                     "block_width=8"):
    make_trainer(tmp_path, 3, segment_length=12)
  with pytest.raises(ValueError, match="batch_size must be a positive"):
    TrainConfig(batch_size=0)


def test_checkpoints_from_before_an_option_existed_stay_compatible():
  import dataclasses
  from brt.checkpoints import check_compatible
  cfg = tiny_config(recurrent_layers=(1,))
  saved = dataclasses.asdict(cfg)
  for new_field in ("compressed_mem_factor", "read_recurrent_layers"):
    del saved[new_field]
  check_compatible(saved, cfg, "here")  # Missing fields had their defaults.
  with pytest.raises(IncompatibleCheckpointError, match="compressed_mem_factor"):
    check_compatible(saved, dataclasses.replace(cfg, compressed_mem_factor=2),
                     "here")


def test_checkpoints_from_before_meliad_parity_had_the_classic_model():
  """A checkpoint without the window, empty_cache and norm fields was
  written by brt's classic model: it resumes with options/brt_classic.gin
  and is refused, with the differences named, by the paper's model."""
  import dataclasses
  from brt.checkpoints import check_compatible
  from brt.config import CLASSIC
  classic = tiny_config(**CLASSIC)
  saved = dataclasses.asdict(classic)
  for new_field in ("window", "empty_cache", "norm"):
    del saved[new_field]
  check_compatible(saved, classic, "here")
  with pytest.raises(IncompatibleCheckpointError,
                     match="window: checkpoint 'blocks', this run 'sliding'"):
    check_compatible(saved, dataclasses.replace(classic, window="sliding"),
                     "here")
