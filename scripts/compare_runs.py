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

With --plot PNG it also draws, per corpus, the difference in bits per
token against the position in the documents (each seed, their mean and a
band of one standard error): where in a long document the candidate wins.
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

from brt.data.metrics import LN2

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
          "per_document": per_document,
          "by_position": by_position(baseline, candidate, seeds)}


def by_position(baseline, candidate, seeds):
  """Candidate - baseline in bits per token in each position bin of the
  documents (the reports' loss-by-position bins), one row per seed; None
  when a report has no bins (written before brt.evaluation kept them).

  The bins must hold the same tokens on both sides, as they do for runs
  evaluated on the same split: then each row, weighted by the bins' token
  counts, averages to that seed's bits-per-token difference.
  """
  reports = [*baseline, *candidate]
  if any("position_count" not in r for r in reports):
    return None
  first = reports[0]
  count = np.asarray(first["position_count"], np.float64)
  for seed, r in zip(list(seeds) * 2, reports):
    if (r["position_bin"] != first["position_bin"] or
        not np.array_equal(r["position_count"], count)):
      raise ValueError(
          f"seed {seed}: the runs' loss-by-position bins hold different "
          "tokens; evaluate all of them on the same split of the same data "
          "with the same position bin")
  keep = count > 0
  mean_bits = lambda r: (np.asarray(r["position_loss_sum"])[keep] /
                         count[keep] / LN2)
  return {"position_bin": int(first["position_bin"]),
          "starts": (np.flatnonzero(keep) * first["position_bin"]).tolist(),
          "num_tokens": count[keep].tolist(),
          "differences": [(mean_bits(c) - mean_bits(b)).tolist()
                          for b, c in zip(baseline, candidate)]}


def _doubling_groups(pos):
  """The position bins merged into groups that double in length (bins
  [0, 1), [1, 3), [3, 7), ...), token-weighted: the few long documents
  make single far bins noisy. Returns each group's mean position and the
  differences (seeds, groups)."""
  starts = np.asarray(pos["starts"])
  _, group = np.unique(np.floor(np.log2(starts // pos["position_bin"] + 1)),
                       return_inverse=True)
  weight = np.asarray(pos["num_tokens"])
  mean = lambda v: np.bincount(group, weight * v) / np.bincount(group, weight)
  return (mean(starts + pos["position_bin"] / 2),
          np.array([mean(row) for row in np.asarray(pos["differences"])]))


def plot_by_position(comparisons, path, title=None):
  """A PNG with one panel per corpus: each seed's difference by position,
  their mean and a one-standard-error band; below zero the candidate wins."""
  import matplotlib  # Imported here: only --plot needs it.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(comparisons), squeeze=False,
                           figsize=(5 * len(comparisons), 3.8))
  for ax, (corpus, c) in zip(axes[0], comparisons.items()):
    x, diffs = _doubling_groups(c["by_position"])
    for row in diffs:
      ax.plot(x, row, color="0.7", linewidth=0.8)
    mean = diffs.mean(axis=0)
    ax.plot(x, mean, color="C0", marker=".",
            label=f"mean of {len(diffs)} seeds")
    if len(diffs) > 1:
      se = diffs.std(axis=0, ddof=1) / math.sqrt(len(diffs))
      ax.fill_between(x, mean - se, mean + se, color="C0", alpha=0.25,
                      label="± one standard error")
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("position in document (tokens)")
    ax.set_ylabel("candidate − baseline, bits per token")
    ax.set_title(corpus)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


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
  parser.add_argument("--plot", metavar="PNG",
                      help="also draw the difference against the position "
                      "in the documents here")
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
  unbinned = [c for c, v in comparisons.items() if v["by_position"] is None]
  if args.plot and unbinned:
    parser.error(f"{unbinned[0]}: a report has no loss-by-position bins, so "
                 "--plot has nothing to draw; evaluate the runs again "
                 "(python -m brt.main --mode=eval)")
  for corpus, comparison in comparisons.items():
    print("\n".join(describe(corpus, comparison)))
  print(verdict(comparisons))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"baseline": list(sides[0]), "candidate": list(sides[1]),
                 "steps": args.steps, "comparisons": comparisons}, f,
                indent=1)
  if args.plot:
    title = (f"{args.candidate[1]} − {args.baseline[1]} after "
             f"{args.steps} steps")
    print(f"wrote {plot_by_position(comparisons, args.plot, title)}")
  return comparisons


if __name__ == "__main__":
  main()
