r"""Plots loss against position in the document for several evaluated runs.

    python -m brt.plot_eval --out=loss_by_position.png --split=test \
        Rec:fixed:skip=workdirs/rec XL=workdirs/xl \
        step-300=workdirs/rec/eval_test_300.json

Each argument is LABEL=PATH, where PATH is an evaluation file written by
`python -m brt.main --mode=eval` or a workdir (its newest evaluation of
--split is used). One line per argument: recurrence should pay off late in
long documents, where the lines part.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", "loss_by_position.png", "PNG to write.")
_SPLIT = flags.DEFINE_string("split", "test",
                             "For workdir arguments: the split evaluated.")
_TITLE = flags.DEFINE_string("title", None, "Plot title.")


def find_eval_file(path: str, split: str) -> str:
  """`path` itself if it is a file, else the workdir's newest evaluation."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is neither an evaluation file nor a "
                            "workdir.")
  found = glob.glob(os.path.join(path, f"eval_{split}_*.json"))
  step = lambda f: int(re.search(r"_(\d+)\.json$", f).group(1))
  found = [f for f in found if re.search(r"_(\d+)\.json$", f)]
  if not found:
    raise FileNotFoundError(
        f"No eval_{split}_<step>.json in {path}: run `python -m brt.main "
        f"--workdir={path} --mode=eval --eval_split={split}` first.")
  return max(found, key=step)


def parse_curves(args: list[str], split: str) -> dict[str, "EvalResult"]:
  from brt.evaluation import EvalResult
  if not args:
    raise ValueError("Give at least one LABEL=PATH to plot.")
  curves = {}
  for arg in args:
    label, sep, path = arg.partition("=")
    if not sep or not label or not path:
      raise ValueError(f"{arg!r} is not LABEL=PATH (e.g. rec=workdirs/rec).")
    with open(find_eval_file(path, split)) as f:
      curves[label] = EvalResult.from_json(json.load(f))
  return curves


def main(argv) -> None:
  from brt.evaluation import plot_loss_by_position
  try:
    curves = parse_curves(argv[1:], _SPLIT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  title = _TITLE.value or f"{_SPLIT.value}: loss against position"
  plot_loss_by_position(curves, _OUT.value, title=title)
  for label, result in curves.items():
    print(f"{label}: {result.metrics['bits_per_token']:.4f} bits/token, "
          f"{result.metrics.get('bits_per_byte', float('nan')):.4f} bits/byte")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
