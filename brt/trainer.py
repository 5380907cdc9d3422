"""Training: truncated backpropagation through time over long documents.

Each step trains on one segment of every batch row. The carry the model
returns (each layer's last keys/values and the recurrent states) is kept in
the train state, `stop_gradient`ed, and fed to the next step with the next
segment of the same documents, so the model sees books as a stream while
gradients flow through one segment (the paper's setup).

A run lives in a working directory: checkpoints (orbax, written in the
background), TensorBoard event files, `metrics.jsonl` and the operative gin
config. Starting a run in a directory that holds a checkpoint resumes it:
parameters, optimizer state, carry, RNG and the data iterator's position are
restored, so the run continues exactly as if it had never stopped. SIGTERM
(pre-emption) saves a checkpoint and returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from brt import carry_dropout, checkpoints, optim, partitioning
from brt.checkpoints import Checkpointer
from brt.config import ModelConfig
from brt.evaluation import EvalResult, Evaluator, token_nll
from brt.execution import ExecutionConfig
from brt.model import BlockRecurrentTransformer, initial_carry

# The batch fields the model consumes; the rest (document ids, counts) are
# for evaluation metrics and stay on the host.
MODEL_FIELDS = ("inputs", "targets", "loss_mask", "start_of_sequence")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop's settings (gin: `TrainConfig.<field> = ...`)."""
  batch_size: int = 8  # Global, over all hosts.
  segment_length: int = 512  # Tokens per row per step; a multiple of W.
  num_steps: int = 10_000
  seed: int = 0  # Parameters, dropout and data order.
  log_every: int = 50
  eval_every: int = 1000  # train_and_eval mode; 0: only at the end.
  eval_batch_size: Optional[int] = None  # None: batch_size.
  eval_segment_length: Optional[int] = None  # None: segment_length.
  max_eval_batches: Optional[int] = None  # None: the whole split.
  # Ablation (Evaluator's withhold_state): every block of the evaluation
  # starts from the learned initial state, the cache kept; needs
  # eval_segment_length = the block width. Its eval file is named
  # eval_<split>_<step>_state_withheld.json.
  eval_withhold_state: bool = False
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  # (data, model) mesh axes; data=-1 takes every device left by `model`.
  mesh_shape: tuple[int, int] = (-1, 1)
  # Carry dropout (brt/carry_dropout.py; the PyTorch port's
  # xl_memories_dropout / state_dropout): per row and segment, the
  # probability of starting from a fresh cache / recurrent state. Training
  # only; drawn from the train state's RNG, so resumes stay exact.
  cache_dropout: float = 0.0
  state_dropout: float = 0.0
  # Start a new run from another run's parameters (fine-tuning): its
  # workdir (the newest checkpoint that verifies) or WORKDIR/checkpoints/STEP,
  # e.g. one written by `python -m brt.meliad`. The optimizer state, carry,
  # RNG and data position start afresh. Used only when this run's workdir
  # has no checkpoint yet; after that the run resumes from its own.
  init_from: Optional[str] = None
  # Batches prepared (read, packed and put on the devices) on a background
  # thread, this many ahead of the step that trains on them; 0: in the loop.
  prefetch_batches: int = 2
  # (first, last): a jax profiler trace of these training steps (1-based,
  # inclusive) into <workdir>/profile, for TensorBoard's profile plugin.
  profile_steps: Optional[tuple[int, int]] = None
  # Gradient accumulation: each step's batch is taken in this many row
  # groups, one after another (make_train_step); batch_size must divide
  # into them, and each group over the data-parallel devices.
  num_microbatches: int = 1

  def __post_init__(self):
    object.__setattr__(self, "mesh_shape", tuple(self.mesh_shape))
    if self.profile_steps is not None:
      object.__setattr__(self, "profile_steps", tuple(self.profile_steps))
      if (len(self.profile_steps) != 2
          or not 1 <= self.profile_steps[0] <= self.profile_steps[1]):
        raise ValueError("TrainConfig: profile_steps is (first, last) with "
                         f"1 <= first <= last, got {self.profile_steps}.")
    if not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 0:
      raise ValueError("TrainConfig: prefetch_batches must be an integer >= 0, "
                       f"got {self.prefetch_batches!r}.")
    for name in ("batch_size", "segment_length", "num_steps", "log_every",
                 "checkpoint_every", "keep_checkpoints", "num_microbatches"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"TrainConfig: {name} must be a positive integer, got {value!r}.")
    if self.batch_size % self.num_microbatches:
      raise ValueError(
          f"TrainConfig: batch_size {self.batch_size} does not divide into "
          f"num_microbatches={self.num_microbatches} groups of rows; choose a "
          "divisor of the batch size.")
    if len(self.mesh_shape) != 2:
      raise ValueError("TrainConfig: mesh_shape is (data, model), got "
                       f"{self.mesh_shape}.")
    for name in ("cache_dropout", "state_dropout"):
      carry_dropout.check_rate(f"TrainConfig.{name}", getattr(self, name))

  @property
  def eval_rows(self) -> int:
    return self.eval_batch_size or self.batch_size

  @property
  def eval_length(self) -> int:
    return self.eval_segment_length or self.segment_length


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Number of updates applied so far.
  params: Any
  opt_state: Any
  carry: Any  # The model's carry for every batch row (stop_gradient'ed).
  rng: jax.Array  # Base dropout key; step s uses fold_in(rng, s).


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN or infinite; nothing was saved after."""


def make_train_step(model: BlockRecurrentTransformer, tx, *,
                    cache_dropout: float = 0.0,
                    state_dropout: float = 0.0,
                    num_microbatches: int = 1) -> Callable:
  """(state, batch) -> (state, metrics): one segment of truncated BPTT.

  cache_dropout, state_dropout: carry dropout rates (TrainConfig).
  num_microbatches: the batch's rows are taken in this many groups (rows
    j, j + k, j + 2k, ... in group j, so that every group spreads over the
    data-parallel devices as the batch does), one after another, and their
    gradients summed: the full batch's loss and update, to float tolerance,
    in the memory of one group. Carry dropout draws for the whole batch as
    without groups; the model's dropout draws per group.
  """
  deterministic = model.config.dropout_rate == 0
  k = num_microbatches

  def loss_sum_fn(params, carry, rows, step_key, resets):
    logits, carry = model.apply(
        {"params": params}, rows["inputs"], carry,
        start_of_sequence=rows["start_of_sequence"],
        deterministic=deterministic, rngs={"dropout": step_key}, **resets)
    mask = rows["loss_mask"]
    loss_sum = jnp.sum(token_nll(logits, rows["targets"]) * mask)
    return loss_sum, (carry, jnp.sum(mask))

  grad_fn = jax.value_and_grad(loss_sum_fn, has_aux=True)

  def gradients(state: TrainState, batch):
    """(summed loss, gradient of the summed loss, carry, tokens)."""
    step_key = jax.random.fold_in(state.rng, state.step)
    resets = carry_dropout.draw_resets(
        carry_dropout.rng_for_step(step_key), batch["inputs"].shape[0],
        cache_dropout, state_dropout)
    if k == 1:
      (loss_sum, (carry, tokens)), grads = grad_fn(
          state.params, state.carry, batch, step_key, resets)
      return loss_sum, grads, carry, tokens

    def split(x):  # (B, ...) -> (k, B / k, ...): group j holds rows j::k.
      # (tree_map passes over a reset that is None: it has no leaves.)
      return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    def merge(x):  # The inverse of split.
      return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])

    groups = jax.tree_util.tree_map(split, (batch, state.carry, resets))

    def one_group(acc, group):
      index, (rows, carry, group_resets) = group
      (loss_sum, (carry, tokens)), grads = grad_fn(
          state.params, carry, rows, jax.random.fold_in(step_key, index),
          group_resets)
      acc = jax.tree_util.tree_map(jnp.add, acc, (loss_sum, grads, tokens))
      return acc, carry

    zeros = (jnp.zeros((), jnp.float32),
             jax.tree_util.tree_map(jnp.zeros_like, state.params),
             jnp.zeros((), jnp.float32))
    (loss_sum, grads, tokens), carries = jax.lax.scan(
        one_group, zeros, (jnp.arange(k), groups))
    return loss_sum, grads, jax.tree_util.tree_map(merge, carries), tokens

  def step(state: TrainState, batch):
    loss_sum, grads, carry, tokens = gradients(state, batch)
    denominator = jnp.maximum(tokens, 1.0)
    loss = loss_sum / denominator
    grads = jax.tree_util.tree_map(lambda g: g / denominator, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state,
                              carry=jax.lax.stop_gradient(carry))
    metrics = {"loss": loss, "tokens": tokens,
               "grad_norm": optax.global_norm(grads)}
    return new_state, metrics

  return step


class Trainer:
  """Builds, trains, checkpoints and evaluates one model in one workdir.

    trainer = Trainer(model_config, train_config, optimizer_config, workdir)
    state = trainer.train(train_batches, eval_batches=lambda: ...)
  `train_batches` is an iterator with `get_state`/`set_state` (a
  `LongDocBatcher`) yielding this host's rows of each global batch.
  """

  def __init__(self, model_config: ModelConfig, train_config: TrainConfig,
               optimizer_config: optim.OptimizerConfig, workdir: str, *,
               execution: ExecutionConfig = ExecutionConfig(), mesh=None,
               writer=None, verbose: bool = True):
    self.model_config = model_config
    self.config = train_config
    self.model = BlockRecurrentTransformer(model_config, execution)
    model_config.check_segment_length(train_config.segment_length)
    model_config.check_segment_length(train_config.eval_length)
    self.mesh = mesh or partitioning.make_mesh(*train_config.mesh_shape)
    partitioning.check_batch_size(train_config.batch_size, self.mesh)
    if train_config.num_microbatches > 1:
      partitioning.check_batch_size(
          train_config.batch_size // train_config.num_microbatches, self.mesh,
          what="batch_size / num_microbatches")
    self.tx, self.schedule = optim.make_optimizer(optimizer_config,
                                                  train_config.num_steps)
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0
    self.verbose = verbose and self.is_chief
    self.writer = writer  # clu metric writer (chief only) or None.
    self.checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=train_config.keep_checkpoints,
        asynchronous=train_config.async_checkpoints)
    self._stop = threading.Event()
    self._shardings = self._state_shardings()
    self._step_fn = jax.jit(
        make_train_step(self.model, self.tx,
                        cache_dropout=train_config.cache_dropout,
                        state_dropout=train_config.state_dropout,
                        num_microbatches=train_config.num_microbatches),
        in_shardings=(self._shardings, None),
        out_shardings=(self._shardings, partitioning.replicated(self.mesh)),
        donate_argnums=0)
    self.evaluator = Evaluator(self.model, mesh=self.mesh,
                               withhold_state=train_config.eval_withhold_state)
    self.history: list[dict] = []  # Logged train and eval records.

  # -- state ---------------------------------------------------------------------
  def _init_fn(self, seed_key):
    cfg, rows = self.model_config, self.config.batch_size
    params_key, dropout_key = jax.random.split(seed_key)
    tokens = jnp.zeros((1, cfg.block_width), jnp.int32)
    variables = self.model.init(params_key, tokens, initial_carry(cfg, 1))
    params = nn.meta.unbox(variables)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params),
                      carry=initial_carry(cfg, rows), rng=dropout_key)

  def _state_shardings(self):
    cfg = self.model_config
    tokens = jnp.zeros((1, cfg.block_width), jnp.int32)
    boxed = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), tokens,
                           initial_carry(cfg, 1))
    param_shardings = partitioning.param_shardings(boxed, self.mesh)["params"]
    abstract = jax.eval_shape(self._init_fn, jax.random.PRNGKey(0))
    rep = partitioning.replicated(self.mesh)
    return TrainState(
        step=rep, params=param_shardings,
        opt_state=partitioning.optimizer_shardings(
            self.tx, abstract.opt_state, abstract.params, param_shardings,
            self.mesh),
        carry=partitioning.batch_major_shardings(abstract.carry, self.mesh),
        rng=rep)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without computing it."""
    abstract = jax.eval_shape(self._init_fn, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, self._shardings)

  def init_state(self) -> TrainState:
    init = jax.jit(self._init_fn, out_shardings=self._shardings)
    return init(jax.random.PRNGKey(self.config.seed))

  def init_state_from(self, source: str) -> TrainState:
    """A fresh train state holding the parameters of another run's
    checkpoint (`TrainConfig.init_from`)."""
    directory, step = checkpoints.locate(source)
    ckpt = Checkpointer(directory, asynchronous=False, create=False)
    try:
      params, step = ckpt.restore_params(self.abstract_state().params,
                                         self.model_config, step)
    finally:
      ckpt.close()
    fresh = self.init_state()
    opt_state = jax.jit(self.tx.init,
                        out_shardings=self._shardings.opt_state)(params)
    self._print(f"Initialised from step {step} of {directory}: its "
                "parameters, with a fresh optimizer state and carry")
    return fresh.replace(params=params, opt_state=opt_state)

  def restore_or_init(self, train_batches=None,
                      step: Optional[int] = None) -> TrainState:
    """The newest checkpoint that verifies (or checkpoint `step`), with the
    data position restored into `train_batches`; a fresh state if the
    workdir has no checkpoint. Training (`train_batches` given) moves
    damaged newer checkpoints aside so that it can save those steps again."""
    if step is None and self.checkpointer.latest_step() is None:
      if self.config.init_from:
        return self.init_state_from(self.config.init_from)
      return self.init_state()
    state, data_state, step = self.checkpointer.restore(
        self.abstract_state(), self.model_config, step,
        set_aside_damaged=train_batches is not None)
    if train_batches is not None and data_state:
      # (A checkpoint written outside training -- converted weights, see
      # brt/meliad.py -- has no data position: the data starts afresh.)
      train_batches.set_state(data_state)
    self._print(f"Restored step {step} from {self.checkpointer.directory}")
    return state

  def last_good_step(self) -> Optional[int]:
    """The newest checkpoint that verifies (restored to check: slow)."""
    return self.checkpointer.latest_intact_step(self.abstract_state(),
                                                self.model_config)

  # -- the loop --------------------------------------------------------------------
  def train(self, train_batches: Iterator[Mapping[str, np.ndarray]],
            eval_batches: Optional[Callable[[], Any]] = None,
            until_step: Optional[int] = None,
            eval_split: str = "eval") -> TrainState:
    """Trains to `num_steps` (or `until_step`), resuming from the workdir.

    eval_batches: a function returning a fresh iterator over the evaluation
      split; evaluated every `eval_every` steps and at the end.
    """
    cfg = self.config
    state = self.restore_or_init(train_batches)
    step = int(state.step)
    last = min(cfg.num_steps, until_step or cfg.num_steps)
    meter = _Meter(step)
    previous_handler = self._catch_sigterm()
    feed = _Prefetcher(train_batches, self._put, cfg.prefetch_batches)
    first_traced, last_traced = cfg.profile_steps or (0, 0)
    tracing = False
    try:
      while step < last and not self._stop.is_set():
        batch = next(feed)
        if step + 1 == first_traced:
          jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
          tracing = True
        state, metrics = self._step_fn(state, batch)
        step += 1
        if tracing and (step == last_traced or step == last):
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          tracing = False
        meter.add(step, metrics)
        if step == meter.start + 1:
          meter.restart_clock(state)  # Leave compilation out of tokens/s.
        if step % cfg.log_every == 0 or step == last:
          self._log_train(step, meter, last)
        if eval_batches is not None and (
            (cfg.eval_every and step % cfg.eval_every == 0) or step == last):
          began = time.perf_counter()
          self.evaluate(state.params, eval_batches(), step, eval_split)
          meter.exclude(time.perf_counter() - began)
        if step % cfg.checkpoint_every == 0 or step == last:
          self._save(step, state, meter, feed)
      if self._stop.is_set() and step < last:
        self._save(step, state, meter, feed)
        self._print(f"Stopped by SIGTERM at step {step}; checkpoint saved in "
                    f"{self.checkpointer.directory}. Rerun to resume.")
      self.checkpointer.wait()
    finally:
      feed.close()  # train_batches is left just after the last batch trained.
      if tracing:  # Stopped (SIGTERM, an error) inside the traced steps.
        jax.profiler.stop_trace()
      self._release_sigterm(previous_handler)
      if self.writer is not None:
        self.writer.flush()
    return state

  def request_stop(self):
    """Asks the loop to save and return after the current step."""
    self._stop.set()

  def _put(self, batch):
    return partitioning.put_batch({k: batch[k] for k in MODEL_FIELDS},
                                  self.mesh)

  def _save(self, step, state, meter, train_batches):
    meter.check_finite(self.last_good_step, self.checkpointer.directory)
    self.checkpointer.save(step, state, train_batches.get_state(),
                           self.model_config)

  def _log_train(self, step, meter, last):
    meter.check_finite(self.last_good_step, self.checkpointer.directory)
    record = meter.summary(step, last, self.config.batch_size
                           * self.config.segment_length)
    record["learning_rate"] = float(self.schedule(step - 1))
    self._record("train", step, record)
    eta = record.pop("eta_s")
    self._print(
        f"step {step:>{len(str(last))}}/{last} | loss {record['loss']:.4f} | "
        f"{record['bits_per_token']:.4f} bits/token | "
        f"lr {record['learning_rate']:.2e} | "
        f"{record['tokens_per_s']:,.0f} tokens/s | ETA {_hms(eta)}")

  # -- evaluation ------------------------------------------------------------------
  def evaluate(self, params, batches, step: int,
               split: str = "eval") -> EvalResult:
    """Evaluates on `batches` (of `split`); logged under the TensorBoard
    tag eval_<split> (eval_<split>_state_withheld for that ablation)."""
    start = time.perf_counter()
    result = self.evaluator.run({"params": params}, batches,
                                max_batches=self.config.max_eval_batches)
    m = result.metrics
    tag = f"eval_{split}" + ("_state_withheld"
                             if self.config.eval_withhold_state else "")
    self._record("eval", step, {k: m[k] for k in (
        "loss", "bits_per_token", "bits_per_byte", "word_perplexity",
        "num_tokens", "num_documents", "answer_accuracy") if k in m},
                 tag=tag, split=split)
    answers = (f" | answer accuracy {m['answer_accuracy']:.4f}"
               if "answer_accuracy" in m else "")
    self._print(
        f"eval at step {step}: {m['bits_per_token']:.4f} bits/token | "
        f"{m['bits_per_byte']:.4f} bits/byte | word perplexity "
        f"{m['word_perplexity']:.2f}{answers} | {m['num_tokens']:,} tokens in "
        f"{m['num_documents']} documents, {time.perf_counter() - start:.0f}s")
    return result

  # -- output ----------------------------------------------------------------------
  def _record(self, kind: str, step: int, values: dict,
              tag: Optional[str] = None, **labels):
    """One line of metrics.jsonl ({"kind", "step", **labels, **values}) and
    TensorBoard scalars under <tag or kind>/<name>."""
    values = {k: float(v) for k, v in values.items()}
    record = {"kind": kind, "step": step, **labels, **values}
    self.history.append(record)
    if not self.is_chief:
      return
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.writer is not None:
      self.writer.write_scalars(step, {f"{tag or kind}/{k}": v
                                        for k, v in values.items()})

  def _print(self, line: str):
    if self.verbose:
      print(line, flush=True)

  def _catch_sigterm(self):
    if threading.current_thread() is not threading.main_thread():
      return None
    return signal.signal(signal.SIGTERM, lambda *_: self._stop.set())

  def _release_sigterm(self, previous):
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)

  def close(self):
    self.checkpointer.close()


