"""Step time of the paper's variants (its Table 1 "step time" column).

Times one training step (forward + backward, no optimizer) at the same size
and segment length for XL:W, XL:4W, Slide, Rec:fixed:skip, Rec:lstm:dual,
Feedback:fixed:skip and XL:W with compressed memory, relative to Slide, in
one process. Every variant is compiled first; then the repeats go round the
variants in turn, each round starting one variant later (so a slow spell of
a shared machine hits all of them), and each variant keeps its best time.

  .venv/bin/python scripts/bench_step_time.py            # bench config, ~10 min on 2 cores
  .venv/bin/python scripts/bench_step_time.py --repeats 5 --out bench_results/step_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import brt
from brt import flops, xla_cpu
from bench_model import (BENCH, add_execution_flags, execution_config,  # scripts/ is on the path
                         make_train_step, timed)

# Name as in the paper's Table 1 -> ModelConfig overrides of BENCH (W = 128,
# recurrent layer 4 of 6).
VARIANTS = {
    "Slide:128": dict(cache_across_segments=False),
    "XL:128": dict(),
    "XL:512": dict(block_width=4 * BENCH["block_width"]),
    "Rec:fixed:skip": dict(recurrent_layers=(4,)),
    "Rec:lstm:dual": dict(recurrent_layers=(4,), gate="lstm",
                          gate_variant="dual"),
    "Feedback:fixed:skip": dict(recurrent_layers=(4,), feedback=True),
    "XL:128+compressed": dict(compressed_mem_factor=4),
}
BASELINE = "Slide:128"


def prepare(name, args):
  """(compiled step, its arguments, config) for one variant."""
  cfg = brt.ModelConfig(**{**BENCH, **VARIANTS[name]}, dtype=args.dtype)
  model = brt.BlockRecurrentTransformer(cfg, execution_config(args))
  carry = model.initial_carry(args.batch)
  tokens = jnp.asarray(np.random.RandomState(1).randint(
      0, cfg.vocab_size, (args.batch, args.segment + 1)), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), tokens[:, :cfg.block_width], carry)["params"])
  step = make_train_step(model)
  start = time.perf_counter()
  compiled = step.lower(params, tokens, carry).compile()
  compile_s = time.perf_counter() - start
  # One call to warm up, and a carry that holds something (as in training).
  _, _, carry = jax.block_until_ready(compiled(params, tokens, carry))
  return compiled, (params, tokens, carry), cfg, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--segment", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  add_execution_flags(parser)
  parser.add_argument("--out", default="bench_results/step_time.json")
  args = parser.parse_args()
  xla_cpu.tune_xla_flags()
  if BASELINE not in args.variants:
    args.variants.insert(0, BASELINE)

  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}; batch {args.batch}, segment {args.segment}",
        flush=True)
  began = time.perf_counter()
  prepared = {}
  for name in args.variants:
    prepared[name] = prepare(name, args)
    print(f"compiled {name} in {prepared[name][3]:.1f}s", flush=True)
  times = {name: [] for name in args.variants}
  names = list(prepared)
  for r in range(args.repeats):
    # Each round starts one variant later, so that a change of the machine's
    # load within a round does not always favour the same variants.
    for name in names[r % len(names):] + names[:r % len(names)]:
      compiled, step_args, _, _ = prepared[name]
      times[name].append(timed(compiled, *step_args, repeats=1, warmup=False))
    print(f"round {r + 1}/{args.repeats}: " + ", ".join(
        f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)

  base = min(times[BASELINE])
  base_flops = flops.train_flops_per_token(prepared[BASELINE][2])
  rows = []
  for name in args.variants:
    best = min(times[name])
    cfg = prepared[name][2]
    # The analytic matmul FLOPs per token, relative to Slide's: the step
    # time ratio a kernel without overheads would reach.
    rows.append({"variant": name, "step_s": best, "relative": best / base,
                 "flops_relative": flops.train_flops_per_token(cfg) / base_flops,
                 "all_s": times[name], "compile_s": prepared[name][3],
                 "block_width": cfg.block_width})
  print(f"\n{'variant':22s} {'step s':>7s} {'vs Slide':>8s} {'FLOPs vs Slide':>14s}")
  for row in rows:
    print(f"{row['variant']:22s} {row['step_s']:7.2f} {row['relative']:8.2f} "
          f"{row['flops_relative']:14.2f}")
  by = {row["variant"]: row["step_s"] for row in rows}
  goals = {}
  if {"Rec:fixed:skip", "XL:128", "XL:512"} <= set(by):
    goals = {"rec_fixed_skip_over_xl_w": by["Rec:fixed:skip"] / by["XL:128"],
             "rec_fixed_skip_over_xl_4w": by["Rec:fixed:skip"] / by["XL:512"]}
    print(f"Rec:fixed:skip / XL:W = {goals['rec_fixed_skip_over_xl_w']:.2f} "
          "(goal <= 1.1), / XL:4W = "
          f"{goals['rec_fixed_skip_over_xl_4w']:.2f} (goal <= 0.6)")
  print(f"whole run: {time.perf_counter() - began:.0f}s")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": device.device_kind, "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d"), "args": vars(args),
               "rows": rows, "goals": goals}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
