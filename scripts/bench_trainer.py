"""Training-loop overhead: tokens/s through the entry point's code path
against the bare forward+backward step of scripts/bench_model.py, same
config, same process.

The trainer run is what `python -m brt.main --mode=train` does with
sizes/small.gin (the bench config), a variant and the Gutenberg plays as
bytes: gin parsing, the data pipeline, the optimizer update, metrics,
TensorBoard and a checkpoint. Its tokens/s comes from its own log lines
after the first (compilation) interval.

  .venv/bin/python scripts/bench_trainer.py           # needs scripts/prepare_data.sh
  .venv/bin/python scripts/bench_trainer.py --steps 40 --variant xl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model  # noqa: E402  (the bare step, timed the same way)
from brt import xla_cpu  # noqa: E402


def trainer_tokens_per_s(variant: str, steps: int, log_every: int,
                         prefetch_batches: int) -> float:
  from brt import configurables
  from brt.experiment import Experiment
  configurables.parse(
      ["sizes/small.gin", f"variants/{variant}.gin",
       "tasks/gutenberg_plays_bytes.gin"],
      [f"TrainConfig.num_steps = {steps}",
       f"TrainConfig.log_every = {log_every}",
       f"TrainConfig.checkpoint_every = {steps}",
       f"TrainConfig.prefetch_batches = {prefetch_batches}"])
  exp = Experiment.from_gin(tempfile.mkdtemp(prefix="bench_trainer_"))
  trainer = exp.trainer()
  trainer.train(exp.train_batches())
  trainer.close()
  rates = [r["tokens_per_s"] for r in trainer.history
           if r["kind"] == "train" and r["step"] > log_every]
  return sum(rates) / len(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="rec_fixed_skip",
                      choices=list(bench_model.VARIANTS))
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--log_every", type=int, default=5)
  parser.add_argument("--prefetch_batches", type=int, default=2,
                      help="TrainConfig.prefetch_batches (0: in the loop)")
  parser.add_argument("--out", default="bench_results/trainer.json")
  args = parser.parse_args()
  xla_cpu.tune_xla_flags()  # Before jax starts its CPU backend.

  print(f"device: {jax.devices()[0].device_kind}, variant {args.variant}")
  loop = trainer_tokens_per_s(args.variant, args.steps, args.log_every,
                              args.prefetch_batches)
  bare = bench_model.bench_variant(args.variant, bench_model.make_parser(
  ).parse_args(["--batch=4", "--segment=1024", f"--steps={args.log_every}",
                "--products=xla_cpu", "--no-compile_check"]))["tokens_per_s"]
  print(f"bare fwd+bwd step:      {bare:9.0f} tokens/s")
  print(f"trainer (entry point):  {loop:9.0f} tokens/s")
  print(f"trainer / bare:         {loop / bare:9.3f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"variant": args.variant,
               "prefetch_batches": args.prefetch_batches,
               "bare_tokens_per_s": bare,
               "trainer_tokens_per_s": loop, "ratio": loop / bare}, f,
              indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
