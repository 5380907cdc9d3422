"""The two streams a trainer asks for, by task name (gin-configurable).

    train = train_batches("gutenberg_plays_bytes", batch_size=4,
                          segment_length=1024, seed=0,
                          shard_index=jax.process_index(),
                          num_shards=jax.process_count())
    state = train.get_state()      # save with the checkpoint; set_state later

The task must be registered first (see `brt.data.tasks`).
"""

from __future__ import annotations

from typing import Optional

from brt.data import batching, tasks


def train_batches(task_name: str, *, batch_size: int, segment_length: int,
                  split: str = "train", seed: int = 0,
                  shard_index: int = 0, num_shards: int = 1,
                  num_epochs: Optional[int] = None
                  ) -> batching.LongDocBatcher:
  """Endless shuffled long-document batches of a split (one epoch after
  another, each reshuffled with (seed, epoch))."""
  docs = tasks.get_documents(task_name, split)
  return batching.LongDocBatcher(docs, batch_size, segment_length, seed=seed,
                                 shuffle=True, num_epochs=num_epochs,
                                 shard_index=shard_index,
                                 num_shards=num_shards)


def eval_batches(task_name: str, *, batch_size: int, segment_length: int,
                 split: str = "validation", shard_index: int = 0,
                 num_shards: int = 1) -> batching.LongDocBatcher:
  """Every document of a split once, in order; ends when all are read."""
  docs = tasks.get_documents(task_name, split)
  return batching.eval_batcher(docs, batch_size, segment_length,
                               shard_index=shard_index, num_shards=num_shards)
