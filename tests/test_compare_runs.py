"""scripts/compare_runs.py: runs are paired by corpus and seed, and the
paired differences agree with the reports they come from."""

import json
import math
import os
import statistics
import sys

import numpy as np
import pytest

from brt.data.metrics import compute_metrics

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import compare_runs  # pylint: disable=wrong-import-position
import reproduce_table  # pylint: disable=wrong-import-position

STEPS = 20
TOKENS = {"0": 500, "1": 3000, "2": 1200}  # Test documents of unequal length.


def _report(rng, docs=TOKENS):
  """An eval report whose split metrics are its documents' totals, as
  brt.evaluation writes them."""
  losses = {d: float(rng.uniform(1.0, 2.0)) * n for d, n in docs.items()}
  per_document = {d: compute_metrics(losses[d], n, 2 * n, n // 5)
                  for d, n in docs.items()}
  total = sum(docs.values())
  return {"metrics": compute_metrics(sum(losses.values()), total, 2 * total,
                                     total // 5),
          "per_document": per_document}


def _write(out, corpus, variant, seed, report, withheld=False):
  workdir = reproduce_table.run_dir(str(out), corpus, variant, seed)
  os.makedirs(workdir, exist_ok=True)
  path = reproduce_table.report_path(workdir, STEPS, withheld)
  with open(path, "w") as f:
    json.dump(report, f)


def test_pairs_by_seed_and_agrees_with_the_reports(tmp_path):
  rng = np.random.default_rng(0)
  base = {s: _report(rng) for s in (0, 1, 2)}
  cand = {s: _report(rng) for s in (1, 2, 3)}
  for s, r in base.items():
    _write(tmp_path / "a", "plays_bytes", "xl", s, r)
  for s, r in cand.items():
    _write(tmp_path / "b", "plays_bytes", "rec_fixed_skip", s, r)
  # A run not yet evaluated after STEPS is not a seed of the comparison.
  os.makedirs(reproduce_table.run_dir(str(tmp_path / "b"), "plays_bytes",
                                      "rec_fixed_skip", 0))

  comparisons = compare_runs.main([
      "--steps", str(STEPS), "--baseline", str(tmp_path / "a"), "xl",
      "--candidate", str(tmp_path / "b"), "rec_fixed_skip",
      "--metric", "bits_per_byte", "--json", str(tmp_path / "c.json")])
  c = comparisons["plays_bytes"]
  assert c["seeds"] == [1, 2]  # Only seeds with reports on both sides.
  diffs = [cand[s]["metrics"]["bits_per_byte"] -
           base[s]["metrics"]["bits_per_byte"] for s in (1, 2)]
  for seed, diff in zip((1, 2), diffs):
    assert c["per_seed"][seed]["difference"] == pytest.approx(diff)
  # The mean of the differences is the difference of the means.
  assert c["mean_difference"] == pytest.approx(
      np.mean([cand[s]["metrics"]["bits_per_byte"] for s in (1, 2)]) -
      np.mean([base[s]["metrics"]["bits_per_byte"] for s in (1, 2)]))
  assert c["stderr"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
  assert c["candidate_ahead_seeds"] == sum(d < 0 for d in diffs)
  # Per seed, the documents' differences weighted by their lengths add up to
  # the split's difference.
  weights = np.array([TOKENS[d] for d in c["per_document"]], float)
  for i, diff in enumerate(diffs):
    per_doc = np.array([v["differences"][i]
                        for v in c["per_document"].values()])
    assert np.sum(per_doc * weights) / weights.sum() == pytest.approx(diff)
  assert json.loads((tmp_path / "c.json").read_text())[
      "comparisons"]["plays_bytes"]["seeds"] == [1, 2]


def test_a_run_against_itself_withheld_reads_the_withheld_report(tmp_path):
  rng = np.random.default_rng(1)
  carried, withheld = _report(rng), _report(rng)
  _write(tmp_path, "stdlib_bytes", "rec_fixed_skip", 0, carried)
  _write(tmp_path, "stdlib_bytes", "rec_fixed_skip", 0, withheld,
         withheld=True)
  side = [str(tmp_path), "rec_fixed_skip"]
  c = compare_runs.main(["--steps", str(STEPS), "--baseline", *side,
                         "--baseline_withheld", "--candidate", *side])
  assert c["stdlib_bytes"]["mean_difference"] == pytest.approx(
      carried["metrics"]["bits_per_token"] -
      withheld["metrics"]["bits_per_token"])
  assert c["stdlib_bytes"]["stderr"] is None  # One seed.
  ahead, share, docs = compare_runs.documents_ahead(c["stdlib_bytes"])
  expect = [d for d in TOKENS
            if carried["per_document"][d]["bits_per_token"] <
            withheld["per_document"][d]["bits_per_token"]]
  assert (ahead, docs) == (len(expect), len(TOKENS))
  assert share == pytest.approx(sum(TOKENS[d] for d in expect) /
                                sum(TOKENS.values()))


def test_bad_input_is_named(tmp_path):
  rng = np.random.default_rng(2)
  _write(tmp_path / "a", "plays_spm", "xl", 0, _report(rng))
  _write(tmp_path / "b", "plays_spm", "rmt", 0,
         _report(rng, {"0": 500, "7": 100}))
  sides = ["--baseline", str(tmp_path / "a"), "xl",
           "--candidate", str(tmp_path / "b"), "rmt"]
  with pytest.raises(ValueError, match="different documents"):
    compare_runs.main(["--steps", str(STEPS), *sides])
  with pytest.raises(SystemExit):  # Seed 1 has no runs.
    compare_runs.main(["--steps", str(STEPS), "--seeds", "0", "1", *sides])
  with pytest.raises(SystemExit):  # Nothing evaluated after 99 steps.
    compare_runs.main(["--steps", "99", *sides])
