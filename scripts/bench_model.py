"""Model throughput benchmark: forward+backward tokens/s and MFU.

MFU is the achieved matmul FLOP/s of a training step (analytic count,
brt/flops.py) divided by the FLOP/s of a plain matmul in the model's dtype
(--dtype bfloat16: bf16 operands accumulated in float32, as brt/linear.py
computes them) measured in the same run on the same device, so the ratio
holds on a shared, noisy machine.
Also reports compile time at two segment lengths (it should not grow: one
compiled block step, scanned), and on devices that track it (GPU, TPU) the
peak device memory of the run.

`--size paper` takes the paper's model instead (12 layers, d_model 1024, 8
heads of 128, MLP 4096, W 512, 512 states, recurrent layer 10, a 32k
vocabulary, segments of 4096): a size for an accelerator, not this CPU.

How the model is computed is brt.execution.ExecutionConfig's: --products
(default: the XLA:CPU products on a CPU, plain JAX elsewhere), --attention,
--remat, --layer_major. The step-time ratios of the recurrent variants to
XL:W and XL:4W are printed and written beside the rows.

  .venv/bin/python scripts/bench_model.py                 # bench config, all variants
  .venv/bin/python scripts/bench_model.py --variants rec_fixed_skip --steps 5
  .venv/bin/python scripts/bench_model.py --dtype bfloat16 --out bench_results/model_bf16.json
  python scripts/bench_model.py --size paper --dtype bfloat16 --variants xl xl_4w rec_fixed_skip
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import brt
from brt import flops, xla_cpu

# The bench config of the issues: bytes, 6 layers, d 512, 8 x 64 heads,
# MLP 2048, W 128, 128 states, recurrent layer 4, segment 1024, batch 4.
BENCH = dict(vocab_size=256, num_layers=6, d_model=512, num_heads=8,
             mlp_dim=2048, block_width=128, num_states=128)
# The paper's model, as configs/sizes/paper.gin with the PG19 vocabulary.
PAPER = dict(vocab_size=32000, num_layers=12, d_model=1024, num_heads=8,
             mlp_dim=4096, block_width=512, num_states=512)
SIZES = {"bench": dict(model=BENCH, recurrent_layer=4, segment=1024),
         "paper": dict(model=PAPER, recurrent_layer=9, segment=4096)}


def variants(recurrent_layer: int) -> dict:
  """The benchmarked variants, with the recurrent layer at the given index."""
  rec = (recurrent_layer,)
  return {
      "xl": dict(),
      "xl_4w": dict(block_width=None),  # 4 W: filled in by `model_config`.
      "rec_fixed_skip": dict(recurrent_layers=rec),
      "rec_lstm_dual": dict(recurrent_layers=rec, gate="lstm", gate_variant="dual"),
      "feedback": dict(recurrent_layers=rec, feedback=True),
  }


VARIANTS = variants(SIZES["bench"]["recurrent_layer"])


def timed(fn, *args, repeats, warmup=True, reduce=statistics.median):
  """Median (or `reduce`) wall time of fn(*args) after one warm-up call."""
  if warmup:
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return reduce(times)


def matmul_flops_per_second(n: int, repeats: int, dtype=jnp.float32) -> float:
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y,
                                        preferred_element_type=jnp.float32))
  return 2 * n ** 3 / timed(matmul, a, a, repeats=repeats)


def make_train_step(model):
  def loss_fn(params, tokens, carry):
    logits, carry = model.apply({"params": params}, tokens[:, :-1], carry)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)
    return nll.mean(), carry

  @jax.jit
  def step(params, tokens, carry):
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, tokens, carry)
    return loss, grads, jax.lax.stop_gradient(carry)

  return step


def peak_device_mib(device) -> float | None:
  """Peak bytes the device's allocator has held (GPU/TPU), else None (CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2 ** 20


def model_config(size: str, name: str, **overrides) -> brt.ModelConfig:
  """A benchmarked variant at one of SIZES."""
  model = dict(SIZES[size]["model"])
  variant = dict(variants(SIZES[size]["recurrent_layer"])[name])
  if "block_width" in variant:
    variant["block_width"] = 4 * model["block_width"]
  return brt.ModelConfig(**{**model, **variant, **overrides})


def execution_config(args=None) -> brt.ExecutionConfig:
  """The ExecutionConfig of the command line (`add_execution_flags`; None:
  their defaults); products "auto" is the XLA:CPU products on a CPU and
  plain JAX elsewhere."""
  get = lambda name, default: getattr(args, name, default)
  products = get("products", "auto")
  if products == "auto":
    products = "xla_cpu" if jax.default_backend() == "cpu" else "plain"
  layer_major = {"auto": None, "true": True, "false": False}[
      get("layer_major", "auto")]
  return brt.ExecutionConfig(products=products,
                             attention=get("attention", "auto"),
                             remat=get("remat", "none"),
                             layer_major=layer_major)


def add_execution_flags(parser) -> None:
  """--products, --attention, --remat, --layer_major (ExecutionConfig)."""
  from brt import execution
  parser.add_argument("--products", default="auto",
                      choices=("auto", *execution.PRODUCTS))
  parser.add_argument("--attention", default="auto",
                      choices=execution.ATTENTION)
  parser.add_argument("--remat", default="none", choices=execution.REMAT)
  parser.add_argument("--layer_major", default="auto",
                      choices=("auto", "true", "false"))


