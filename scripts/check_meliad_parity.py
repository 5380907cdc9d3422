r"""brt's converted models against the paper's own code, run side by side.

    python scripts/check_meliad_parity.py --meliad_src=DIR [--json=OUT.json]

DIR is a checkout of google-research/meliad at commit e8af054 (the BRT
release; nothing of it is part of brt). For every variant the script builds
meliad's DecoderStack from meliad's own gin files (base_htrans.gin and the
variant's recurrent/*.gin, at a small size), initialises it, runs three
consecutive segments through it with meliad's cache (a document starts in
both rows in the first segment, and in row 1 again in the second), converts
its parameters and operative gin config with brt.meliad.convert, runs the
same segments through brt with the carry, and prints the relative max
difference of the logits (max |brt - meliad| / max |meliad|) per segment.
It exits non-zero if any float32 difference is 1e-4 or more. bfloat16 is
reported too, for information (the two codes round in different places).

meliad's modules import under brt's jax/flax after one shim:
jax.random.KeyArray = jax.Array.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

# A small size that keeps every part of the model: 4 layers (the recurrent
# one third from the top, as meliad's -3), 4 heads of 16, window 16, 8
# states, segments of 4 windows.
SIZE = ["NUM_LAYERS = 4", "EMBED_DIM = 64", "NUM_HEADS = 4", "HEAD_DIM = 16",
        "MLP_DIM = 128", "NUM_EMBEDDINGS = 259"]
WINDOW, STATES, SEGMENT, BATCH = 16, 8, 64, 2

# name: (meliad's variant gin files, further bindings).
VARIANTS = {
    "XL:W": ([], []),
    "XL:4W": ([], [f"transformer_layer.TransformerLayer.window_length = "
                   f"{4 * WINDOW}"]),
    **{f"Rec:{gate}:{cell}": ([f"recurrent/{meliad_gate}_{cell}.gin"], [])
       for gate, meliad_gate in (("fixed", "bias"), ("lstm", "lstm"))
       for cell in ("skip", "single", "dual")},
    "Feedback:fixed:skip": (["recurrent/bias_skip.gin",
                             "recurrent/block_feedback_512.gin"],
                            [f"decoder_stack.DecoderStack.dstack_window_length"
                             f" = {WINDOW}"]),
    "Feedback:lstm:single": (["recurrent/lstm_single.gin",
                              "recurrent/block_feedback_512.gin"],
                             [f"decoder_stack.DecoderStack.dstack_window_length"
                              f" = {WINDOW}"]),
}


def import_meliad(src: str):
  import jax
  jax.random.KeyArray = jax.Array  # meliad's annotations name it.
  sys.path.insert(0, src)
  from transformer import decoder_stack  # pylint: disable=import-error
  return decoder_stack


def meliad_run(src, decoder_stack, files, bindings, dtype, segments, seed):
  """meliad's logits for each segment, its parameters and operative config."""
  import gin
  import jax
  import jax.numpy as jnp
  configs = os.path.join(src, "transformer", "configs")
  gin.clear_config()
  gin.add_config_file_search_path(configs)
  window = [f"transformer_layer.TransformerLayer.window_length = {WINDOW}",
            f"transformer_layer.TransformerLayer.recurrent_num_states = "
            f"{STATES}"]
  task = [f"decoder_stack.TransformerTaskConfig.sequence_length = {SEGMENT}",
          f"decoder_stack.TransformerTaskConfig.batch_size = {BATCH}",
          f'DTYPE = "{dtype}"']
  root = logging.getLogger()
  level, _ = root.level, root.setLevel(logging.CRITICAL)  # gin's search noise
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join(configs, "base_htrans.gin")]
        + [os.path.join(configs, f) for f in files],
        SIZE + task + window + bindings, skip_unknown=True)
  finally:
    root.setLevel(level)
  task_config = decoder_stack.TransformerTaskConfig()
  stack = decoder_stack.DecoderStack(mode="test", task_config=task_config)
  sos = jnp.ones((BATCH,), bool)
  variables = stack.init(
      {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(1)},
      jnp.asarray(segments[0][0]), None, sos)
  params, cache = variables["params"], variables["state"]
  apply = jax.jit(lambda p, c, t, s: stack.apply(
      {"params": p, "state": c}, t, None, s, mutable=["state"]))
  logits = []
  for tokens, starts in segments:
    (out, _, _), new = apply(params, cache, jnp.asarray(tokens),
                             jnp.asarray(starts))
    cache = new["state"]
    logits.append(np.asarray(out, np.float32))
  operative = gin.operative_config_str()
  gin.clear_config()
  return logits, jax.device_get(params), operative


def brt_run(params, operative, segments):
  import jax
  import jax.numpy as jnp
  import brt
  from brt import meliad
  cfg, variables = meliad.convert(params, operative)
  model = brt.BlockRecurrentTransformer(cfg)
  apply = jax.jit(lambda v, t, c, s: model.apply(v, t, c, start_of_sequence=s))
  carry, logits = model.initial_carry(BATCH), []
  for tokens, starts in segments:
    out, carry = apply(variables, jnp.asarray(tokens), carry,
                       jnp.asarray(starts))
    logits.append(np.asarray(out, np.float32))
  return cfg, logits


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--meliad_src", required=True,
                      help="a checkout of google-research/meliad at e8af054")
  parser.add_argument("--variants", nargs="+", default=sorted(VARIANTS),
                      choices=sorted(VARIANTS))
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.meliad_src, "transformer")):
    parser.error(f"{args.meliad_src} has no transformer/: give the root of a "
                 "meliad checkout (git checkout e8af054).")
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  decoder_stack = import_meliad(args.meliad_src)
  rng = np.random.RandomState(0)
  segments = [(rng.randint(1, 259, (BATCH, SEGMENT)).astype(np.int32),
               np.array([i == 0, i < 2])) for i in range(3)]
  rows, failed = [], False
  print(f"{'variant':22s} {'dtype':9s} relative max difference per segment")
  for name in args.variants:
    files, bindings = VARIANTS[name]
    for dtype in ("float32", "bfloat16"):
      want, params, operative = meliad_run(
          args.meliad_src, decoder_stack, files, bindings, dtype, segments,
          seed=len(rows))
      cfg, got = brt_run(params, operative, segments)
      diffs = [float(np.abs(g - w).max() / np.abs(w).max())
               for g, w in zip(got, want)]
      ok = dtype != "float32" or max(diffs) < 1e-4
      failed |= not ok
      rows.append({"variant": name, "dtype": dtype, "differences": diffs,
                   "recurrent_layers": list(cfg.recurrent_layers),
                   "feedback": cfg.feedback, "block_width": cfg.block_width,
                   "ok": ok})
      print(f"{name:22s} {dtype:9s} "
            + "  ".join(f"{d:.1e}" for d in diffs) + ("" if ok else "  FAIL"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"meliad_commit": "e8af054", "size": SIZE,
                 "window": WINDOW, "states": STATES, "segment": SEGMENT,
                 "batch": BATCH, "results": rows}, f, indent=1)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
