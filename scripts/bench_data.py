"""Input-pipeline throughput: batches/s of LongDocBatcher at the bench config.

The pipeline must never limit training: the model takes roughly 0.3-1 s per
step at segment 1024, batch 4 on a CPU, so the pipeline should deliver
hundreds of batches per second. Tokenization happens once per corpus and is
cached (see brt.data.tasks.get_documents); it is timed separately.

  .venv/bin/python scripts/bench_data.py                  # demo corpus
  .venv/bin/python scripts/bench_data.py --synthetic      # no data needed
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from brt.data import batching, documents  # noqa: E402


def synthetic_documents(num_docs=200, mean_length=50_000, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(mean_length // 10, 2 * mean_length, num_docs)
  return documents.DocumentSet.from_token_lists(
      [rng.integers(3, 259, n) for n in lengths], vocab_size=259)


def time_batches(it, num_batches):
  next(it)  # first-call costs (epoch order) are not the steady state
  start = time.perf_counter()
  n = 0
  tokens = 0.0
  for batch in it:
    tokens += float(batch["loss_mask"].sum())
    n += 1
    if n == num_batches:
      break
  seconds = time.perf_counter() - start
  return n / seconds, tokens / seconds, n


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="data/gutenberg_plays")
  parser.add_argument("--vocabulary", default="bytes")
  parser.add_argument("--synthetic", action="store_true")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--segment_length", type=int, default=1024)
  parser.add_argument("--num_batches", type=int, default=5000)
  parser.add_argument("--out", default=None, help="write results as JSON")
  args = parser.parse_args()

  results = {"batch_size": args.batch_size,
             "segment_length": args.segment_length}
  if args.synthetic:
    train = valid = synthetic_documents()
    results["corpus"] = "synthetic"
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from brt.data import tasks
    t0 = time.perf_counter()
    name = tasks.register_gutenberg_plays(args.data_dir,
                                          vocabulary=args.vocabulary)
    train = tasks.get_documents(name, "train")
    valid = tasks.get_documents(name, "validation")
    results["corpus"] = name
    results["load_seconds"] = time.perf_counter() - t0  # cached after first
  results["train_tokens"] = int(len(train.tokens))

  train_it = batching.LongDocBatcher(train, args.batch_size,
                                     args.segment_length, seed=0)
  bps, tps, n = time_batches(train_it, args.num_batches)
  results.update(train_batches_per_s=bps, train_tokens_per_s=tps,
                 train_batches=n)
  # Resuming costs one set_state; time a state round trip too.
  t0 = time.perf_counter()
  state = json.loads(json.dumps(train_it.get_state()))
  batching.LongDocBatcher(train, args.batch_size, args.segment_length,
                          seed=0).set_state(state)
  results["resume_seconds"] = time.perf_counter() - t0
  eval_it = batching.eval_batcher(valid, args.batch_size, args.segment_length)
  bps, tps, n = time_batches(eval_it, args.num_batches)
  results.update(eval_batches_per_s=bps, eval_tokens_per_s=tps,
                 eval_batches=n)

  for k, v in results.items():
    print(f"{k:>22}: {v:,.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