def bench_inputs(cfg: brt.ModelConfig, batch: int, segment: int,
                 execution: brt.ExecutionConfig = brt.ExecutionConfig()):
  """(model, params, tokens, carry) of one training step of a segment."""
  model = brt.BlockRecurrentTransformer(cfg, execution)
  carry = model.initial_carry(batch)
  tokens = jnp.asarray(np.random.RandomState(1).randint(
      0, cfg.vocab_size, (batch, segment + 1)), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), tokens[:, :cfg.block_width], carry)["params"])
  return model, params, tokens, carry


def bench_variant(name, args):
  cfg = model_config(args.size, name, dtype=args.dtype)
  execution = execution_config(args)
  batch, seg = args.batch, args.segment
  model, params, tokens, carry = bench_inputs(cfg, batch, seg, execution)
  step = make_train_step(model)

  compile_s = {}
  for length in (seg, 4 * seg) if args.compile_check else (seg,):
    toks = jnp.zeros((batch, length + 1), jnp.int32)
    start = time.perf_counter()
    compiled = step.lower(params, toks, carry).compile()
    compile_s[length] = time.perf_counter() - start
    if length == seg:
      compiled_step = compiled  # timed below: no second compile

  seconds = timed(compiled_step, params, tokens, carry, repeats=args.steps)
  tokens_per_s = batch * seg / seconds
  achieved = tokens_per_s * flops.train_flops_per_token(cfg)
  return {
      "variant": name, "batch": batch, "segment": seg, "dtype": args.dtype,
      "execution": dataclasses.asdict(execution),
      "layer_major": execution.runs_layer_major(cfg),
      "attention_kernel": execution.attention_kernel(cfg), "step_s": seconds, "tokens_per_s": tokens_per_s,
      "model_tflops_per_s": achieved / 1e12,
      "compile_s": {str(k): v for k, v in compile_s.items()},
      "params": sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)),
      # Cumulative over the run so far: variants run in order, and the
      # largest one sets it.
      "peak_device_mib_so_far": peak_device_mib(jax.devices()[0]),
  }


def step_time_ratios(rows) -> dict[str, float]:
  """Each recurrent variant's step time over XL:W's and XL:4W's (the
  paper's claim: about XL:W's, half XL:4W's)."""
  step = {row["variant"]: row["step_s"] for row in rows}
  return {f"{name} / {base}": step[name] / step[base]
          for name in step if name not in ("xl", "xl_4w")
          for base in ("xl", "xl_4w") if base in step}


def make_parser() -> argparse.ArgumentParser:
  """This script's flags (other scripts take its defaults from here)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument("--size", choices=list(SIZES), default="bench")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--segment", type=int, default=None,
                      help="default: the size's (bench 1024, paper 4096)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  add_execution_flags(parser)
  parser.add_argument("--compile_check", action=argparse.BooleanOptionalAction,
                      default=True,
                      help="also compile at 4x the segment (compile time "
                           "should not grow)")
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="reference matmul size; default 2048 on CPU, "
                           "8192 on an accelerator (2048^3 is too small to "
                           "fill one)")
  parser.add_argument("--out", default="bench_results/model.json")
  return parser


def main():
  args = make_parser().parse_args()
  args.segment = args.segment or SIZES[args.size]["segment"]
  xla_cpu.tune_xla_flags()  # Before jax starts its CPU backend.

  device = jax.devices()[0]
  backend = jax.default_backend()
  args.matmul_size = args.matmul_size or (2048 if backend == "cpu" else 8192)
  print(f"device: {device.device_kind} ({backend}), jax {jax.__version__}, "
        f"size {args.size}, batch {args.batch}, segment {args.segment}, "
        f"{args.dtype}, default matmul precision "
        f"{jax.config.jax_default_matmul_precision or 'backend default'}")
  dtype = jnp.dtype(args.dtype)
  reference = lambda: matmul_flops_per_second(args.matmul_size, args.steps,
                                              dtype)
  # The reference matmul is measured before and after every variant and the
  # best kept, so that a slow moment of the (shared) machine during one
  # measurement cannot flatter MFU.
  references = [reference()]
  rows = []
  for name in args.variants:
    rows.append(bench_variant(name, args))
    references.append(reference())
  peak = max(references)
  print(f"{args.dtype} matmul {args.matmul_size}^3: {peak / 1e9:.1f} GFLOP/s")
  header = (f"{'variant':16s} {'tokens/s':>9s} {'step s':>7s} {'GFLOP/s':>8s} "
            f"{'MFU':>6s} {'compile 1x':>10s} {'compile 4x':>10s} "
            f"{'peak MiB':>9s}")
  print(header)
  for row in rows:
    row["mfu"] = row["model_tflops_per_s"] * 1e12 / peak
    c = [f"{v:9.1f}s" for v in row["compile_s"].values()] + [f"{'-':>10s}"]
    mem = row["peak_device_mib_so_far"]
    print(f"{row['variant']:16s} {row['tokens_per_s']:9.0f} {row['step_s']:7.3f} "
          f"{row['model_tflops_per_s'] * 1e3:8.1f} {row['mfu']:6.1%} "
          f"{c[0]} {c[1]} {'-' if mem is None else f'{mem:.0f}':>9s}")
  ratios = step_time_ratios(rows)
  for name, ratio in ratios.items():
    print(f"step time {name}: {ratio:.3f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": device.device_kind, "backend": backend,
               "jax": jax.__version__, "size": args.size,
               "matmul_size": args.matmul_size, "matmul_flops_per_s": peak,
               "matmul_flops_per_s_measured": references, "rows": rows,
               "step_time_ratios": ratios}, f,
              indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