class _Prefetcher:
  """Batches from `batches`, put on the devices by `put`, prepared `depth`
  ahead on a background thread so that the host's work overlaps the
  device's. `get_state()` is the position just after the last batch handed
  out, which is what a checkpoint must save (the thread has read further);
  `close()` stops the thread and sets `batches` back to that position."""

  _END = object()

  def __init__(self, batches, put: Callable, depth: int):
    self._batches, self._put, self._depth = batches, put, depth
    self._position = batches.get_state()
    if depth:
      self._queue = queue.Queue(maxsize=depth)
      self._closed = threading.Event()
      self._thread = threading.Thread(target=self._fill, daemon=True,
                                      name="brt-prefetch")
      self._thread.start()

  def _fill(self):
    while not self._closed.is_set():
      try:
        batch = next(self._batches)
        item = (self._put(batch), self._batches.get_state())
      except BaseException as e:  # StopIteration too: handed to the loop.
        item = (self._END, e)
      while not self._closed.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[0] is self._END:
        return

  def __iter__(self):
    return self

  def __next__(self):
    if not self._depth:
      batch = self._put(next(self._batches))
      self._position = self._batches.get_state()
      return batch
    batch, position = self._queue.get()
    if batch is self._END:
      self._depth = 0  # The thread has ended; later calls raise again.
      self._batches.set_state(self._position)
      raise position
    self._position = position
    return batch

  def get_state(self) -> dict:
    return self._position

  def close(self):
    if self._depth:
      self._closed.set()
      self._thread.join()
      self._depth = 0
    self._batches.set_state(self._position)


