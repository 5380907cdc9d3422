r"""The entry point: train, evaluate or sample from gin-configured experiments.

    python -m brt.main --workdir=workdirs/demo --mode=train_and_eval \
        --gin_file=sizes/tiny.gin --gin_file=variants/rec_fixed_skip.gin \
        --gin_file=tasks/gutenberg_plays_bytes.gin \
        --gin_param='TrainConfig.num_steps = 500'

    python -m brt.main --workdir=workdirs/demo --mode=eval --eval_split=test
    python -m brt.main --workdir=workdirs/demo --mode=generate --prompt='ROMEO.'

Several --gin_file and --gin_param may be given; later ones win. Gin files
are looked up as given, in --gin_search_paths, then in configs/. In eval and
generate modes without --gin_file, the workdir's operative config.gin is
used. Rerunning a training command in the same workdir resumes it.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

_GIN_FILE = flags.DEFINE_multi_string(
    "gin_file", [], "Gin config files; later ones override earlier ones.")
_GIN_PARAM = flags.DEFINE_multi_string(
    "gin_param", [], "Gin bindings, e.g. 'TrainConfig.num_steps = 100'.")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", [], "Directories to look up gin files in.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and config.",
    required=True)
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "train_and_eval", "generate"],
    "What to do.")
_JAX_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() first (multi-host GPU/TPU runs).")
_EVAL_SPLIT = flags.DEFINE_string(
    "eval_split", None, "eval mode: the split (default DataConfig.eval_split).")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "eval and generate modes: the checkpoint to use "
    "(default: the newest one that verifies).")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "train modes: start from the parameters of another "
    "run (its workdir, or WORKDIR/checkpoints/STEP), with a fresh optimizer "
    "state; sets TrainConfig.init_from.")
_PROMPT = flags.DEFINE_string("prompt", None, "generate mode: text to continue.")
_PROMPT_FILE = flags.DEFINE_string(
    "prompt_file", None, "generate mode: a file whose text to continue.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 256,
                                   "generate mode: tokens to sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 = no top-k filter.")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "1 = no nucleus filter.")
_SEED = flags.DEFINE_integer("seed", 0, "generate mode: sampling seed.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full stack trace of configuration errors.")


def run(argv) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    # orbax and jax log every step of every save at INFO; the trainer prints
    # its own progress. --verbosity=0 brings their logs back.
    logging.set_verbosity(logging.WARNING)
  # Imported here so that --help answers without loading jax and TensorFlow.
  from brt import startup, xla_cpu
  xla_cpu.tune_xla_flags()  # Before jax starts a backend.
  startup.quiet_tensorflow()
  import jax
  if _JAX_DISTRIBUTED.value:
    jax.distributed.initialize()
  from brt import configurables
  from brt.experiment import CONFIG_FILE, Experiment
  from brt.sampling import SamplingConfig

  mode, workdir = _MODE.value, _WORKDIR.value
  gin_params = list(_GIN_PARAM.value)
  if _INIT_FROM.value:
    if not mode.startswith("train"):
      raise ValueError("--init_from is for the train modes; --mode=eval and "
                       "generate read the run's own checkpoints.")
    gin_params.append(
        f"TrainConfig.init_from = {os.path.abspath(_INIT_FROM.value)!r}")
  if _CHECKPOINT_STEP.value is not None and mode not in ("eval", "generate"):
    raise ValueError(
        "--checkpoint_step is for --mode=eval and --mode=generate; training "
        "resumes from the workdir's newest checkpoint.")
  gin_files = list(_GIN_FILE.value)
  if not gin_files and mode in ("eval", "generate"):
    saved = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(saved):
      raise FileNotFoundError(
          f"No --gin_file given and no {saved}: point --workdir at a trained "
          "run or give the run's gin files.")
    configurables.parse_saved(saved, gin_params, _GIN_SEARCH_PATHS.value)
  else:
    configurables.parse(gin_files, gin_params, _GIN_SEARCH_PATHS.value)
  exp = Experiment.from_gin(workdir, write_config=mode.startswith("train"))

  if mode.startswith("train"):
    exp.train(with_eval=mode == "train_and_eval")
  elif mode == "eval":
    out = exp.evaluate(_EVAL_SPLIT.value,
                       checkpoint_step=_CHECKPOINT_STEP.value)
    print(f"wrote {out['path']}")
  else:
    prompt = _PROMPT.value
    if _PROMPT_FILE.value:
      with open(_PROMPT_FILE.value, encoding="utf-8") as f:
        prompt = f.read()
    sampling = SamplingConfig(temperature=_TEMPERATURE.value,
                              top_k=_TOP_K.value, top_p=_TOP_P.value,
                              stop_token=exp.vocabulary.eos_id)
    text = exp.generate(prompt or "", _NUM_TOKENS.value, sampling,
                        seed=_SEED.value,
                        checkpoint_step=_CHECKPOINT_STEP.value)
    print(prompt + text)


def main(argv) -> None:
  from brt.checkpoints import (DamagedCheckpointError,
                               IncompatibleCheckpointError)
  from brt.configurables import GinConfigError
  from brt.trainer import NonFiniteLossError
  try:
    run(argv)
  except (GinConfigError, IncompatibleCheckpointError, DamagedCheckpointError,
          NonFiniteLossError, FileNotFoundError, ValueError) as e:
    if _TRACEBACK.value:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
