"""Learning-rate schedules against values by hand; optimizers descend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt.optim import OptimizerConfig, make_optimizer, make_schedule


def test_rsqrt_schedule_warms_up_linearly_then_decays_as_inverse_sqrt():
  lr = make_schedule(OptimizerConfig(learning_rate=0.02, warmup_steps=100,
                                     schedule="rsqrt"), num_steps=10_000)
  np.testing.assert_allclose(lr(0), 0.02 / 100, rtol=1e-6)
  np.testing.assert_allclose(lr(49), 0.01, rtol=1e-6)
  np.testing.assert_allclose(lr(99), 0.02, rtol=1e-6)  # the peak
  np.testing.assert_allclose(lr(399), 0.01, rtol=1e-6)  # sqrt(100 / 400)
  np.testing.assert_allclose(lr(9999), 0.002, rtol=1e-6)


def test_cosine_schedule_ends_at_the_final_fraction():
  cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="cosine",
                        final_learning_fraction=0.1)
  lr = make_schedule(cfg, num_steps=110)
  np.testing.assert_allclose(lr(9), 1.0, rtol=1e-6)
  np.testing.assert_allclose(lr(60), 0.1 + 0.9 * 0.5, rtol=1e-5)  # halfway
  np.testing.assert_allclose(lr(110), 0.1, rtol=1e-5)
  constant = make_schedule(OptimizerConfig(schedule="constant",
                                           warmup_steps=0), 100)
  np.testing.assert_allclose(constant(50), 0.01, rtol=1e-6)


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_optimizers_descend_and_clip(name):
  target = jnp.arange(12.0).reshape(3, 4)
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
  loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["b"] ** 2)
  tx, _ = make_optimizer(OptimizerConfig(name=name, learning_rate=0.1,
                                         warmup_steps=0, schedule="constant",
                                         grad_clip_norm=1.0), 100)
  state = tx.init(params)
  before = loss(params)
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  assert loss(params) < 0.9 * before


def test_bad_optimizer_settings_name_the_choices():
  with pytest.raises(ValueError, match="not one of"):
    OptimizerConfig(name="sgd")
  with pytest.raises(ValueError, match="schedule="):
    OptimizerConfig(schedule="linear")


@pytest.mark.parametrize("parameter_scale", [False, True])
def test_adafactor_parameter_scale_makes_steps_relative(parameter_scale):
  """Adafactor's first update has RMS 1 before the learning rate (v = g^2 at
  step 1); with parameter scaling it is then multiplied by each parameter's
  RMS, so the learning rate becomes a relative step, as in the paper."""
  params = {"big": jnp.full((4, 4), 2.0), "small": jnp.full((8,), 0.5)}
  grads = {"big": jnp.arange(16.0).reshape(4, 4) - 7.5,
           "small": jnp.linspace(-1.0, 1.0, 8)}
  tx, _ = make_optimizer(OptimizerConfig(
      learning_rate=0.1, warmup_steps=0, schedule="constant",
      grad_clip_norm=None, adafactor_parameter_scale=parameter_scale), 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  rms = {k: float(jnp.sqrt(jnp.mean(u ** 2))) for k, u in updates.items()}
  expected = ({"big": 0.2, "small": 0.05} if parameter_scale
              else {"big": 0.1, "small": 0.1})
  for k in rms:
    np.testing.assert_allclose(rms[k], expected[k], rtol=1e-3, err_msg=k)
