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


BIN = 256


def _report(rng, docs=TOKENS, position_bin=BIN):
  """An eval report whose split metrics and loss-by-position bins are its
  documents' per-token losses summed, as brt.evaluation writes them."""
  token_losses = {d: rng.uniform(1.0, 2.0, n) for d, n in docs.items()}
  losses = {d: float(v.sum()) for d, v in token_losses.items()}
  per_document = {d: compute_metrics(losses[d], n, 2 * n, n // 5)
                  for d, n in docs.items()}
  total = sum(docs.values())
  bins = -(-max(docs.values()) // position_bin)
  loss_sum, count = np.zeros(bins), np.zeros(bins)
  for v in token_losses.values():
    which = np.arange(len(v)) // position_bin
    np.add.at(loss_sum, which, v)
    np.add.at(count, which, 1)
  return {"metrics": compute_metrics(sum(losses.values()), total, 2 * total,
                                     total // 5),
          "per_document": per_document, "position_bin": position_bin,
          "position_loss_sum": loss_sum.tolist(),
          "position_count": count.tolist()}


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


def test_differences_by_position_add_up_to_the_split(tmp_path):
  rng = np.random.default_rng(3)
  base = [_report(rng) for _ in range(3)]
  cand = [_report(rng) for _ in range(3)]
  for s in range(3):
    _write(tmp_path / "a", "stdlib_bytes", "xl", s, base[s])
    _write(tmp_path / "b", "stdlib_bytes", "rec_fixed_skip", s, cand[s])
  png = tmp_path / "by_position.png"
  c = compare_runs.main([
      "--steps", str(STEPS), "--baseline", str(tmp_path / "a"), "xl",
      "--candidate", str(tmp_path / "b"), "rec_fixed_skip",
      "--plot", str(png)])["stdlib_bytes"]
  pos = c["by_position"]
  longest = max(TOKENS.values())
  assert pos["starts"] == list(range(0, longest, BIN))
  # Bin k holds positions [k*BIN, (k+1)*BIN) of every document reaching it.
  assert pos["num_tokens"] == [
      sum(min(BIN, max(0, n - start)) for n in TOKENS.values())
      for start in pos["starts"]]
  weights = np.array(pos["num_tokens"])
  for seed, row in zip(c["seeds"], pos["differences"]):
    assert np.dot(row, weights) / weights.sum() == pytest.approx(
        c["per_seed"][seed]["difference"])
  # The plot merges the bins into groups that double in length, [0, 1),
  # [1, 3), [3, 7), ... bins, each the token-weighted mean of its bins.
  x, groups = compare_runs._doubling_groups(pos)  # pylint: disable=protected-access
  assert groups.shape == (3, 4)  # 12 bins: [0, 1), [1, 3), [3, 7), [7, 12).
  assert np.all(np.diff(x) > 0)
  rows = np.array(pos["differences"])
  assert groups[:, 0] == pytest.approx(rows[:, 0])
  assert groups[:, 1] == pytest.approx(
      (rows[:, 1:3] * weights[1:3]).sum(axis=1) / weights[1:3].sum())
  assert png.stat().st_size > 0


def test_position_bins_must_hold_the_same_tokens(tmp_path):
  rng = np.random.default_rng(4)
  _write(tmp_path / "a", "plays_bytes", "xl", 0, _report(rng))
  _write(tmp_path / "b", "plays_bytes", "rmt", 0,
         _report(rng, position_bin=128))
  unbinned = _report(rng)
  del unbinned["position_count"]
  _write(tmp_path / "c", "plays_bytes", "rmt", 0, unbinned)
  steps = ["--steps", str(STEPS), "--baseline", str(tmp_path / "a"), "xl"]
  with pytest.raises(ValueError, match="position bin"):
    compare_runs.main([*steps, "--candidate", str(tmp_path / "b"), "rmt"])
  # Reports written before the bins compare, but have nothing to plot.
  c = compare_runs.main([*steps, "--candidate", str(tmp_path / "c"), "rmt"])
  assert c["plays_bytes"]["by_position"] is None
  with pytest.raises(SystemExit):
    compare_runs.main([*steps, "--candidate", str(tmp_path / "c"), "rmt",
                       "--plot", str(tmp_path / "p.png")])


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
