"""A small-scale reproduction of the paper's Table 1 on the demo corpora.

Every (corpus, variant, seed) is one `python -m brt.main` run in its own
workdir: the same size (configs/sizes/tiny.gin unless --size), steps and
data order for every variant, then whole-document evaluation of the test
split. The table is laid out like the paper's (a row per variant, a column
per corpus), as the mean over seeds with the seed-to-seed spread
(max - min), and one loss-against-position plot per corpus.

  bash scripts/prepare_data.sh data --tokenize bytes spm   # once
  .venv/bin/python scripts/reproduce_table.py              # all of it
  .venv/bin/python scripts/reproduce_table.py --corpora plays_bytes \\
      --variants xl rec_fixed_skip --seeds 0 1 --steps 300

Runs that finished are not repeated (their eval file is reused) and
unfinished ones resume from their checkpoints, so the script can be stopped
and started again. Runs go seed by seed, and the table, JSON and plots are
rewritten after each run (<out>/table.md, results.json, *.png), so a run
cut short still leaves a table of what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CORPORA = {  # name -> (task gin file, the paper's column it stands in for)
    "plays_bytes": ("tasks/gutenberg_plays_bytes.gin", "PG19 bytes"),
    "plays_spm": ("tasks/gutenberg_plays_spm.gin", "PG19 tokens"),
    "stdlib_bytes": ("tasks/stdlib_code_bytes.gin", "GitHub"),
}
VARIANTS = {  # gin variant file -> the paper's name
    "xl": "XL:W", "xl_4w": "XL:4W", "slide": "Slide",
    "rec_fixed_skip": "Rec:fixed:skip", "rec_lstm_dual": "Rec:lstm:dual",
    "feedback_fixed_skip": "Feedback:fixed:skip", "rmt": "RMT",
}


def run_one(out, size, corpus, variant, seed, steps, extra):
  """Trains and evaluates one run; returns its eval report."""
  workdir = os.path.join(out, f"{corpus}-{variant}-s{seed}")
  report = os.path.join(workdir, f"eval_test_{steps}.json")
  if os.path.exists(report):
    with open(report) as f:
      return json.load(f)
  params = [f"TrainConfig.num_steps = {steps}", f"TrainConfig.seed = {seed}",
            "TrainConfig.log_every = 50", "TrainConfig.eval_every = 0",
            f"TrainConfig.checkpoint_every = {max(steps // 2, 1)}",
            "TrainConfig.eval_batch_size = 6",
            "TrainConfig.eval_segment_length = 1024",
            "OptimizerConfig.warmup_steps = 50", *extra]
  base = [sys.executable, "-m", "brt.main", f"--workdir={workdir}"]
  gin = [f"--gin_file=sizes/{size}.gin", f"--gin_file=variants/{variant}.gin",
         f"--gin_file={CORPORA[corpus][0]}"]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             TF_CPP_MIN_LOG_LEVEL="2")
  start = time.time()
  for args in ([*gin, "--mode=train", *(f"--gin_param={p}" for p in params)],
               ["--mode=eval", "--eval_split=test"]):
    result = subprocess.run(base + args, cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{workdir} failed:\n{result.stderr[-3000:]}")
  print(f"  {corpus} {variant} seed {seed}: {time.time() - start:.0f} s",
        flush=True)
  with open(report) as f:
    return json.load(f)


def summarise(reports):
  """{metric: (mean, max - min)} over seeds, and the number of seeds."""
  out = {"seeds": len(reports)}
  for metric in ("bits_per_token", "bits_per_byte", "word_perplexity"):
    values = np.array([r["metrics"][metric] for r in reports])
    out[metric] = (float(values.mean()), float(values.max() - values.min()))
  return out


def table(results, corpora, variants):
  """Markdown, a row per variant; `mean ± spread` where there are seeds
  enough for a spread."""
  lines = ["| model | " + " | ".join(
      f"{CORPORA[c][1]} ({c}): bits/token | bits/byte | word ppl | seeds"
      for c in corpora) + " |",
           "|---|" + "---|---|---|---|" * len(corpora)]
  for v in variants:
    cells = []
    for c in corpora:
      s = results.get(c, {}).get(v)
      if s is None:
        cells += ["–"] * 4
        continue
      fmt = lambda m, f: (f"{s[m][0]:{f}} ± {s[m][1]:{f}}" if s["seeds"] > 1
                          else f"{s[m][0]:{f}}")
      cells += [fmt("bits_per_token", ".4f"), fmt("bits_per_byte", ".4f"),
                fmt("word_perplexity", ".1f"), str(s["seeds"])]
    lines.append(f"| {VARIANTS[v]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(out, reports, args):
  """The table, JSON and plots from the runs finished so far."""
  from brt.evaluation import EvalResult, plot_loss_by_position
  results = {}
  for corpus in args.corpora:
    runs = {v: reports[corpus, v] for v in args.variants
            if reports.get((corpus, v))}
    if not runs:
      continue
    results[corpus] = {v: summarise(r) for v, r in runs.items()}
    plot_loss_by_position(
        {VARIANTS[v]: EvalResult.from_json(r[0]) for v, r in runs.items()},
        os.path.join(out, f"loss_by_position_{corpus}.png"),
        title=f"{CORPORA[corpus][1]} stand-in ({corpus}), test split, "
        f"first seed")
  text = table(results, args.corpora, args.variants)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"steps": args.steps, "size": args.size, "results": results},
              f, indent=1)
  return text


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--corpora", nargs="+", default=list(CORPORA),
                      choices=list(CORPORA))
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--gin_param", action="append", default=[],
                      help="extra binding for every run")
  parser.add_argument("--out", default=os.path.join(ROOT, "workdirs",
                                                    "reproduce"))
  args = parser.parse_args()
  missing = [v for v in args.variants
             if not os.path.exists(os.path.join(ROOT, "configs", "variants",
                                                f"{v}.gin"))]
  if missing:
    parser.error(f"no configs/variants/{missing[0]}.gin in this checkout")
  os.makedirs(args.out, exist_ok=True)

  # Seed-major: every variant's first seed comes before any second seed,
  # so a run cut short still gives a whole table (with fewer seeds).
  reports = {}
  for seed in args.seeds:
    for corpus in args.corpora:
      for variant in args.variants:
        reports.setdefault((corpus, variant), []).append(
            run_one(args.out, args.size, corpus, variant, seed, args.steps,
                    args.gin_param))
        text = write_results(args.out, reports, args)
  print(text)


if __name__ == "__main__":
  main()
