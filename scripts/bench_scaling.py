"""Scaling benchmark: cost per token against segment length, and compile time
against the number of blocks.

A block-recurrent model is one compiled block step scanned over the blocks,
so training and evaluation time per token, and compile time, should not
grow with the segment (4k -> 64k tokens, 32 -> 512 blocks of 128).

- training: forward+backward of one segment of L tokens (batch 1, the
  block step rematerialised so that 64k tokens fit in memory: only the
  carry is kept per block);
- evaluation: the forward pass over one segment of L tokens with the carry.

Each is timed as the best of repeats (the machine may be shared); the
ratios to the shortest length are what to read.

  .venv/bin/python scripts/bench_scaling.py
  .venv/bin/python scripts/bench_scaling.py --lengths 4096 16384 --variant xl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import brt
from brt import xla_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import (VARIANTS, execution_config, make_train_step,  # noqa: E402
                         model_config)


def best_time(fn, *args, budget_s: float, max_repeats: int = 5) -> float:
  """Best wall time of fn(*args) over repeats that fit in `budget_s` (at
  least one), after a warm-up call."""
  jax.block_until_ready(fn(*args))
  best, spent, n = float("inf"), 0.0, 0
  while n < max_repeats and (n == 0 or spent < budget_s):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    took = time.perf_counter() - start
    best, spent, n = min(best, took), spent + took, n + 1
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="rec_fixed_skip",
                      choices=list(VARIANTS))
  parser.add_argument("--lengths", nargs="+", type=int,
                      default=[4096, 16384, 65536])
  parser.add_argument("--budget_s", type=float, default=30.0,
                      help="timing budget per measurement")
  parser.add_argument("--out", default="bench_results/scaling.json")
  args = parser.parse_args()

  xla_cpu.tune_xla_flags()
  cfg = model_config("bench", args.variant)
  model = brt.BlockRecurrentTransformer(
      cfg, execution_config(argparse.Namespace(remat="full")))
  carry = model.initial_carry(1)
  params = nn.meta.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), jnp.zeros((1, cfg.block_width), jnp.int32),
      carry))["params"]
  train_step = make_train_step(model)
  forward = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c))

  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"{args.variant}, bench config, batch 1, remat")
  rows = []
  for length in args.lengths:
    tokens = jnp.asarray(np.random.RandomState(0).randint(
        0, cfg.vocab_size, (1, length + 1)), jnp.int32)
    row = {"tokens": length, "blocks": length // cfg.block_width}
    start = time.perf_counter()
    train = train_step.lower(params, tokens, carry).compile()
    row["train_compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    fwd = forward.lower(params, tokens[:, :-1], carry).compile()
    row["eval_compile_s"] = time.perf_counter() - start
    row["train_us_per_token"] = 1e6 * best_time(
        train, params, tokens, carry, budget_s=args.budget_s) / length
    row["eval_us_per_token"] = 1e6 * best_time(
        fwd, params, tokens[:, :-1], carry, budget_s=args.budget_s) / length
    rows.append(row)
    print(row, flush=True)

  base = rows[0]
  print(f"\n{'tokens':>7s} {'blocks':>6s} {'train us/tok':>12s} {'ratio':>6s} "
        f"{'eval us/tok':>11s} {'ratio':>6s} {'compile train':>13s} "
        f"{'compile eval':>12s}")
  for r in rows:
    r["train_ratio"] = r["train_us_per_token"] / base["train_us_per_token"]
    r["eval_ratio"] = r["eval_us_per_token"] / base["eval_us_per_token"]
    print(f"{r['tokens']:7d} {r['blocks']:6d} {r['train_us_per_token']:12.1f} "
          f"{r['train_ratio']:6.2f} {r['eval_us_per_token']:11.1f} "
          f"{r['eval_ratio']:6.2f} {r['train_compile_s']:12.1f}s "
          f"{r['eval_compile_s']:11.1f}s")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind,
               "variant": args.variant, "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
