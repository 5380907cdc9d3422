"""GitHub-style code corpora: one document per repository.

Layout: `<data_dir>/<split>/<repository>/...`. A repository becomes one
document: its files in path order, each behind a header line naming its
path, so the model sees a whole project as one long context (the reason the
BRT paper trains on GitHub code). What a repository's `.gitignore` excludes,
vendored or generated folders, binaries and oversized files are left out.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional

from brt.data import ignore_rules
from brt.data.local_files import ReadStats, decode_utf8, split_dir

# Folders that hold other people's code, build output or tool state; their
# text would swamp the repository's own code. Virtual environments are
# recognised by their `pyvenv.cfg`, not by name (the stdlib has a package
# called `venv`).
DEFAULT_EXCLUDED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "vendor", "vendored",
    "third_party", "third-party", "bower_components", "__pycache__",
    "site-packages", ".tox", ".mypy_cache", ".pytest_cache", "build", "dist",
    ".idea", ".vscode",
})
FILE_HEADER = "<<< {path} >>>\n"
# git's own heuristic: a NUL byte in the first 8000 bytes means binary.
_BINARY_SNIFF_BYTES = 8000


def _list_files(repo_dir: str, exclude_dirs: Iterable[str],
                use_gitignore: bool, stats: ReadStats) -> list[str]:
  exclude_dirs = frozenset(exclude_dirs)
  ignores = ignore_rules.IgnoreStack()
  kept = []
  for dirpath, dirnames, filenames in os.walk(repo_dir):
    rel_dir = os.path.relpath(dirpath, repo_dir).replace(os.sep, "/")
    rel_dir = "" if rel_dir == "." else rel_dir
    ignores.pop_to(rel_dir)
    if use_gitignore and ".gitignore" in filenames:
      with open(os.path.join(dirpath, ".gitignore"), "rb") as f:
        rules = ignore_rules.parse(f.read().decode("utf-8", "replace"))
      ignores.push(rel_dir, rules)
    join = (lambda n: f"{rel_dir}/{n}") if rel_dir else (lambda n: n)
    keep_dirs = []
    for d in sorted(dirnames):
      full = os.path.join(dirpath, d)
      if (d in exclude_dirs or os.path.islink(full)
          or os.path.isfile(os.path.join(full, "pyvenv.cfg"))
          or ignores.ignored(join(d), is_dir=True)):
        stats.skip("skipped_excluded", full, "excluded folder", warn=False)
      else:
        keep_dirs.append(d)
    dirnames[:] = keep_dirs  # os.walk descends only into these
    for name in filenames:
      full = os.path.join(dirpath, name)
      if os.path.islink(full) or not os.path.isfile(full):
        continue
      if ignores.ignored(join(name), is_dir=False):
        stats.skip("skipped_excluded", full, "ignored by .gitignore",
                   warn=False)
        continue
      kept.append(join(name))
  return sorted(kept)


def read_repository(repo_dir: str, *,
                    extensions: Optional[Iterable[str]] = None,
                    max_file_bytes: Optional[int] = 1 << 20,
                    max_repo_bytes: Optional[int] = None,
                    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDED_DIRS,
                    use_gitignore: bool = True,
                    header: str = FILE_HEADER,
                    stats: Optional[ReadStats] = None) -> Optional[str]:
  """One repository as one document, or None if no file is left.

  Args:
    extensions: file-name endings to keep (e.g. (".py", ".pyi")); None keeps
      every text file.
    max_file_bytes: larger files (often generated or data) are skipped.
    max_repo_bytes: the document stops before the file that would pass this.
    header: format of the line before each file; `{path}` is its path.
  """
  stats = ReadStats() if stats is None else stats
  suffixes = tuple(extensions) if extensions is not None else None
  pieces = []
  total = 0
  for rel in _list_files(repo_dir, exclude_dirs, use_gitignore, stats):
    if suffixes is not None and not rel.endswith(suffixes):
      continue
    piece = _file_piece(os.path.join(repo_dir, rel), rel, max_file_bytes,
                        header, stats)
    if piece is None:
      continue
    size = len(piece.encode("utf-8"))
    if max_repo_bytes is not None and total + size > max_repo_bytes:
      stats.truncated_documents += 1
      break
    pieces.append(piece)
    total += size
  return "".join(pieces) if pieces else None


def _file_piece(path: str, rel: str, max_file_bytes: Optional[int],
                header: str, stats: ReadStats) -> Optional[str]:
  """A file's header and text, or None if it is too large, binary or not
  UTF-8."""
  size = os.path.getsize(path)
  if max_file_bytes is not None and size > max_file_bytes:
    stats.skip("skipped_too_large", path,
               f"{size} bytes > max_file_bytes={max_file_bytes}", warn=False)
    return None
  with open(path, "rb") as f:
    data = f.read()
  if b"\0" in data[:_BINARY_SNIFF_BYTES]:
    stats.skip("skipped_binary", path, "binary", warn=False)
    return None
  stats.files += 1
  text = decode_utf8(data, path, stats)
  if text is None:
    return None
  piece = header.format(path=rel) + text
  return piece if piece.endswith("\n") else piece + "\n"


def read_code_split(data_dir: str, split: str, *,
                    stats: Optional[ReadStats] = None,
                    **repo_kwargs) -> Iterator[tuple[str, str]]:
  """Yields (repository name, document) for each repository of a split.

  Each folder of `<data_dir>/<split>/` is a repository; a plain file there is
  taken as a one-file repository. `repo_kwargs` go to `read_repository`.
  """
  stats = ReadStats() if stats is None else stats
  directory = split_dir(data_dir, split)
  entries = sorted(e for e in os.listdir(directory) if not e.startswith("."))
  if not entries:
    raise ValueError(f"Split {split!r} is empty: no repository in "
                     f"{directory!r}.")
  for name in entries:
    path = os.path.join(directory, name)
    if os.path.isdir(path):
      text = read_repository(path, stats=stats, **repo_kwargs)
    elif name.endswith(tuple(repo_kwargs.get("extensions") or ("",))):
      text = _file_piece(path, name, repo_kwargs.get("max_file_bytes", 1 << 20),
                         repo_kwargs.get("header", FILE_HEADER), stats)
    else:
      continue
    if text is None:
      continue
    stats.documents += 1
    yield name, text
  if stats.documents == 0:
    raise ValueError(
        f"Split {split!r} of {data_dir!r} has no usable repository: every "
        f"file was filtered out or skipped ({stats.skipped_not_utf8} not "
        f"UTF-8, {stats.skipped_binary} binary, {stats.skipped_too_large} "
        "too large). Check the extensions filter.")
