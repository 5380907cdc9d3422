"""A `.gitignore` matcher (the common subset of git's rules).

Supported: comments, blank lines, `!` negation, a trailing `/` for
directories only, anchoring by a leading or inner `/`, `*`, `?`, `[...]` and
`**`. Patterns of a `.gitignore` apply below its own directory, and a deeper
file's rules override a shallower one's, as in git: the last match wins.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Rule:
  regex: re.Pattern
  negate: bool
  dir_only: bool
  anchored: bool


def _translate(glob: str) -> str:
  out = []
  i = 0
  while i < len(glob):
    c = glob[i]
    if glob.startswith("**/", i):
      out.append("(?:.*/)?")
      i += 3
    elif glob.startswith("**", i):
      out.append(".*")
      i += 2
    elif c == "*":
      out.append("[^/]*")
      i += 1
    elif c == "?":
      out.append("[^/]")
      i += 1
    elif c == "[":
      end = glob.find("]", i + 2)
      if end < 0:
        out.append(re.escape(c))
        i += 1
        continue
      body = glob[i + 1:end]
      if body.startswith("!"):
        body = "^" + body[1:]
      out.append("[" + body.replace("\\", "\\\\") + "]")
      i = end + 1
    elif c == "\\" and i + 1 < len(glob):
      out.append(re.escape(glob[i + 1]))
      i += 2
    else:
      out.append(re.escape(c))
      i += 1
  return "".join(out)


def parse(text: str) -> list[Rule]:
  rules = []
  for line in text.splitlines():
    line = line.rstrip()
    if not line or line.startswith("#"):
      continue
    negate = line.startswith("!")
    if negate:
      line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
      continue
    anchored = "/" in line
    line = line.lstrip("/")
    rules.append(Rule(re.compile(_translate(line) + r"\Z"), negate, dir_only,
                      anchored))
  return rules


def match(rules: list[Rule], rel_path: str, is_dir: bool):
  """True/False if the last rule matching `rel_path` ignores/keeps it; None
  if no rule matches. `rel_path` is relative to the rules' directory."""
  result = None
  name = rel_path.rsplit("/", 1)[-1]
  for rule in rules:
    if rule.dir_only and not is_dir:
      continue
    if rule.regex.match(rel_path if rule.anchored else name):
      result = not rule.negate
  return result


class IgnoreStack:
  """The `.gitignore` rules in force while walking down a repository."""

  def __init__(self):
    self._levels: list[tuple[str, list[Rule]]] = []

  def push(self, rel_dir: str, rules: list[Rule]) -> None:
    self._levels.append((rel_dir, rules))

  def pop_to(self, rel_dir: str) -> None:
    """Drops levels that are not ancestors of (or equal to) `rel_dir`."""
    while self._levels and not _is_within(rel_dir, self._levels[-1][0]):
      self._levels.pop()

  def ignored(self, rel_path: str, is_dir: bool) -> bool:
    verdict = False
    for base, rules in self._levels:
      if not _is_within(rel_path, base):
        continue
      sub = rel_path[len(base) + 1:] if base else rel_path
      m = match(rules, sub, is_dir)
      if m is not None:
        verdict = m
    return verdict


def _is_within(path: str, base: str) -> bool:
  return base == "" or path == base or path.startswith(base + "/")
