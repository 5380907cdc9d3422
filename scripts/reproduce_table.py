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

With --withhold_state, every model that carries a state (recurrent layers
or RMT memory tokens) is evaluated a second time with it withheld: every
block starts from the initial state while the previous block's keys/values
stay visible, so the difference is what the state is worth. It gets a
column of its own in the table.

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


def brt_main(workdir, args):
  """`python -m brt.main --workdir=<workdir> <args>`; raises on failure."""
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "brt.main", f"--workdir={workdir}", *args],
      cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"{workdir} failed:\n{result.stderr[-3000:]}")


def run_config(workdir):
  """The ModelConfig a run trained with, from its operative config.gin."""
  import gin
  from brt import configurables
  from brt.config import ModelConfig
  from brt.experiment import CONFIG_FILE
  gin.clear_config()
  configurables.parse_saved(os.path.join(workdir, CONFIG_FILE))
  return configurables.build(ModelConfig)


def run_dir(out, corpus, variant, seed):
  """The workdir of one (corpus, variant, seed) run under `out`."""
  return os.path.join(out, f"{corpus}-{variant}-s{seed}")


def report_path(workdir, steps, withheld=False):
  """A run's test-split evaluation after `steps`, or the one with its
  state withheld."""
  suffix = "_state_withheld" if withheld else ""
  return os.path.join(workdir, f"eval_test_{steps}{suffix}.json")


def run_one(out, size, corpus, variant, seed, steps, extra, withhold_state):
  """Trains and evaluates one run; returns its eval report, with the
  report of the evaluation with the state withheld under "withheld_eval"
  when asked for and the model carries a state."""
  workdir = run_dir(out, corpus, variant, seed)
  report = report_path(workdir, steps)
  if not os.path.exists(report):
    params = [f"TrainConfig.num_steps = {steps}", f"TrainConfig.seed = {seed}",
              "TrainConfig.log_every = 50", "TrainConfig.eval_every = 0",
              f"TrainConfig.checkpoint_every = {max(steps // 2, 1)}",
              "TrainConfig.eval_batch_size = 6",
              "TrainConfig.eval_segment_length = 1024",
              "OptimizerConfig.warmup_steps = 50", *extra]
    start = time.time()
    brt_main(workdir, [f"--gin_file=sizes/{size}.gin",
                       f"--gin_file=variants/{variant}.gin",
                       f"--gin_file={CORPORA[corpus][0]}", "--mode=train",
                       *(f"--gin_param={p}" for p in params)])
    brt_main(workdir, ["--mode=eval", "--eval_split=test"])
    print(f"  {corpus} {variant} seed {seed}: {time.time() - start:.0f} s",
          flush=True)
  with open(report) as f:
    result = json.load(f)
  if not withhold_state:
    return result
  withheld = report_path(workdir, steps, withheld=True)
  if not os.path.exists(withheld):
    cfg = run_config(workdir)
    if not cfg.carries_state:
      return result
    # Every block restarts from the initial state, so segments are one
    # block long (brt.evaluation.Evaluator).
    brt_main(workdir, [
        "--mode=eval", "--eval_split=test",
        "--gin_param=TrainConfig.eval_withhold_state = True",
        f"--gin_param=TrainConfig.eval_segment_length = {cfg.block_width}"])
  with open(withheld) as f:
    result["withheld_eval"] = json.load(f)
  return result


METRICS = ("bits_per_token", "bits_per_byte", "word_perplexity")


def summarise(reports, seeds):
  """{metric: (mean, max - min)} over seeds, the number of seeds and each
  seed's metrics; the same for the state withheld where every seed has it."""
  def mean_spread(values):
    values = np.asarray(values)
    return float(values.mean()), float(values.max() - values.min())

  out = {"seeds": len(reports)}
  for metric in METRICS:
    out[metric] = mean_spread([r["metrics"][metric] for r in reports])
  out["per_seed"] = {f"seed_{s}": {m: r["metrics"][m] for m in METRICS}
                     for s, r in zip(seeds, reports)}
  if all("withheld_eval" in r for r in reports):
    out["state_withheld"] = {
        m: mean_spread([r["withheld_eval"]["metrics"][m] for r in reports])
        for m in METRICS}
    for s, r in zip(seeds, reports):
      out["per_seed"][f"seed_{s}"]["state_withheld"] = {
          m: r["withheld_eval"]["metrics"][m] for m in METRICS}
  return out


def table(results, corpora, variants, withheld=False):
  """Markdown, a row per variant; `mean ± spread` where there are seeds
  enough for a spread; with `withheld`, a column of bits/token with the
  state withheld after each corpus's bits/token."""
  heads = ["bits/token", *(["state withheld"] if withheld else []),
           "bits/byte", "word ppl", "seeds"]
  lines = ["| model | " + " | ".join(
      f"{CORPORA[c][1]} ({c}): " + " | ".join(heads) for c in corpora) + " |",
           "|---|" + "---|" * len(heads) * len(corpora)]
  for v in variants:
    cells = []
    for c in corpora:
      s = results.get(c, {}).get(v)
      if s is None:
        cells += ["–"] * len(heads)
        continue
      fmt = lambda r, m, f: (f"{r[m][0]:{f}} ± {r[m][1]:{f}}"
                             if s["seeds"] > 1 else f"{r[m][0]:{f}}")
      cells.append(fmt(s, "bits_per_token", ".4f"))
      if withheld:
        cells.append(fmt(s["state_withheld"], "bits_per_token", ".4f")
                     if "state_withheld" in s else "–")
      cells += [fmt(s, "bits_per_byte", ".4f"),
                fmt(s, "word_perplexity", ".1f"), str(s["seeds"])]
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
    results[corpus] = {v: summarise(r, args.seeds) for v, r in runs.items()}
    plot_loss_by_position(
        {VARIANTS[v]: EvalResult.from_json(r[0]) for v, r in runs.items()},
        os.path.join(out, f"loss_by_position_{corpus}.png"),
        title=f"{CORPORA[corpus][1]} stand-in ({corpus}), test split, "
        f"first seed")
  text = table(results, args.corpora, args.variants, args.withhold_state)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"steps": args.steps, "size": args.size,
               "gin_params": args.gin_param, "date": time.strftime("%Y-%m-%d"),
               "results": results}, f, indent=1)
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
  parser.add_argument("--withhold_state", action="store_true",
                      help="also evaluate every model that carries a state "
                      "with it withheld (every block starts from the initial "
                      "state): what the state is worth")
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
                    args.gin_param, args.withhold_state))
        text = write_results(args.out, reports, args)
  print(text)


if __name__ == "__main__":
  main()
