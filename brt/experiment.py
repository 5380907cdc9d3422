"""An experiment: the gin-configured model, data and trainer in one workdir.

The entry point (brt/main.py) only parses flags; everything it runs lives
here, so that a test or a notebook can do the same:

    configurables.parse(["sizes/tiny.gin", "variants/rec_fixed_skip.gin",
                         "tasks/gutenberg_plays_bytes.gin"])
    exp = Experiment.from_gin("workdirs/demo")
    exp.train(with_eval=True)
    exp.evaluate("test")
    print(exp.generate("ROMEO.", num_tokens=200))
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np

from brt import configurables
from brt.config import ModelConfig
from brt.configurables import DataConfig
from brt.execution import ExecutionConfig
from brt.data import pipeline
from brt.evaluation import plot_loss_by_position
from brt.optim import OptimizerConfig
from brt.sampling import Sampler, SamplingConfig
from brt.trainer import TrainConfig, Trainer

CONFIG_FILE = "config.gin"  # The operative gin config, in the workdir.
# Every start's operative config, kept: <workdir>/config_history/NNN.gin.
CONFIG_HISTORY = "config_history"


def prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file, not a directory: "
                     "choose another path, or move the file away.")
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise FileNotFoundError(
        f"The parent of --workdir={workdir} does not exist ({parent}). "
        "Create it first, or choose a workdir in an existing directory.")
  os.makedirs(workdir, exist_ok=True)
  return workdir


@dataclasses.dataclass
class Experiment:
  workdir: str
  model_config: ModelConfig
  train_config: TrainConfig
  optimizer_config: OptimizerConfig
  data_config: DataConfig
  execution_config: ExecutionConfig = ExecutionConfig()

  @classmethod
  def from_gin(cls, workdir: str, write_config: bool = True) -> "Experiment":
    """Builds the configs from the parsed gin bindings (registering the
    task), checks they fit together, and writes the operative config."""
    workdir = prepare_workdir(workdir)
    exp = cls(workdir, *(configurables.build(c) for c in (
        ModelConfig, TrainConfig, OptimizerConfig, DataConfig,
        ExecutionConfig)))
    exp.check_vocabulary()
    if write_config and jax.process_index() == 0:
      text = configurables.operative_config()
      with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(text)
      history = os.path.join(workdir, CONFIG_HISTORY)
      os.makedirs(history, exist_ok=True)
      with open(os.path.join(history, f"{len(os.listdir(history)):03d}.gin"),
                "w") as f:
        f.write(text)
    return exp

  def hyperparameters(self) -> dict:
    """Every config field, flat (TensorBoard's hparams)."""
    flat = {}
    for config in (self.model_config, self.train_config,
                   self.optimizer_config, self.data_config,
                   self.execution_config):
      for name, value in dataclasses.asdict(config).items():
        if not isinstance(value, (bool, int, float, str)):
          value = str(value)
        flat[f"{type(config).__name__}.{name}"] = value
    return flat

  @property
  def vocabulary(self):
    import seqio
    task = seqio.get_mixture_or_task(self.data_config.task)
    return task.output_features["targets"].vocabulary

  def check_vocabulary(self):
    size = self.vocabulary.vocab_size
    if size > self.model_config.vocab_size:
      raise ValueError(
          f"Task {self.data_config.task!r} has a vocabulary of {size} tokens "
          f"but ModelConfig.vocab_size={self.model_config.vocab_size}; set "
          f"ModelConfig.vocab_size = {size} (or more).")

  # -- pieces ---------------------------------------------------------------------
  def trainer(self, verbose: bool = True) -> Trainer:
    writer = None
    if jax.process_index() == 0:
      from clu import metric_writers
      writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(
          os.path.join(self.workdir, "tensorboard")))
    return Trainer(self.model_config, self.train_config,
                   self.optimizer_config, self.workdir,
                   execution=self.execution_config, writer=writer,
                   verbose=verbose)

  def train_batches(self):
    cfg = self.train_config
    return pipeline.train_batches(
        self.data_config.task, batch_size=cfg.batch_size,
        segment_length=cfg.segment_length, split=self.data_config.train_split,
        seed=cfg.seed, shard_index=jax.process_index(),
        num_shards=jax.process_count())

  def eval_batches(self, split: Optional[str] = None):
    cfg = self.train_config
    return pipeline.eval_batches(
        self.data_config.task, batch_size=cfg.eval_rows,
        segment_length=cfg.eval_length,
        split=split or self.data_config.eval_split,
        shard_index=jax.process_index(), num_shards=jax.process_count())

  # -- modes ----------------------------------------------------------------------
  def train(self, with_eval: bool = False):
    trainer = self.trainer()
    if trainer.writer is not None:
      trainer.writer.write_hparams(self.hyperparameters())
      trainer.writer.write_texts(0, {
          "operative_config": "```\n" + configurables.operative_config()
                              + "\n```"})
    try:
      return trainer.train(self.train_batches(),
                           self.eval_batches if with_eval else None,
                           eval_split=self.data_config.eval_split)
    finally:
      trainer.close()

  def _restored(self, verbose: bool = True, step: Optional[int] = None):
    trainer = self.trainer(verbose)
    try:
      if trainer.checkpointer.latest_step() is None:
        raise FileNotFoundError(
            f"No checkpoint in {trainer.checkpointer.directory}: train first "
            "(--mode=train) or point --workdir at a trained run.")
      return trainer, trainer.restore_or_init(step=step)
    except BaseException:
      trainer.close()
      raise

  def evaluate(self, split: Optional[str] = None, plot: bool = True,
               checkpoint_step: Optional[int] = None) -> dict:
    """Whole-document evaluation on a split of the newest checkpoint that
    verifies (or of `checkpoint_step`); writes
    eval_<split>_<step>.json (..._state_withheld.json with
    TrainConfig.eval_withhold_state) and a loss-by-position PNG to the
    workdir; the returned dict has the file's path under "path"."""
    split = split or self.data_config.eval_split
    trainer, state = self._restored(step=checkpoint_step)
    try:
      step = int(state.step)
      result = trainer.evaluate(state.params, self.eval_batches(split), step,
                                split)
    finally:
      trainer.close()
    withheld = trainer.config.eval_withhold_state
    out = {"step": step, "split": split, "task": self.data_config.task,
           "state_withheld": withheld, **result.to_json()}
    stem = os.path.join(self.workdir, f"eval_{split}_{step}"
                        + ("_state_withheld" if withheld else ""))
    with open(stem + ".json", "w") as f:
      json.dump(out, f, indent=1)
    out["path"] = stem + ".json"
    if plot:
      plot_loss_by_position({f"step {step}": result}, stem + ".png",
                            title=f"{self.data_config.task} {split}: loss "
                            "against position")
    return out

  def generate(self, prompt: str, num_tokens: int,
               sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
               checkpoint_step: Optional[int] = None) -> str:
    """Continues `prompt` with the newest checkpoint that verifies (or
    `checkpoint_step`); returns the new text."""
    vocab = self.vocabulary
    if not prompt:
      raise ValueError("The prompt is empty: give --prompt or --prompt_file "
                       "with some text to continue.")
    # stdout: the text only.
    trainer, state = self._restored(verbose=False, step=checkpoint_step)
    trainer.close()
    tokens = np.asarray([vocab.encode(prompt)], np.int32)
    sampler = Sampler(trainer.model, {"params": state.params})
    out = sampler.generate(tokens, num_tokens, rng=jax.random.PRNGKey(seed),
                           sampling=sampling)
    ids = np.asarray(out["tokens"])[0, :int(out["lengths"][0])].tolist()
    return vocab.decode(ids)
