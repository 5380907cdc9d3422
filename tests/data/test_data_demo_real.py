"""Checks on the real demo corpora, when `scripts/prepare_data.sh` has run."""
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "data")
PLAYS = os.path.join(ROOT, "gutenberg_plays")
CODE = os.path.join(ROOT, "stdlib_code")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.isdir(PLAYS) and os.path.isdir(CODE)),
                       reason="run scripts/prepare_data.sh first"),
]


def test_demo_corpora_tasks_and_round_trip():
  from brt.data import tasks, vocabularies
  name = tasks.register_gutenberg_plays(PLAYS)
  sizes = {s: len(tasks.get_documents(name, s)) for s in tasks.SPLITS}
  assert sizes == {"train": 65, "validation": 6, "test": 6}
  docs = tasks.get_documents(name, "validation")
  text = open(os.path.join(PLAYS, "validation", docs.names[0] + ".txt"),
              encoding="utf-8").read()
  assert vocabularies.byte_vocabulary().decode(docs[0][:-1].tolist()) == text
  code = tasks.register_stdlib_code(CODE)
  train = tasks.get_documents(code, "train")
  assert len(train) > 100 and "os" in train.names
