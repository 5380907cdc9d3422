"""Which memory reaches back further? Trains every variant on every synthetic
long-range task for the same number of steps and prints answer accuracy.

    JAX_PLATFORMS=cpu python scripts/compare_memory.py \
        --out results/memory_tasks.json

Each run is the gin files `variants/<v>.gin tasks/<t>_bytes.gin
experiments/memory_cpu.gin` (the last one wins: a tiny model, W = 16, the
information DISTANCE tokens = 5 blocks before its use), trained from scratch
with the ordinary Trainer, then evaluated on the held-out validation split:
answer accuracy is the fraction of answer tokens the model predicts
(greedily) right.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402

from brt import configurables  # noqa: E402
from brt.config import ModelConfig  # noqa: E402
from brt.configurables import DataConfig  # noqa: E402
from brt.data import batching, tasks  # noqa: E402
from brt.execution import ExecutionConfig  # noqa: E402
from brt.optim import OptimizerConfig  # noqa: E402
from brt.trainer import TrainConfig, Trainer  # noqa: E402

VARIANTS = {  # Table name -> gin file.
    "XL:W": "variants/xl.gin",
    "Slide": "variants/slide.gin",
    "Rec:fixed:skip": "variants/rec_fixed_skip.gin",
    "Rec:lstm:dual": "variants/rec_lstm_dual.gin",
    "Feedback:fixed:skip": "variants/feedback_fixed_skip.gin",
    "RMT": "variants/rmt.gin",
}
TASKS = {"retrieval": "tasks/retrieval_bytes.gin",
         "copy": "tasks/copy_bytes.gin",
         "passkey": "tasks/passkey_bytes.gin"}
CHANCE = {"retrieval": 0.1, "copy": 1 / 16, "passkey": 0.1}


class AnswerWeighted:
  """Training batches whose answer tokens weigh `weight` times as much in the
  loss as the other tokens (the loss is a weighted mean over loss_mask).

  Most tokens of an episode are filler or random keys; weighting the answers
  puts more of each step's gradient on what the comparison measures. The
  position in the data is the wrapped batcher's.
  """

  def __init__(self, batches, weight: float):
    self.batches, self.weight = batches, weight

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.batches))
    batch["loss_mask"] = batch["loss_mask"] * (
        1.0 + (self.weight - 1.0) * batch["answer_mask"])
    return batch

  def get_state(self):
    return self.batches.get_state()

  def set_state(self, state):
    self.batches.set_state(state)


def build(variant_file, task_file, experiment, params):
  gin.clear_config()
  configurables.parse([variant_file, task_file, experiment], params)
  return tuple(configurables.build(c) for c in (
      ModelConfig, TrainConfig, OptimizerConfig, DataConfig, ExecutionConfig))


def run_one(variant_file, task_file, args, documents, params=()):
  model_cfg, train_cfg, opt_cfg, data_cfg, execution = build(
      variant_file, task_file, args.experiment, [*args.gin_param, *params])
  if data_cfg.task not in documents:  # Generated once per task.
    documents[data_cfg.task] = {
        split: tasks.get_documents(data_cfg.task, split)
        for split in (data_cfg.train_split, data_cfg.eval_split)}
  docs = documents[data_cfg.task]
  workdir = tempfile.mkdtemp(prefix="compare_memory_")
  try:
    trainer = Trainer(model_cfg, train_cfg, opt_cfg, workdir,
                      execution=execution, verbose=False)
    train = batching.LongDocBatcher(
        docs[data_cfg.train_split], train_cfg.batch_size,
        train_cfg.segment_length, seed=train_cfg.seed)
    if args.answer_weight != 1:
      train = AnswerWeighted(train, args.answer_weight)
    began = time.perf_counter()
    state = trainer.train(train)
    train_s = time.perf_counter() - began
    result = trainer.evaluate(state.params, batching.eval_batcher(
        docs[data_cfg.eval_split], train_cfg.eval_rows,
        train_cfg.eval_length), int(state.step))
    trainer.close()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  last = [r for r in trainer.history if r["kind"] == "train"][-1]
  return {"task": data_cfg.task, "steps": int(state.step),
          "answer_accuracy": result.metrics["answer_accuracy"],
          "answer_tokens": result.metrics["answer_tokens"],
          "eval_bits_per_token": result.metrics["bits_per_token"],
          "final_train_loss": last["loss"], "train_seconds": train_s}


def table(results, task_names, variant_names):
  width = max(len(v) for v in variant_names) + 2
  def header(t):
    steps = {r["steps"] for k, r in results.items() if k.endswith("/" + t)}
    return f"{t} ({'/'.join(str(s) for s in sorted(steps))} steps)"
  lines = ["| variant | " + " | ".join(header(t) for t in task_names) + " |",
           "|---|" + "---:|" * len(task_names)]
  for v in variant_names:
    cells = []
    for t in task_names:
      r = results.get(f"{v}/{t}")
      cells.append("-" if r is None else f"{r['answer_accuracy']:.3f}")
    lines.append(f"| {v:<{width - 2}} | " + " | ".join(cells) + " |")
  lines.append("| chance | " + " | ".join(f"{CHANCE[t]:.3f}"
                                           for t in task_names) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", default="experiments/memory_cpu.gin")
  parser.add_argument("--tasks", default=",".join(TASKS),
                      help=f"comma-separated, of {list(TASKS)}")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, of {list(VARIANTS)}")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="extra gin bindings, e.g. TrainConfig.num_steps=50")
  parser.add_argument("--steps", default="",
                      help="training steps per task, e.g. retrieval=2000,"
                      "copy=600 (every variant gets the same); default: "
                      "TrainConfig.num_steps")
  parser.add_argument("--answer_weight", type=float, default=1.0,
                      help="loss weight of answer tokens in training (1: the "
                      "plain language-model loss)")
  parser.add_argument("--out", default=None, help="JSON file for the results")
  args = parser.parse_args(argv)
  task_names = [t for t in args.tasks.split(",") if t]
  variant_names = [v for v in args.variants.split(",") if v]
  for name, known in ((task_names, TASKS), (variant_names, VARIANTS)):
    bad = [n for n in name if n not in known]
    if bad:
      parser.error(f"unknown {bad}; choose from {list(known)}")

  steps = dict(item.split("=") for item in args.steps.split(",") if item)
  started = datetime.datetime.now(datetime.timezone.utc)
  results, documents = {}, {}
  for t in task_names:
    for v in variant_names:
      params = ([f"TrainConfig.num_steps = {int(steps[t])}"] if t in steps
                else [])
      r = run_one(VARIANTS[v], TASKS[t], args, documents, params)
      results[f"{v}/{t}"] = r
      print(f"{v:>20} on {t:<9}: answer accuracy {r['answer_accuracy']:.3f} "
            f"after {r['steps']} steps "
            f"(train loss {r['final_train_loss']:.3f}, "
            f"{r['train_seconds']:.0f}s)", flush=True)
  print()
  print(table(results, task_names, variant_names))
  elapsed = (datetime.datetime.now(datetime.timezone.utc) - started)
  print(f"\n{started:%Y-%m-%d}, {elapsed.total_seconds() / 60:.1f} min, "
        f"command: {' '.join(sys.argv)}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"date": started.isoformat(), "argv": sys.argv,
                 "experiment": args.experiment, "gin_param": args.gin_param,
                 "answer_weight": args.answer_weight,
                 "minutes": elapsed.total_seconds() / 60,
                 "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
