"""Inference benchmark: sampling speed and whole-document evaluation memory.

- Sampling at the bench config (batch 1): new tokens/s after a prompt, and
  per-token time after short and long prompts (it should be flat: the
  decoder keeps two blocks of keys/values and the state, whatever came
  before).
- Evaluation memory: peak RSS of a fresh process that evaluates one document
  of each length (it should be flat in the document's length), and on a
  GPU/TPU the peak device memory its allocator held.

  .venv/bin/python scripts/bench_inference.py
  .venv/bin/python scripts/bench_inference.py --prompts 1024 4096 --new_tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import brt
from brt import xla_cpu
from brt.sampling import Sampler, SamplingConfig

sys.path.insert(0, os.path.dirname(__file__))
from bench_model import (VARIANTS, execution_config, model_config,  # noqa: E402  (the same configs)
                         peak_device_mib)


def build(variant):
  cfg = model_config("bench", variant)
  model = brt.BlockRecurrentTransformer(cfg, execution_config())
  tokens = jnp.zeros((1, cfg.block_width), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens,
                                  model.initial_carry(1))
  return model, nn.meta.unbox(variables)


def bench_sampling(variant, prompts, new_tokens, repeats):
  model, variables = build(variant)
  sampler = Sampler(model, variables)
  rows = []
  for length in prompts:
    prompt = np.random.RandomState(0).randint(0, 256, (1, length))
    start = time.perf_counter()
    dec, last = sampler.prefill(prompt)
    jax.block_until_ready(last)
    prefill_s = time.perf_counter() - start
    loop = sampler._loop(new_tokens, SamplingConfig())
    rng = jax.random.PRNGKey(0)
    jax.block_until_ready(loop(variables, dec, last, rng))  # compile
    seconds = float("inf")
    for _ in range(repeats):  # Best of a few: the machine may be shared.
      start = time.perf_counter()
      jax.block_until_ready(loop(variables, dec, last, rng))
      seconds = min(seconds, time.perf_counter() - start)
    rows.append({"variant": variant, "prompt": length, "new_tokens": new_tokens,
                 "prefill_s": prefill_s, "ms_per_token": 1e3 * seconds / new_tokens,
                 "tokens_per_s": new_tokens / seconds})
  return rows


def eval_peak_rss(variant, length, segment):
  """Peak RSS (MiB) of a fresh process evaluating one document of `length`."""
  # On a GPU this process already holds most of the device's memory (jax
  # preallocates 75%); the child allocates what it uses as it goes instead,
  # which is also what makes its peak mean something.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  out = subprocess.run(
      [sys.executable, __file__, "--_eval_child", variant, str(length),
       str(segment)], capture_output=True, text=True, check=True, env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _eval_child(variant, length, segment):
  from brt.data.batching import eval_batcher
  from brt.data.documents import DocumentSet
  from brt.evaluation import Evaluator
  model, variables = build(variant)
  docs = DocumentSet.from_token_lists(
      [np.random.RandomState(0).randint(0, 256, length)], 256)
  start = time.perf_counter()
  result = Evaluator(model).run(variables, eval_batcher(docs, 1, segment))
  seconds = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({"length": length, "peak_rss_mib": peak_mib,
                    "peak_device_mib": peak_device_mib(jax.devices()[0]),
                    "seconds": seconds,
                    "bits_per_token": result.metrics["bits_per_token"]}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="rec_fixed_skip", choices=list(VARIANTS))
  parser.add_argument("--prompts", type=int, nargs="+", default=[1024, 4096, 65536])
  parser.add_argument("--new_tokens", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--eval_lengths", type=int, nargs="+", default=[4096, 262144])
  parser.add_argument("--eval_segment", type=int, default=1024)
  parser.add_argument("--out", default="bench_results/inference.json")
  parser.add_argument("--_eval_child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  xla_cpu.tune_xla_flags()  # Before jax starts its CPU backend.
  if args._eval_child:
    _eval_child(args._eval_child[0], int(args._eval_child[1]),
                int(args._eval_child[2]))
    return

  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"variant {args.variant}")
  sampling = bench_sampling(args.variant, args.prompts, args.new_tokens,
                            args.repeats)
  print(f"{'prompt':>8s} {'prefill s':>10s} {'ms/token':>9s} {'tokens/s':>9s}")
  for r in sampling:
    print(f"{r['prompt']:8d} {r['prefill_s']:10.2f} {r['ms_per_token']:9.2f} "
          f"{r['tokens_per_s']:9.1f}")
  print(f"per-token time, longest / shortest prompt: "
        f"{sampling[-1]['ms_per_token'] / sampling[0]['ms_per_token']:.3f}")

  memory = [eval_peak_rss(args.variant, n, args.eval_segment)
            for n in args.eval_lengths]
  print(f"{'doc tokens':>10s} {'peak RSS MiB':>13s} {'device MiB':>11s} "
        f"{'eval s':>8s}")
  for r in memory:
    dev = r["peak_device_mib"]
    print(f"{r['length']:10d} {r['peak_rss_mib']:13.0f} "
          f"{'-' if dev is None else f'{dev:.0f}':>11s} {r['seconds']:8.1f}")
  print(f"peak RSS, longest / shortest document: "
        f"{memory[-1]['peak_rss_mib'] / memory[0]['peak_rss_mib']:.3f}")
  if memory[0]["peak_device_mib"]:
    print(f"peak device memory, longest / shortest document: "
          f"{memory[-1]['peak_device_mib'] / memory[0]['peak_device_mib']:.3f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "sampling": sampling,
               "eval_memory": memory}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
