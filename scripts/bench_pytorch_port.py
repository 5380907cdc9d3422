"""Side by side with the PyTorch port, in one run on the same machine.

The port is `block-recurrent-transformer-pytorch==0.4.4` with
`torch==2.13.0`, installed by this script into its own virtualenv
(`.venv-port`, ignored by git; nothing of the port is kept in this
repository). Both models take the bench config: bytes, 6 layers, d_model
512, 8 heads x 64, a 2048-wide MLP (the port's GEGLU with ff_mult 4 has the
same matmul FLOPs), W 128, 128 states, the recurrent layer 5th of 6,
segments of 1024.

brt runs twice:
- "matched": the port's architecture as far as brt's options reach it
  (`MATCHED`): one key/value head shared by all query heads (the port's
  to_kv is dim_head * 2 wide), no biases and scale-only layer norms, rotary
  positions. The port's rotary also carries xPos scaling, and it normalises
  queries and keys in its recurrent layer only (brt's qk_norm is all layers
  or none: off here). Its gate has a d x d projection brt's fixed gate does
  not. This is the like-for-like comparison.
- "default": brt's defaults (a key/value head per query head, biases, T5
  relative positions): about 16% more matmul FLOPs per token than the port.

- Sampling, batch 1: 512 new tokens after a 1024-token prompt. The port's
  own protocol: one forward pass over the prompt (which yields its memories
  and states), then `generate`, which re-runs the forward pass over the
  growing segment for every token. brt: `Sampler` (prefill, then the
  incremental decoder). Timed: the new tokens, best of `--repeats`.
- Training, batch 4: one segment of 1024 tokens, forward + backward + an
  Adam update, median step time after a warm-up. Both sides also report the
  matmul FLOPs of a training step as computed (the port's counted by
  torch's FlopCounterMode, brt's from brt/flops.py) and the FLOP rate each
  achieves, which separates "does less work" from "runs its work faster".

- `--dtype bfloat16` trains both sides in mixed precision: brt with
  ModelConfig.dtype="bfloat16" (bf16 products accumulated in float32,
  float32 parameters; brt/linear.py), the port under
  `torch.autocast("cpu", dtype=torch.bfloat16)`. Sampling stays float32.

- On a GPU host both sides run on the GPU: brt on jax's default device,
  the port on CUDA when torch sees one (autocast then on "cuda", and the
  clocks read after a synchronize). `--port_python` names an interpreter
  that already has torch and the port (e.g. one without network access to
  build `.venv-port`).

  .venv/bin/python scripts/bench_pytorch_port.py
  .venv/bin/python scripts/bench_pytorch_port.py --dtype bfloat16
  .venv/bin/python scripts/bench_pytorch_port.py --new_tokens 128 --train_steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT_VENV = os.path.join(ROOT, ".venv-port")
PORT_PACKAGES = ["torch==2.13.0", "einops>=0.6.1", "beartype", "packaging",
                 "numpy"]
# The port's wheel asks for memorizing-transformers-pytorch (and through it
# faiss-gpu) but never imports it, so it is installed without dependencies.
PORT = "block-recurrent-transformer-pytorch==0.4.4"

CONFIG = dict(vocab=256, layers=6, d_model=512, heads=8, head_dim=64,
              block=128, states=128, recurrent_layer=4, segment=1024)
# brt's options that take the port's architecture (see the docstring): the
# block window, masked empty cache, LayerNorm, GELU and an untied output
# layer of brt's classic model, without biases, with one key/value head and
# rotary positions.
# (brt.config.CLASSIC is read where brt is imported: the port's side runs
# where only torch is installed.)
MATCHED = dict(multi_query=True, use_bias=False, position="rotary")
BRT_MODELS = {"matched": MATCHED, "default": {}}


def brt_options(name: str) -> dict:
  from brt.config import CLASSIC
  return dict(CLASSIC, **MATCHED) if name == "matched" else {}


def ensure_port_venv() -> str:
  python = os.path.join(PORT_VENV, "bin", "python")
  if not os.path.exists(python):
    subprocess.run([sys.executable, "-m", "venv", PORT_VENV], check=True)
  check = subprocess.run([python, "-c", "import block_recurrent_transformer_"
                          "pytorch, torch"], capture_output=True)
  if check.returncode:
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run(pip + PORT_PACKAGES, check=True)
    subprocess.run(pip + ["--no-deps", PORT], check=True)
  return python


# --- the port (runs inside .venv-port: torch only) -----------------------------


def port_child(args) -> dict:
  import torch
  from block_recurrent_transformer_pytorch import (BlockRecurrentTransformer,
                                                    RecurrentTrainerWrapper)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(os.cpu_count())

  def clock():  # CUDA runs asynchronously: wait for it before reading the time
    if device.type == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter()

  torch.manual_seed(0)
  c = CONFIG
  model = BlockRecurrentTransformer(
      num_tokens=c["vocab"], dim=c["d_model"], depth=c["layers"],
      dim_head=c["head_dim"], heads=c["heads"], ff_mult=4,
      max_seq_len=c["segment"], block_width=c["block"],
      num_state_vectors=c["states"],
      recurrent_layers=(c["recurrent_layer"] + 1,)).to(device)  # 1-based there

  prompt = torch.randint(0, c["vocab"], (1, c["segment"]), device=device)
  best = float("inf")
  for _ in range(args.repeats):
    model.eval()
    with torch.no_grad():
      _, memories, states = model(prompt, return_memories_and_states=True)
      start = clock()
      out = model.generate(prompt[:, -1:], length=args.new_tokens + 1,
                           xl_memories=memories, states=states)
      best = min(best, clock() - start)
  assert out.shape[-1] == args.new_tokens

  wrapper = RecurrentTrainerWrapper(model)
  wrapper.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  seq = torch.randint(0, c["vocab"], (4, c["segment"] + 1), device=device)
  from torch.utils.flop_counter import FlopCounterMode
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=args.dtype == "bfloat16")
  with FlopCounterMode(display=False) as counter:
    with autocast:
      loss = wrapper(seq)
    loss.backward()
  optimizer.zero_grad()
  times = []
  for i in range(args.train_steps + 1):
    start = clock()
    with autocast:
      loss = wrapper(seq)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if i:  # the first step warms up
      times.append(clock() - start)
  return {"sample_tokens_per_s": args.new_tokens / best,
          "train_tokens_per_s": 4 * c["segment"] / statistics.median(times),
          "train_flops_per_step": counter.get_total_flops(),
          "torch": torch.__version__,
          "device": (torch.cuda.get_device_name() if device.type == "cuda"
                     else "cpu"),
          "params": sum(p.numel() for p in model.parameters())}


# --- brt (this venv) ------------------------------------------------------------


def brt_side(args, options: dict, products: str) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import brt
  from brt.flops import train_flops_per_token
  from brt.sampling import Sampler, SamplingConfig
  from brt.trainer import TrainState, make_train_step

  c = CONFIG
  cfg = brt.ModelConfig(
      vocab_size=c["vocab"], num_layers=c["layers"], d_model=c["d_model"],
      num_heads=c["heads"], mlp_dim=2048, block_width=c["block"],
      num_states=c["states"], recurrent_layers=(c["recurrent_layer"],),
      **options)
  execution = brt.ExecutionConfig(products=products)
  model = brt.BlockRecurrentTransformer(cfg, execution)
  # Trained in --dtype; sampled in float32 (the same parameters serve both).
  train_model = brt.BlockRecurrentTransformer(
      dataclasses.replace(cfg, dtype=args.dtype), execution)
  variables = nn.meta.unbox(jax.jit(model.init)(
      jax.random.PRNGKey(0), jnp.zeros((1, c["block"]), jnp.int32),
      model.initial_carry(1)))

  sampler = Sampler(model, variables)
  prompt = np.random.RandomState(0).randint(0, c["vocab"], (1, c["segment"]))
  dec, last = sampler.prefill(prompt)
  loop = sampler._loop(args.new_tokens, SamplingConfig())  # pylint: disable=protected-access
  rng = jax.random.PRNGKey(0)
  jax.block_until_ready(loop(variables, dec, last, rng))  # compile
  best = float("inf")
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(loop(variables, dec, last, rng))
    best = min(best, time.perf_counter() - start)

  tx = optax.adam(1e-4)
  params = variables["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     carry=train_model.initial_carry(4),
                     rng=jax.random.PRNGKey(1))
  step = jax.jit(make_train_step(train_model, tx))
  seq = np.random.RandomState(1).randint(0, c["vocab"], (4, c["segment"] + 1))
  batch = {"inputs": jnp.asarray(seq[:, :-1], jnp.int32),
           "targets": jnp.asarray(seq[:, 1:], jnp.int32),
           "loss_mask": jnp.ones((4, c["segment"]), jnp.float32),
           "start_of_sequence": jnp.zeros((4,), bool)}
  times = []
  for i in range(args.train_steps + 1):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    if i:
      times.append(time.perf_counter() - start)
  return {"sample_tokens_per_s": args.new_tokens / best,
          "train_tokens_per_s": 4 * c["segment"] / statistics.median(times),
          "train_flops_per_step": 4 * c["segment"] * train_flops_per_token(cfg),
          "jax": jax.__version__,
          "device": jax.devices()[0].device_kind,
          "params": sum(int(np.prod(x.shape))
                        for x in jax.tree_util.tree_leaves(params))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--new_tokens", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--train_steps", type=int, default=5)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                      default="float32", help="training precision, both sides")
  parser.add_argument("--brt_models", nargs="+", choices=sorted(BRT_MODELS),
                      default=["matched", "default"],
                      help="which brt models to run (see the docstring)")
  parser.add_argument("--out", default=None,
                      help="default bench_results/pytorch_port[_bfloat16].json")
  parser.add_argument("--port_python", default=None,
                      help="an interpreter with torch and the port installed; "
                           "default: build .venv-port")
  parser.add_argument("--products", nargs="+", default=["xla_cpu", "plain"],
                      choices=("xla_cpu", "plain"),
                      help="brt's ExecutionConfig.products, each measured")
  parser.add_argument("--_port_child", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._port_child:  # pylint: disable=protected-access
    # The port's interpreter has torch and the port only, not brt.
    print("RESULT" + json.dumps(port_child(args)))
    return
  from brt import xla_cpu
  xla_cpu.tune_xla_flags()  # Before jax starts its CPU backend.

  python = args.port_python or ensure_port_venv()
  child = [python, __file__, "--_port_child",
           f"--new_tokens={args.new_tokens}", f"--repeats={args.repeats}",
           f"--train_steps={args.train_steps}", f"--dtype={args.dtype}"]
  # One after the other, never at once: each gets every core.
  port = json.loads(subprocess.run(child, check=True, capture_output=True,
                                   text=True).stdout.split("RESULT")[-1])
  sides = {f"brt {name}:{products}": brt_side(args, brt_options(name),
                                               products)
           for name in args.brt_models for products in args.products}
  sides["port"] = port
  for side in sides.values():
    side["train_gflops_per_s"] = (side["train_flops_per_step"] / 1e9
                                  * side["train_tokens_per_s"]
                                  / (4 * CONFIG["segment"]))
  first = next(iter(sides.values()))
  print(f"brt on {first['device']}, port on {port['device']}; "
        f"training in {args.dtype}, sampling in float32")
  ours = [name for name in sides if name != "port"]
  print(f"{'':28s}" + "".join(f"{name:>22s}" for name in sides)
        + "".join(f"{name.split()[-1] + '/port':>22s}" for name in ours))
  for key, label, scale in (
      ("sample_tokens_per_s", "sampling tokens/s (batch 1)", 1),
      ("train_tokens_per_s", "training tokens/s (batch 4)", 1),
      ("train_flops_per_step", "training GFLOP per step", 1e-9),
      ("train_gflops_per_s", "training GFLOP/s achieved", 1),
      ("params", "parameters (M)", 1e-6)):
    print(f"{label:28s}"
          + "".join(f"{side[key] * scale:22.1f}" for side in sides.values())
          + "".join(f"{sides[name][key] / port[key]:22.2f}" for name in ours))
  out = args.out or ("bench_results/pytorch_port"
                      + ("" if args.dtype == "float32" else f"_{args.dtype}")
                      + ".json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump({"config": CONFIG, "new_tokens": args.new_tokens,
               "train_dtype": args.dtype,
               "brt_options": {n: brt_options(n) for n in args.brt_models},
               **{name.replace(" ", "_"): side
                  for name, side in sides.items()}}, f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
