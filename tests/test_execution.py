"""ExecutionConfig: how the model is computed, apart from ModelConfig --
configured by gin, free to change between a checkpoint and its resumption,
read from workdirs written when ModelConfig held it, and no process-wide
side effect on import."""

import os
import subprocess
import sys

import gin
import numpy as np
import pytest

import brt
from brt import configurables
from brt.configurables import GinConfigError
from brt.execution import upgrade_bindings
from test_trainer import _params, batches, learnable_documents


def test_gin_binds_the_execution_and_the_cpu_sizes_take_the_cpu_products():
  gin.clear_config()
  configurables.parse(["sizes/tiny.gin", "variants/rec_fixed_skip.gin"],
                      ["ExecutionConfig.remat = 'dots_saveable'"])
  ex = configurables.build(brt.ExecutionConfig)
  assert (ex.products, ex.remat) == ("xla_cpu", "dots_saveable")
  gin.clear_config()
  configurables.parse(["sizes/paper.gin", "variants/rec_fixed_skip.gin"])
  assert configurables.build(brt.ExecutionConfig) == brt.ExecutionConfig()
  gin.clear_config()


def test_a_workdir_config_from_before_the_move_still_parses(tmp_path):
  saved = tmp_path / "config.gin"
  saved.write_text("\n".join([
      "ModelConfig.num_layers = 3",
      "ModelConfig.remat = True",
      "ModelConfig.layer_major = None",
      "ModelConfig.attention_impl = 'dot_product_attention'",
      "ModelConfig.recurrent_layers = [1]"]))
  gin.clear_config()
  configurables.parse_saved(str(saved))
  model = configurables.build(brt.ModelConfig)
  ex = configurables.build(brt.ExecutionConfig)
  gin.clear_config()
  assert (model.num_layers, model.recurrent_layers) == (3, (1,))
  assert ex == brt.ExecutionConfig(remat="full", attention="xla",
                                   layer_major=None)
  # Only bindings of the moved fields are rewritten.
  text = "ModelConfig.remat_x = 1\nModelConfig.layer_major = False"
  assert upgrade_bindings(text) == (
      "ModelConfig.remat_x = 1\nExecutionConfig.layer_major = False")


def test_binding_a_moved_field_on_model_config_names_where_it_went():
  gin.clear_config()
  with pytest.raises(GinConfigError, match="ExecutionConfig.remat"):
    configurables.parse(["sizes/tiny.gin"], ["ModelConfig.remat = True"])
  gin.clear_config()


def test_importing_brt_leaves_the_environment_alone():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
      [sys.executable, "-c", "import os, brt, brt.trainer, brt.experiment; "
       "print(os.environ.get('XLA_FLAGS'))"],
      env=env, capture_output=True, text=True, check=True).stdout
  assert out.strip() == "None"


def test_a_checkpoint_resumes_under_another_execution(tmp_path):
  """Written with the XLA:CPU products block by block, resumed with plain
  JAX layer by layer: the same losses and parameters as a run
  that never changed, to float tolerance."""
  from brt.optim import OptimizerConfig
  from brt.trainer import TrainConfig, Trainer
  docs = learnable_documents()
  model = brt.ModelConfig(vocab_size=29, num_layers=2, d_model=32,
                          num_heads=4, mlp_dim=48, block_width=8,
                          num_states=3, recurrent_layers=(1,),
                          multi_query=True)

  def trainer(workdir, execution):
    return Trainer(model, TrainConfig(batch_size=4, segment_length=16,
                                      num_steps=4, log_every=1,
                                      checkpoint_every=2, mesh_shape=(1, 1)),
                   OptimizerConfig(learning_rate=1e-2, warmup_steps=5),
                   str(workdir), execution=execution, verbose=False)

  cpu = brt.ExecutionConfig(products="xla_cpu", layer_major=False)
  straight = trainer(tmp_path / "a", cpu)
  state_a = straight.train(batches(docs))
  straight.close()
  first = trainer(tmp_path / "b", cpu)
  first.train(batches(docs), until_step=2)
  first.close()
  other = brt.ExecutionConfig(products="plain", layer_major=True)
  assert other.runs_layer_major(model) and not cpu.runs_layer_major(model)
  second = trainer(tmp_path / "b", other)
  state_b = second.train(batches(docs))
  second.close()
  losses = lambda t: [r["loss"] for r in t.history if r["kind"] == "train"]
  np.testing.assert_allclose(losses(first) + losses(second), losses(straight),
                             rtol=1e-5)
  for a, b in zip(_params(state_a), _params(state_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
