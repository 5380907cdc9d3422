"""Reading local corpora: split directories, UTF-8 checks and skip counts.

A local corpus has PG19's layout: `<data_dir>/{train,validation,test}/`, and
in a text corpus (PG19, arXiv) one `.txt` file per document. A bad file must
not stop a long preparation run, so files that are not UTF-8 are skipped
with a warning and counted in `ReadStats`; a split with no document left is
an error, since training on nothing is never what was meant.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterator, Optional

SPLITS = ("train", "validation", "test")

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ReadStats:
  """What a reader kept and skipped, so a caller can report it."""
  documents: int = 0
  files: int = 0
  skipped_not_utf8: int = 0
  skipped_empty: int = 0
  skipped_binary: int = 0
  skipped_too_large: int = 0
  skipped_excluded: int = 0
  truncated_documents: int = 0
  skipped_paths: list[str] = dataclasses.field(default_factory=list)

  def skip(self, kind: str, path: str, why: str, warn: bool = True) -> None:
    """Counts a skipped file; `warn=False` for expected, routine skips."""
    setattr(self, kind, getattr(self, kind) + 1)
    if len(self.skipped_paths) < 100:
      self.skipped_paths.append(path)
    (log.warning if warn else log.debug)("Skipping %s: %s", path, why)


def split_dir(data_dir: str, split: str) -> str:
  """`<data_dir>/<split>`, or an error that says how to get it."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"Data directory {data_dir!r} does not exist. Prepare the demo "
        "corpora with `bash scripts/prepare_data.sh`, or point data_dir at a "
        f"directory holding {', '.join(s + '/' for s in SPLITS)}.")
  path = os.path.join(data_dir, split)
  if not os.path.isdir(path):
    present = sorted(e for e in os.listdir(data_dir)
                     if os.path.isdir(os.path.join(data_dir, e)))
    raise FileNotFoundError(
        f"Split {split!r} not found: {path!r} is not a directory "
        f"({data_dir!r} holds {present or 'no directories'}). Expected the "
        f"layout {data_dir}/{{{','.join(SPLITS)}}}/.")
  return path


def decode_utf8(data: bytes, path: str, stats: ReadStats) -> Optional[str]:
  """The text of a file, or None (with a warning and a count) if not UTF-8."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    stats.skip("skipped_not_utf8", path, f"not UTF-8 ({e.reason} at byte "
               f"{e.start})")
    return None
  # A byte-order mark is an encoding artefact, not part of the document.
  return text[1:] if text.startswith("\ufeff") else text


def read_text_split(data_dir: str, split: str, *, suffix: str = ".txt",
                    stats: Optional[ReadStats] = None
                    ) -> Iterator[tuple[str, str]]:
  """Yields (name, text) for each `<split>/*<suffix>` file, in name order."""
  stats = ReadStats() if stats is None else stats
  directory = split_dir(data_dir, split)
  names = sorted(n for n in os.listdir(directory) if n.endswith(suffix)
                 and os.path.isfile(os.path.join(directory, n)))
  if not names:
    raise ValueError(f"Split {split!r} is empty: no *{suffix} files in "
                     f"{directory!r}.")
  for name in names:
    path = os.path.join(directory, name)
    stats.files += 1
    with open(path, "rb") as f:
      text = decode_utf8(f.read(), path, stats)
    if text is None:
      continue
    if not text.strip():
      stats.skip("skipped_empty", path, "no text")
      continue
    stats.documents += 1
    yield name[:-len(suffix)] if suffix else name, text
  if stats.documents == 0:
    raise ValueError(
        f"Split {split!r} of {data_dir!r} has no usable document: all "
        f"{stats.files} files were skipped ({stats.skipped_not_utf8} not "
        f"UTF-8, {stats.skipped_empty} empty).")
