import logging

import pytest

from brt.data import code_repos, ignore_rules, local_files


def write(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)


# --- PG19-layout text directories -------------------------------------------


@pytest.fixture
def text_corpus(tmp_path):
  root = tmp_path / "pg19"
  write(root / "train" / "b.txt", "Second book.\n")
  write(root / "train" / "a.txt", "\ufeffFirst book, caf\u00e9.\n")
  write(root / "train" / "latin1.txt", "caf\xe9".encode("latin-1"))
  write(root / "train" / "blank.txt", "  \n")
  write(root / "train" / "notes.md", "not a book")
  write(root / "validation" / "v.txt", "Valid.")
  (root / "test").mkdir()
  return root


def test_text_split_in_name_order_skips_non_utf8_with_warning(text_corpus,
                                                              caplog):
  stats = local_files.ReadStats()
  with caplog.at_level(logging.WARNING):
    docs = list(local_files.read_text_split(str(text_corpus), "train",
                                            stats=stats))
  # The byte-order mark is dropped; other suffixes are not documents.
  assert docs == [("a", "First book, caf\u00e9.\n"), ("b", "Second book.\n")]
  assert stats.documents == 2 and stats.files == 4
  assert stats.skipped_not_utf8 == 1 and stats.skipped_empty == 1
  assert "latin1.txt" in caplog.text and "not UTF-8" in caplog.text


def test_text_split_errors(text_corpus, tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare_data.sh"):
    list(local_files.read_text_split(str(tmp_path / "nope"), "train"))
  with pytest.raises(FileNotFoundError, match="Split 'dev' not found"):
    list(local_files.read_text_split(str(text_corpus), "dev"))
  with pytest.raises(ValueError, match="'test' is empty"):
    list(local_files.read_text_split(str(text_corpus), "test"))
  write(text_corpus / "bad" / "x.txt", b"\xff\xfe\x00")
  with pytest.raises(ValueError, match="no usable document"):
    list(local_files.read_text_split(str(text_corpus), "bad"))


# --- .gitignore rules ---------------------------------------------------------


def test_gitignore_rules():
  rules = ignore_rules.parse("""
# comment
*.log
!keep.log
build/
/top.txt
docs/**/*.tmp
a?c.py
[Tt]emp*
""")
  m = lambda p, d=False: ignore_rules.match(rules, p, d)
  assert m("x.log") and m("deep/er/x.log")
  assert m("keep.log") is False  # negation: kept
  assert m("build", True) and m("sub/build", True)
  assert m("build") is None  # a file named build is not a directory
  assert m("top.txt") and m("sub/top.txt") is None  # anchored to the root
  assert m("docs/a/b/c.tmp") and m("docs/c.tmp") and m("other/c.tmp") is None
  assert m("abc.py") and m("abbc.py") is None
  assert m("Temp1") and m("temporary") and m("stemp") is None


# --- GitHub-style repositories ------------------------------------------------


@pytest.fixture
def code_corpus(tmp_path):
  root = tmp_path / "code"
  repo = root / "train" / "proj"
  write(repo / "setup.py", "setup()")
  write(repo / "pkg" / "__init__.py", "")
  write(repo / "pkg" / "core.py", "def f():\n  return 1\n")
  write(repo / "pkg" / "z.md", "# docs\n")
  write(repo / "pkg" / "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00binary")
  write(repo / "pkg" / "old.py", "x = '\xe9'".encode("latin-1"))
  write(repo / "pkg" / "huge.py", "x = 1\n" * 1000)
  write(repo / "pkg" / "gen_out.py", "generated = True\n")
  write(repo / "pkg" / ".gitignore", "gen_*.py\n")
  write(repo / ".gitignore", "*.log\nsecret/\n")
  write(repo / "run.log", "log line\n")
  write(repo / "secret" / "key.py", "KEY = 1\n")
  write(repo / "node_modules" / "dep" / "index.js", "module.exports = 1\n")
  write(repo / "third_party" / "lib.py", "vendored = True\n")
  write(repo / "env" / "pyvenv.cfg", "home = /usr/bin\n")
  write(repo / "env" / "lib" / "site.py", "installed = True\n")
  write(root / "train" / "other" / "main.py", "print('hi')\n")
  write(root / "train" / "single.py", "# one file\n")
  write(root / "validation" / "only_binary" / "a.bin", b"\x00\x01")
  return root


def test_repository_document_in_path_order_with_filters(code_corpus, caplog):
  stats = local_files.ReadStats()
  with caplog.at_level(logging.WARNING):
    doc = code_repos.read_repository(
        str(code_corpus / "train" / "proj"), extensions=(".py",),
        max_file_bytes=1000, stats=stats)
  # An empty file is its header alone.
  assert doc == ("<<< pkg/__init__.py >>>\n"
                 "<<< pkg/core.py >>>\n"
                 "def f():\n  return 1\n"
                 "<<< setup.py >>>\n"
                 "setup()\n")
  assert stats.skipped_not_utf8 == 1 and "old.py" in caplog.text
  assert stats.skipped_too_large == 1
  # gen_out.py by the nested .gitignore, run.log and secret/ by the root
  # one, node_modules/, third_party/ and the virtualenv env/ by default.
  assert stats.skipped_excluded == 6


def test_repository_without_extension_filter_skips_binaries(code_corpus):
  stats = local_files.ReadStats()
  doc = code_repos.read_repository(str(code_corpus / "train" / "proj"),
                                   max_file_bytes=None, stats=stats)
  assert "<<< pkg/z.md >>>\n# docs\n" in doc and "<<< .gitignore >>>" in doc
  assert "pkg/huge.py" in doc and "logo.png" not in doc
  assert "run.log" not in doc and stats.skipped_binary == 1


def test_repository_size_limit_stops_at_a_file_boundary(code_corpus):
  stats = local_files.ReadStats()
  doc = code_repos.read_repository(str(code_corpus / "train" / "proj"),
                                   extensions=(".py",), max_repo_bytes=70,
                                   stats=stats)
  # 24 + 41 bytes fit in 70; the next file would pass the limit.
  assert doc == ("<<< pkg/__init__.py >>>\n"
                 "<<< pkg/core.py >>>\ndef f():\n  return 1\n")
  assert stats.truncated_documents == 1


def test_code_split_one_document_per_repository(code_corpus):
  docs = dict(code_repos.read_code_split(str(code_corpus), "train",
                                         extensions=(".py",),
                                         max_file_bytes=1000))
  assert sorted(docs) == ["other", "proj", "single.py"]
  assert docs["other"] == "<<< main.py >>>\nprint('hi')\n"
  assert docs["single.py"] == "<<< single.py >>>\n# one file\n"
  with pytest.raises(ValueError, match="no usable repository"):
    list(code_repos.read_code_split(str(code_corpus), "validation"))
