"""Run operations: gradient accumulation over row groups, weight decay's
mask, and starting a run from another run's parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt import optim
from brt.checkpoints import IncompatibleCheckpointError
from brt.optim import OptimizerConfig
from brt.trainer import TrainConfig
from conftest import tiny_config
from test_trainer import batches, learnable_documents, make_trainer, train_losses


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("groups", [2, 4])
def test_microbatches_give_the_full_batch_losses_and_parameters(tmp_path,
                                                               groups):
  """Four rows in 2 or 4 groups == all four at once, over steps whose carry
  flows on; with carry dropout, drawn for the whole batch either way."""
  model = tiny_config(block_width=8, recurrent_layers=(1,), gate="lstm")
  rates = dict(cache_dropout=0.5, state_dropout=0.5)
  whole = make_trainer(tmp_path / "whole", 4, model=model, **rates)
  state_a = whole.train(batches(learnable_documents()))
  whole.close()
  split = make_trainer(tmp_path / "split", 4, model=model,
                       num_microbatches=groups, **rates)
  state_b = split.train(batches(learnable_documents()))
  split.close()
  np.testing.assert_allclose(train_losses(split), train_losses(whole),
                             rtol=1e-5)
  for a, b in zip(_leaves(state_a.params), _leaves(state_b.params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  for a, b in zip(_leaves(state_a.carry), _leaves(state_b.carry)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_microbatches_must_divide_the_batch():
  with pytest.raises(ValueError, match=r"batch_size 6 does not divide into "
                     r"num_microbatches=4"):
    TrainConfig(batch_size=6, num_microbatches=4)


def test_weight_decay_shrinks_weights_only(tmp_path):
  model = tiny_config(block_width=8, recurrent_layers=(1,), gate="lstm",
                      gate_variant="dual")
  trainer = make_trainer(tmp_path, 1, model=model)
  params = trainer.init_state().params
  trainer.close()
  mask = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
  decayed = sorted(k for k, m in mask.items() if m)
  kept = sorted(k for k, m in mask.items() if not m)
  assert "['embed']['embedding']" in decayed
  assert "['blocks']['layer_1']['mlp']['wi']['kernel']" in decayed
  assert "['blocks']['layer_1']['q_state']['kernel']" in decayed
  for name in ("['blocks']['layer_1']['gate']['proj']['kernel']",
               "['blocks']['layer_1']['gate_mlp']['proj']['bias']",
               "['blocks']['layer_1']['state_ids']",
               "['blocks']['initial_state_1']",
               "['blocks']['layer_1']['ln_state']['scale']",
               "['blocks']['layer_1']['scale_read']"):
    assert name in kept, name
  assert all(k.endswith(("['kernel']", "['embedding']")) for k in decayed)

  # With zero gradients an AdamW step is the decay alone: only the masked-in
  # parameters move; with the "all" mask, every one does.
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  for which in ("weights", "all"):
    tx, _ = optim.make_optimizer(OptimizerConfig(
        name="adamw", weight_decay=0.1, weight_decay_mask=which,
        warmup_steps=0, grad_clip_norm=None), 10)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = {jax.tree_util.keystr(p): bool(np.any(np.asarray(u) != 0))
             for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    if which == "weights":
      assert moved == mask
    else:
      assert all(moved.values())


def test_init_from_takes_the_parameters_and_starts_afresh(tmp_path):
  source = make_trainer(tmp_path / "source", 6)
  trained = source.train(batches(learnable_documents()))
  source.close()
  at_3 = make_trainer(tmp_path / "source", 6).restore_or_init(step=3)

  for where, want in ((tmp_path / "source", trained),
                      (tmp_path / "source" / "checkpoints" / "3", at_3)):
    tuned = make_trainer(tmp_path / f"tuned{int(want.step)}", 4,
                         init_from=str(where))
    state = tuned.restore_or_init()
    fresh = tuned.init_state()
    assert int(state.step) == 0
    for a, b in zip(_leaves(state.params), _leaves(want.params)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves((state.opt_state, state.carry, state.rng)),
                    _leaves((fresh.opt_state, fresh.carry, fresh.rng))):
      np.testing.assert_array_equal(a, b)
    # It trains on, and once it has a checkpoint resumes from its own.
    tuned.train(batches(learnable_documents()), until_step=2)
    tuned.close()
    again = make_trainer(tmp_path / f"tuned{int(want.step)}", 4,
                         init_from=str(where))
    assert int(again.restore_or_init().step) == 2
    again.close()

  other = make_trainer(tmp_path / "other", 4, init_from=str(tmp_path / "source"),
                       model=tiny_config(block_width=8, recurrent_layers=(1,),
                                         num_states=5))
  with pytest.raises(IncompatibleCheckpointError, match="num_states"):
    other.restore_or_init()
  other.close()
  with pytest.raises(FileNotFoundError, match="neither a run's workdir"):
    make_trainer(tmp_path / "x", 4,
                 init_from=str(tmp_path / "nowhere")).restore_or_init()


def test_prefetching_changes_nothing_but_the_timing(tmp_path):
  """Batches prepared ahead on a thread: the same losses, and the iterator
  left where the loop stopped, not where the thread had read to."""
  runs = {}
  for depth in (0, 3):
    trainer = make_trainer(tmp_path / str(depth), 5, prefetch_batches=depth,
                           profile_steps=(2, 3) if depth else None)
    feed = batches(learnable_documents())
    trainer.train(feed)
    trainer.close()
    runs[depth] = (train_losses(trainer), feed.get_state())
  assert runs[0] == runs[3]
  traces = list((tmp_path / "3" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert not (tmp_path / "0" / "profile").exists()


def test_a_failing_data_pipeline_fails_the_step_loop(tmp_path):
  class Broken:
    def __init__(self):
      self.inner = batches(learnable_documents())
      self.count = 0

    def __next__(self):
      self.count += 1
      if self.count == 3:
        raise OSError("disk gone")
      return next(self.inner)

    def get_state(self):
      return self.inner.get_state()

    def set_state(self, state):
      self.inner.set_state(state)

  trainer = make_trainer(tmp_path, 5, checkpoint_every=100)
  with pytest.raises(OSError, match="disk gone"):
    trainer.train(Broken())
  trainer.close()
  assert train_losses(trainer) == train_losses(trainer)[:2]