class _Meter:
  """Train metrics between two log lines, fetched from the device lazily so
  that the host keeps feeding batches while the device computes."""

  def __init__(self, step: int):
    self.start = step
    self._pending: list[tuple[int, Any]] = []
    self._loss_sum = self._tokens = self._grad_norm = 0.0
    self._interval_start = (time.perf_counter(), step)

  def add(self, step: int, metrics):
    self._pending.append((step, metrics))

  def restart_clock(self, state):
    jax.block_until_ready(state.step)
    self._interval_start = (time.perf_counter(), self.start + 1)

  def exclude(self, seconds: float):
    """Leaves time spent on other work (evaluation) out of tokens/s."""
    began, first = self._interval_start
    self._interval_start = (began + seconds, first)

  def check_finite(self, last_good: Callable[[], Optional[int]], directory):
    """Fetches pending metrics; raises if any loss or gradient is not finite.
    `last_good` gives the newest checkpoint that verifies (asked only then)."""
    for step, m in jax.device_get(self._pending):
      loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        last_checkpoint = last_good()
        where = ("no checkpoint was saved yet" if last_checkpoint is None else
                 f"the last good checkpoint is step {last_checkpoint} in "
                 f"{directory}")
        raise NonFiniteLossError(
            f"Non-finite training loss at step {step} (loss {loss}, gradient "
            f"norm {grad_norm}). Stopped without saving; {where}. Lower the "
            "learning rate, lengthen the warmup or clip gradients harder.")
      self._loss_sum += loss * float(m["tokens"])
      self._tokens += float(m["tokens"])
      self._grad_norm = max(self._grad_norm, grad_norm)
    self._pending.clear()

  def summary(self, step: int, last: int, tokens_per_step: int) -> dict:
    now = time.perf_counter()
    began, first = self._interval_start
    steps = step - first
    step_s = (now - began) / steps if steps > 0 else float("nan")
    loss = self._loss_sum / max(self._tokens, 1.0)
    record = {"loss": loss, "bits_per_token": loss / math.log(2),
              "grad_norm_max": self._grad_norm,
              "tokens_per_s": tokens_per_step / step_s if steps > 0 else 0.0,
              "step_s": step_s,
              "eta_s": (last - step) * step_s if steps > 0 else float("nan")}
    self._loss_sum = self._tokens = self._grad_norm = 0.0
    self._interval_start = (now, step)
    return record


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
