"""A/B of two model configs' training steps, compiled in one process and
alternated, at the bench config (scripts/bench_model.py).

On a shared, noisy machine two separate runs differ by up to a fifth; two
programs timed in turns within one process see the same machine, so their
ratio per pair is the number to read.

  .venv/bin/python scripts/bench_ab.py --a '{"layer_major": false}' \\
      --b '{"layer_major": true}' \\
      --base '{"multi_query": true, "use_bias": false, "position": "rotary"}'

Overrides name ModelConfig or ExecutionConfig fields (e.g. '{"products":
"plain"}'); the execution defaults to the XLA:CPU products on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax

import brt
from brt import xla_cpu

sys.path.insert(0, os.path.dirname(__file__))
from bench_model import (BENCH, SIZES, bench_inputs, execution_config,  # noqa: E402
                         make_train_step)

EXECUTION_FIELDS = {f.name for f in dataclasses.fields(brt.ExecutionConfig)}


def compiled_step(overrides: dict, batch: int, segment: int):
  model_fields = {k: v for k, v in overrides.items()
                  if k not in EXECUTION_FIELDS}
  execution = dataclasses.replace(execution_config(), **{
      k: v for k, v in overrides.items() if k in EXECUTION_FIELDS})
  model, params, tokens, carry = bench_inputs(
      brt.ModelConfig(**BENCH, **model_fields), batch, segment, execution)
  step = make_train_step(model).lower(params, tokens, carry).compile()
  return lambda: step(params, tokens, carry)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--a", type=json.loads, required=True,
                      help="ModelConfig overrides of A, as JSON")
  parser.add_argument("--b", type=json.loads, required=True)
  parser.add_argument("--base", type=json.loads, default={},
                      help="overrides of both (default: Rec:fixed:skip)")
  parser.add_argument("--pairs", type=int, default=6)
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args()
  xla_cpu.tune_xla_flags()
  base = {"recurrent_layers": (SIZES["bench"]["recurrent_layer"],),
          **args.base}
  segment = SIZES["bench"]["segment"]
  steps = {name: compiled_step({**base, **overrides}, args.batch, segment)
           for name, overrides in (("a", args.a), ("b", args.b))}
  times = {"a": [], "b": []}
  for run in steps.values():
    jax.block_until_ready(run())
  for i in range(args.pairs):
    for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
      start = time.perf_counter()
      jax.block_until_ready(steps[name]())
      times[name].append(time.perf_counter() - start)
  tokens = args.batch * segment
  a, b = (statistics.median(times[n]) for n in ("a", "b"))
  print(f"base {base}")
  print(f"A {args.a}: {tokens / a:.0f} tokens/s; B {args.b}: "
        f"{tokens / b:.0f} tokens/s; B/A speed {a / b:.3f}")
  print("B/A speed per pair:",
        " ".join(f"{x / y:.3f}" for x, y in zip(times["a"], times["b"])))


if __name__ == "__main__":
  main()
