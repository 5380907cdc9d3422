"""scripts/reproduce_table.py: which runs get a withheld-state evaluation,
and how seeds are summarised into the table."""

import os
import sys

import gin
import pytest

from brt import configurables
from brt.config import ModelConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import reproduce_table  # pylint: disable=wrong-import-position

STATEFUL = {"rec_fixed_skip", "rec_lstm_dual", "feedback_fixed_skip", "rmt"}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("variant", sorted(reproduce_table.VARIANTS))
def test_run_config_reads_back_what_the_run_trained(variant, tmp_path):
  configurables.parse(["sizes/tiny.gin", f"variants/{variant}.gin"])
  trained = configurables.build(ModelConfig)
  (tmp_path / "config.gin").write_text(configurables.operative_config())
  gin.clear_config()
  read = reproduce_table.run_config(str(tmp_path))
  assert read == trained
  # XL:W, XL:4W and Slide pass on keys/values only: nothing to withhold.
  assert read.carries_state == (variant in STATEFUL)


def _report(bits_per_token, bits_per_byte, withheld=None):
  metrics = lambda t, b: {"metrics": {"bits_per_token": t, "bits_per_byte": b,
                                      "word_perplexity": 2.0 ** t}}
  report = metrics(bits_per_token, bits_per_byte)
  if withheld is not None:
    report["withheld_eval"] = metrics(*withheld)
  return report


def test_summary_is_mean_and_spread_over_seeds_with_withheld_state():
  seeds = [0, 3]
  results = {"plays_spm": {
      "xl": reproduce_table.summarise(
          [_report(6.0, 2.0), _report(6.5, 2.2)], seeds),
      "rec_fixed_skip": reproduce_table.summarise(
          [_report(5.5, 1.9, (6.0, 2.1)), _report(6.1, 2.1, (6.1, 2.2))],
          seeds),
      # A seed without the withheld evaluation: no withheld summary.
      "rmt": reproduce_table.summarise(
          [_report(7.0, 2.5, (7.5, 2.6)), _report(7.2, 2.6)], seeds)}}
  rec = results["plays_spm"]["rec_fixed_skip"]
  assert rec["seeds"] == 2
  assert rec["bits_per_token"] == pytest.approx((5.8, 0.6))
  assert rec["state_withheld"]["bits_per_token"] == pytest.approx((6.05, 0.1))
  assert rec["state_withheld"]["bits_per_byte"] == pytest.approx((2.15, 0.1))
  assert rec["per_seed"]["seed_3"]["bits_per_byte"] == 2.1
  assert rec["per_seed"]["seed_3"]["state_withheld"]["bits_per_token"] == 6.1
  assert "state_withheld" not in results["plays_spm"]["xl"]
  assert "state_withheld" not in results["plays_spm"]["rmt"]

  text = reproduce_table.table(results, ["plays_spm"],
                               ["xl", "rec_fixed_skip", "rmt"], withheld=True)
  header, rule, xl, rec_row, rmt = text.split("\n")
  columns = [c.strip() for c in header.strip("|").split("|")]
  assert columns[1:3] == ["PG19 tokens (plays_spm): bits/token",
                          "state withheld"]
  assert rule.count("---") == len(columns)
  assert [c.strip() for c in rec_row.strip("|").split("|")][1:3] == [
      "5.8000 ± 0.6000", "6.0500 ± 0.1000"]
  assert xl.split("|")[3].strip() == rmt.split("|")[3].strip() == "–"
  # Without the option the table keeps its four columns per corpus.
  plain = reproduce_table.table(results, ["plays_spm"], ["xl"])
  assert plain.split("\n")[0].count("|") == 6
