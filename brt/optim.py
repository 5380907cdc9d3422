"""Optimizers and learning-rate schedules (optax), configured by one dataclass.

The paper trains with Adafactor and an inverse-square-root schedule after a
linear warmup; AdamW and a cosine decay are here for the usual alternatives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("rsqrt", "cosine", "constant")
DECAY_MASKS = ("weights", "all")
# Parameter names that weight decay applies to under the "weights" mask:
# the projections' and MLPs' kernels and the embedding. Not norms' scales,
# biases, position-bias tables, the learned initial state or memory, the
# state IDs, or anything in a gate (its bias sets how much the state keeps).
DECAYED_NAMES = ("kernel", "embedding")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What `make_optimizer` builds.

  learning_rate is the peak, reached at the end of the warmup. "rsqrt" then
  decays as sqrt(warmup_steps / step); "cosine" decays to
  final_learning_fraction * peak at the last training step; "constant"
  stays at the peak.
  """
  name: str = "adafactor"
  learning_rate: float = 1e-2
  schedule: str = "rsqrt"
  warmup_steps: int = 1000
  final_learning_fraction: float = 0.1  # cosine only
  weight_decay: float = 0.0
  # Which parameters weight decay shrinks: "weights" (DECAYED_NAMES outside
  # the gates) or "all" (every parameter; brt before the mask, for resuming
  # such a run).
  weight_decay_mask: str = "weights"
  grad_clip_norm: float | None = 1.0  # None or 0: no clipping.
  b1: float = 0.9  # adamw; adafactor uses no first moment unless b1 > 0.
  b2: float = 0.99  # adamw
  adafactor_momentum: float | None = None
  # Adafactor: scale each parameter's update by its RMS (at least 1e-3), so
  # learning_rate is a relative step size and small parameters (the initial
  # state, gate biases) move in proportion. The paper's runs had this on
  # (meliad's flax Adafactor); it is off by default, as the CPU-sized
  # configs were tuned with absolute steps.
  adafactor_parameter_scale: bool = False

  def __post_init__(self):
    def fail(msg):
      raise ValueError(f"OptimizerConfig: {msg}")
    if self.name not in OPTIMIZERS:
      fail(f"name={self.name!r} is not one of {OPTIMIZERS}.")
    if self.weight_decay_mask not in DECAY_MASKS:
      fail(f"weight_decay_mask={self.weight_decay_mask!r} is not one of "
           f"{DECAY_MASKS}.")
    if self.schedule not in SCHEDULES:
      fail(f"schedule={self.schedule!r} is not one of {SCHEDULES}.")
    if not self.learning_rate > 0:
      fail(f"learning_rate must be positive, got {self.learning_rate}.")
    if self.warmup_steps < 0:
      fail(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
    if not 0 <= self.final_learning_fraction <= 1:
      fail("final_learning_fraction must be in [0, 1], got "
           f"{self.final_learning_fraction}.")


def make_schedule(cfg: OptimizerConfig, num_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step (0-based, jit-friendly)."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps

  def ramp(step):
    # Step 0 already gets a small rate: (step + 1) / warmup, not 0.
    return jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))

  if cfg.schedule == "constant":
    return lambda step: peak * ramp(step)
  if cfg.schedule == "rsqrt":
    return lambda step: peak * ramp(step) * jnp.sqrt(
        max(warmup, 1) / jnp.maximum(step + 1.0, max(warmup, 1)))
  decay = optax.cosine_decay_schedule(
      peak, max(num_steps - warmup, 1), alpha=cfg.final_learning_fraction)
  return lambda step: jnp.where(step < warmup, peak * ramp(step),
                                decay(step - warmup))


def make_optimizer(cfg: OptimizerConfig, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule) for a run of num_steps steps."""
  schedule = make_schedule(cfg, num_steps)
  # Without decay, no mask: the optimizer state keeps the structure that
  # checkpoints written before the mask existed have.
  mask = (decay_mask if cfg.weight_decay and cfg.weight_decay_mask == "weights"
          else None)
  if cfg.name == "adamw":
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                     weight_decay=cfg.weight_decay, mask=mask)
  else:
    # optax's Adafactor clips updates by their RMS (as in the paper's
    # setup) and factors the second moment of every matrix.
    tx = optax.adafactor(
        schedule, momentum=cfg.adafactor_momentum,
        weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=mask,
        multiply_by_parameter_scale=cfg.adafactor_parameter_scale)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx, schedule


def decay_mask(params):
  """True for the parameters weight decay applies to (see DECAYED_NAMES)."""
  def decayed(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    return (names[-1] in DECAYED_NAMES
            and not any(n.startswith("gate") for n in names))
  return jax.tree_util.tree_map_with_path(decayed, params)
