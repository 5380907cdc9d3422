"""What gin can configure, and parsing gin files with errors that help.

An experiment is a few gin files (size x variant x task, see configs/) plus
`--gin_param` overrides. They bind the fields of five dataclasses, each
constructed once by the entry point:

    ModelConfig.num_layers = 12          # brt.config
    ExecutionConfig.remat = 'full'       # brt.execution
    TrainConfig.batch_size = 8           # brt.trainer
    OptimizerConfig.learning_rate = 0.01 # brt.optim
    DataConfig.task = @gutenberg_plays() # below; the task registers itself

and the task functions of brt.data.tasks (`gutenberg_plays.data_dir = ...`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import re
from typing import Sequence

import gin

from brt.config import ModelConfig
from brt import execution
from brt.execution import ExecutionConfig
from brt.optim import OptimizerConfig
from brt.trainer import TrainConfig

# Where `include 'sizes/tiny.gin'` and --gin_file=... are looked up.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which registered seqio task to train and evaluate on.

  In gin, the task is the value of a task function, which registers it:
      DataConfig.task = @gutenberg_plays()
      gutenberg_plays.data_dir = 'data/gutenberg_plays'
  """
  task: str
  train_split: str = "train"
  eval_split: str = "validation"


_REGISTERED = False


def build(cls):
  """An instance of a registered config class with the gin bindings applied."""
  register()
  return gin.get_configurable(cls)()


def _quiet_gin_file_search(record: logging.LogRecord) -> bool:
  # gin tries every search path for every include and logs each miss as an
  # error, though a later path finds the file; a real miss still raises.
  return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


def register() -> None:
  """Makes the project's configurables known to gin (idempotent)."""
  global _REGISTERED
  if _REGISTERED:
    return
  from brt.data import tasks  # TensorFlow and seqio: only when configuring.
  for cls in (ModelConfig, ExecutionConfig, TrainConfig, OptimizerConfig,
              DataConfig):
    gin.external_configurable(cls, module="brt")
  for name, fn in (("pg19_local", tasks.register_pg19_local),
                   ("pg19_tfds", tasks.register_pg19_tfds),
                   ("arxiv_local", tasks.register_arxiv_local),
                   ("arxiv_tfds", tasks.register_arxiv_tfds),
                   ("github_local", tasks.register_github_local),
                   ("gutenberg_plays", tasks.register_gutenberg_plays),
                   ("stdlib_code", tasks.register_stdlib_code),
                   ("copy_task", tasks.register_copy),
                   ("retrieval_task", tasks.register_retrieval),
                   ("passkey_task", tasks.register_passkey)):
    gin.external_configurable(fn, name=name, module="brt.data")
  logging.getLogger().addFilter(_quiet_gin_file_search)
  _REGISTERED = True


class GinConfigError(ValueError):
  """A gin file or binding names something that does not exist."""


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings (later ones win), after registering.

  Files are looked up as given, then in each search path, then in configs/.
  Unknown configurables or parameters raise GinConfigError naming the
  nearest valid names.
  """
  register()
  for path in [*search_paths, CONFIGS_DIR]:
    # gin appends a search path each time it is added, duplicates included.
    if path not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
      gin.add_config_file_search_path(path)
  files = [_find(f, search_paths) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, gin_params,
                                        finalize_config=False)
  except (ValueError, KeyError) as e:
    raise GinConfigError(explain(e)) from None


def parse_saved(path: str, gin_params: Sequence[str] = (),
                search_paths: Sequence[str] = ()) -> None:
  """Parses a workdir's operative config (then `gin_params`), written by
  this or an earlier brt: execution settings that ModelConfig held then are
  read as the ExecutionConfig bindings they became."""
  with open(path, encoding="utf-8") as f:
    text = execution.upgrade_bindings(f.read())
  parse((), [text, *gin_params], search_paths)


def _find(path: str, search_paths: Sequence[str]) -> str:
  for base in ("", *search_paths, CONFIGS_DIR):
    candidate = os.path.join(base, path)
    if os.path.isfile(candidate):
      return candidate
  raise GinConfigError(
      f"gin file {path!r} not found (looked in the current directory, "
      f"{', '.join([*search_paths, CONFIGS_DIR])}). "
      f"Available: {', '.join(available_gin_files()[:40])}")


def available_gin_files() -> list[str]:
  found = []
  for root, _, names in os.walk(CONFIGS_DIR):
    found += [os.path.relpath(os.path.join(root, n), CONFIGS_DIR)
              for n in names if n.endswith(".gin")]
  return sorted(found)


def _configurables() -> dict[str, list[str]]:
  """Configurable name -> its parameter names (gin's registry)."""
  out = {}
  for selector, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    try:
      params = list(inspect.signature(configurable.wrapped).parameters)
    except (TypeError, ValueError):
      params = []
    out[selector] = params
    out.setdefault(configurable.name, params)
  return out


def explain(error: Exception) -> str:
  """gin's message, plus the nearest valid names where one was misspelt."""
  message = str(error).strip()
  known = _configurables()
  hint = ""
  if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named "
                    r"'(\w+)'", message):
    params = known.get(m.group(1), [])
    close = difflib.get_close_matches(m.group(2), params, n=3, cutoff=0.5)
    moved = execution.LEGACY_MODEL_FIELDS.get(m.group(2))
    if m.group(1).endswith("ModelConfig") and moved:
      close = [f"ExecutionConfig.{moved[0]}"]
    hint = (f"Did you mean {_or(close)}?\n" if close else "") + (
        f"{m.group(1)} takes: {', '.join(p for p in params if p != 'self')}.")
  elif m := re.search(r"No configurable matching '([\w.]+)'", message):
    names = sorted({k.split(".")[-1] for k in known})
    close = difflib.get_close_matches(m.group(1).split(".")[-1], names, n=3,
                                      cutoff=0.5)
    hint = (f"Did you mean {_or(close)}?\n" if close else "") + (
        f"Configurable here: {', '.join(names)}.")
  return f"{message}\n{hint}" if hint else message


def _or(names):
  return " or ".join(repr(n) for n in names)


def operative_config() -> str:
  return gin.operative_config_str()
