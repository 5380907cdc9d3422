"""Paired comparison of two models from scripts/reproduce_table.py runs.

reproduce_table.py gives every variant the same data order for a seed, so
a baseline and a candidate run with the same corpus and seed differ only in
the model: their difference is paired. The seed moves both models together
(on the code corpus at 2000 steps XL:W by 0.21 bits/byte over four seeds,
while its difference to Rec:fixed:skip moved by 0.06), so the paired
difference and its standard error over seeds say more than two means with
their spreads.

For every corpus with runs on both sides, this prints each seed's
candidate - baseline (negative: the candidate is better), the mean with its
standard error, and the documents of the test split on which the candidate
is ahead in every seed; then a line over all corpora. The two sides may
live in different `--out` directories, so models trained with different
gin settings compare as well (e.g. XL:W with qk_norm against Rec with
qk_norm and state dropout):

  .venv/bin/python scripts/compare_runs.py --steps 2000 \\
      --baseline workdirs/repro2000_qknorm xl \\
      --candidate workdirs/repro2000_qknorm_state_dropout rec_fixed_skip

With --candidate_withheld (or --baseline_withheld) a side is read from the
evaluation with the state withheld (reproduce_table.py --withhold_state);
a run against itself withheld is what its state is worth, per document.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproduce_table  # pylint: disable=wrong-import-position

METRICS = ("bits_per_token", "bits_per_byte")


def seeds_with_reports(out, corpus, variant, steps, withheld=False):
  """The seeds of `variant`'s runs on `corpus` under `out` that have the
  evaluation asked for, sorted."""
  pattern = reproduce_table.run_dir(out, corpus, variant, "*")
  seeds = []
  for workdir in glob.glob(pattern):
    match = re.fullmatch(r".*-s(\d+)", workdir)
    if match and os.path.exists(
        reproduce_table.report_path(workdir, steps, withheld)):
      seeds.append(int(match.group(1)))
  return sorted(seeds)


def load_report(out, corpus, variant, seed, steps, withheld=False):
  path = reproduce_table.report_path(
      reproduce_table.run_dir(out, corpus, variant, seed), steps, withheld)
  with open(path) as f:
    return json.load(f)


def paired(baseline, candidate, seeds, metric="bits_per_token"):
  """Candidate - baseline over seeds, from two lists of eval reports (one
  per seed, in the order of `seeds`).

  Returns per seed (baseline, candidate, difference); the mean difference,
  its standard error (None with one seed) and the number of seeds the
  candidate is ahead in; and per document the difference in each seed
  with the documents' token counts.
  """
  if len(baseline) != len(seeds) or len(candidate) != len(seeds):
    raise ValueError("one report per seed on each side")
  per_seed = {}
  for seed, base, cand in zip(seeds, baseline, candidate):
    b, c = base["metrics"][metric], cand["metrics"][metric]
    per_seed[seed] = {"baseline": b, "candidate": c, "difference": c - b}
  diffs = np.array([v["difference"] for v in per_seed.values()])
  stderr = (float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
            if len(diffs) > 1 else None)

  docs = baseline[0]["per_document"]
  for seed, base, cand in zip(seeds, baseline, candidate):
    if set(base["per_document"]) != set(docs) or set(
        cand["per_document"]) != set(docs):
      raise ValueError(
          f"seed {seed}: the runs were evaluated on different documents; "
          "evaluate all of them on the same split of the same data "
          "(python -m brt.main --mode=eval --eval_split=test)")
  per_document = {
      doc: {"differences": [c["per_document"][doc][metric] -
                            b["per_document"][doc][metric]
                            for b, c in zip(baseline, candidate)],
            "num_tokens": docs[doc]["num_tokens"]}
      for doc in sorted(docs, key=int)}
  return {"metric": metric, "seeds": list(seeds), "per_seed": per_seed,
          "mean_difference": float(diffs.mean()), "stderr": stderr,
          "candidate_ahead_seeds": int(np.sum(diffs < 0)),
          "per_document": per_document}


def documents_ahead(comparison):
  """(documents where the candidate is ahead in every seed, their share of
  the test tokens, the number of documents)."""
  docs = comparison["per_document"]
  ahead = [d for d, v in docs.items() if all(x < 0 for x in v["differences"])]
  tokens = sum(v["num_tokens"] for v in docs.values())
  share = sum(docs[d]["num_tokens"] for d in ahead) / tokens if tokens else 0.0
  return len(ahead), share, len(docs)


def describe(corpus, comparison):
  """Lines of text for one corpus."""
  lines = [f"{corpus} ({comparison['metric']}):"]
  for seed, v in comparison["per_seed"].items():
    lines.append(f"  seed {seed}: baseline {v['baseline']:.4f}  candidate "
                 f"{v['candidate']:.4f}  difference {v['difference']:+.4f}")
  n = len(comparison["seeds"])
  stderr = comparison["stderr"]
  lines.append(
      f"  mean difference {comparison['mean_difference']:+.4f}"
      + (f" ± {stderr:.4f} (standard error)" if stderr is not None else "")
      + f"; candidate ahead in {comparison['candidate_ahead_seeds']} of {n} "
      "seeds")
  ahead, share, docs = documents_ahead(comparison)
  lines.append(f"  documents where the candidate is ahead in every seed: "
               f"{ahead} of {docs} ({share:.0%} of the test tokens)")
  return lines


def verdict(comparisons):
  """One line over all corpora."""
  n = len(comparisons)
  ahead = sum(c["mean_difference"] < 0 for c in comparisons.values())
  clear = sum(c["stderr"] is not None and
              c["mean_difference"] + 2 * c["stderr"] < 0
              for c in comparisons.values())
  return (f"candidate ahead on the mean in {ahead} of {n} corpora, by more "
          f"than two standard errors in {clear}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--baseline", nargs=2, required=True,
                      metavar=("OUT", "VARIANT"))
  parser.add_argument("--candidate", nargs=2, required=True,
                      metavar=("OUT", "VARIANT"))
  parser.add_argument("--baseline_withheld", action="store_true")
  parser.add_argument("--candidate_withheld", action="store_true")
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--corpora", nargs="+",
                      default=list(reproduce_table.CORPORA),
                      choices=list(reproduce_table.CORPORA))
  parser.add_argument("--seeds", nargs="+", type=int,
                      help="default: every seed with runs on both sides")
  parser.add_argument("--metric", default="bits_per_token", choices=METRICS)
  parser.add_argument("--json", help="also write the comparison here")
  args = parser.parse_args(argv)

  sides = ((*args.baseline, args.baseline_withheld),
           (*args.candidate, args.candidate_withheld))
  comparisons = {}
  for corpus in args.corpora:
    found = [seeds_with_reports(out, corpus, variant, args.steps, withheld)
             for out, variant, withheld in sides]
    seeds = sorted(set(found[0]) & set(found[1]))
    if args.seeds:
      missing = sorted(set(args.seeds) - set(seeds))
      if missing:
        parser.error(f"{corpus}: no pair of runs with seed {missing[0]} "
                     f"evaluated after {args.steps} steps (baseline seeds "
                     f"{found[0]}, candidate seeds {found[1]}); train them "
                     "with scripts/reproduce_table.py")
      seeds = list(args.seeds)
    if not seeds:
      continue
    reports = [[load_report(out, corpus, variant, s, args.steps, withheld)
                for s in seeds] for out, variant, withheld in sides]
    comparisons[corpus] = paired(*reports, seeds, args.metric)
  if not comparisons:
    parser.error(f"no corpus has runs on both sides evaluated after "
                 f"{args.steps} steps (looked for <OUT>/<corpus>-<VARIANT>-s<seed>/"
                 f"eval_test_{args.steps}.json); check --steps and the "
                 "directories")
  for corpus, comparison in comparisons.items():
    print("\n".join(describe(corpus, comparison)))
  print(verdict(comparisons))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"baseline": list(sides[0]), "candidate": list(sides[1]),
                 "steps": args.steps, "comparisons": comparisons}, f,
                indent=1)
  return comparisons


if __name__ == "__main__":
  main()
