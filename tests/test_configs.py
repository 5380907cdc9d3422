"""The gin files in configs/ compose into valid experiments."""

import itertools
import os
import sys

import gin
import numpy as np
import pytest

from brt import configurables
from brt.config import CLASSIC, ModelConfig
from brt.optim import OptimizerConfig
from brt.trainer import TrainConfig

SIZES = ["sizes/tiny.gin", "sizes/small.gin", "sizes/paper.gin"]
VARIANTS = sorted(f for f in configurables.available_gin_files()
                  if f.startswith("variants/"))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def build(files, params=()):
  configurables.parse(files, params)
  return (configurables.build(ModelConfig), configurables.build(TrainConfig),
          configurables.build(OptimizerConfig))


@pytest.mark.parametrize("size,variant", itertools.product(SIZES, VARIANTS))
def test_every_size_and_variant_builds_a_valid_config(size, variant):
  model, train, _ = build([size, variant])
  model.check_segment_length(train.segment_length)
  name = os.path.basename(variant)[:-4]
  if name.startswith(("rec_", "feedback_")):
    gate, kind = name.split("_")[1:]
    assert (model.gate, model.gate_variant) == (gate, kind)
    assert len(model.recurrent_layers) == 1
    assert model.recurrent_layers[0] < model.num_layers
  else:
    assert model.recurrent_layers == ()
  assert (model.memory_tokens > 0) == name.startswith("rmt")
  assert model.memory_xl_cache == (name == "rmt_xl")
  assert model.feedback == name.startswith("feedback")
  assert model.cache_across_segments == (name != "slide")
  assert bool(model.compressed_slots) == (name == "xl_compressed")


def test_paper_size_is_the_papers_model():
  model, train, opt = build(["sizes/paper.gin", "variants/rec_fixed_skip.gin"])
  assert (model.num_layers, model.d_model, model.num_heads, model.mlp_size,
          model.block_width, model.num_states) == (12, 1024, 8, 4096, 512, 512)
  assert model.recurrent_layers == (9,)  # The 10th of 12.
  assert train.segment_length == 4096 and opt.name == "adafactor"
  # meliad's base_htrans.gin: the architecture is ModelConfig's defaults.
  assert (model.dropout_rate, model.attention_dropout_rate) == (0.05, 0.05)
  defaults = ModelConfig()
  for name in CLASSIC:
    assert getattr(model, name) == getattr(defaults, name), name
  # The paper's optimizer: relative steps with momentum, 1/sqrt(step).
  assert opt.adafactor_parameter_scale and opt.adafactor_momentum == 0.9
  assert opt.grad_clip_norm is None and opt.warmup_steps == 1000
  np.testing.assert_allclose(opt.learning_rate, 1000 ** -0.5)
  xl4, _, _ = build(["sizes/paper.gin", "variants/xl_4w.gin"])
  assert xl4.block_width == 4 * model.block_width


def test_bench_paper_size_is_the_gin_paper_size():
  """scripts/bench_model.py --size paper benchmarks what the gin files train."""
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
  import bench_model  # pylint: disable=import-outside-toplevel
  paper = bench_model.SIZES["paper"]
  model, train, _ = build(["sizes/paper.gin", "variants/rec_fixed_skip.gin",
                           "tasks/pg19_tokens.gin"])
  bench = ModelConfig(**paper["model"], **bench_model.variants(
      paper["recurrent_layer"])["rec_fixed_skip"])
  for field in ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim",
                "block_width", "num_states", "recurrent_layers", "gate",
                "gate_variant"):
    assert getattr(bench, field) == getattr(model, field), field
  assert paper["segment"] == train.segment_length


def test_options_and_overrides_apply_in_order():
  model, train, opt = build(
      ["sizes/small.gin", "variants/rec_lstm_dual.gin",
       "options/window_1024.gin", "options/adamw_cosine.gin",
       "options/model_parallel_2.gin", "options/state_dropout.gin",
       "options/bfloat16.gin", "options/qk_norm.gin"],
      ["TrainConfig.segment_length = 2048", "ModelConfig.num_layers = 8"])
  assert model.block_width == 1024 and model.num_layers == 8
  assert train.segment_length == 2048 and train.mesh_shape == (-1, 2)
  assert (opt.name, opt.schedule) == ("adamw", "cosine")
  assert (train.state_dropout, train.cache_dropout) == (0.25, 0.0)
  assert model.dtype == "bfloat16" and model.qk_norm


def test_task_files_and_the_demo_parse():
  for task in (f for f in configurables.available_gin_files()
               if f.startswith("tasks/")):
    gin.clear_config()
    build(["sizes/tiny.gin", "variants/xl.gin", task])
  gin.clear_config()
  model, train, _ = build(["demo.gin"])
  assert model.vocab_size == 259 and model.recurrent_layers == (2,)
  model.check_segment_length(train.segment_length)
  model.check_segment_length(train.eval_length)


def test_misspelt_names_get_suggestions():
  with pytest.raises(configurables.GinConfigError,
                     match=r"named 'num_head'.*\n.*\n.*\nDid you mean 'num_heads'"):
    configurables.parse([], ["ModelConfig.num_head = 3"])
  with pytest.raises(configurables.GinConfigError,
                     match="Did you mean 'TrainConfig'"):
    configurables.parse([], ["TrainConfg.batch_size = 3"])
  with pytest.raises(configurables.GinConfigError, match="sizes/tiny.gin"):
    configurables.parse(["sizes/tiny_typo.gin"])


def count_params(model_config):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from brt.model import BlockRecurrentTransformer
  model = BlockRecurrentTransformer(model_config)
  tokens = jnp.zeros((1, model_config.block_width), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens,
                          model.initial_carry(1))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("corpus", ["pg19", "arxiv", "github"])
def test_paper_experiments_are_the_150m_and_1_3b_models(corpus):
  """Each experiment file is one command for a row of the paper's table."""
  sizes = {}
  for tag in ("150m", "1_3b"):
    gin.clear_config()
    model, train, opt = build([f"experiments/{corpus}_{tag}.gin"])
    model.check_segment_length(train.segment_length)
    # meliad: third from the top of 12; at 10 and 20 of 24 (tall_24L.gin).
    assert model.recurrent_layers == {"150m": (9,), "1_3b": (9, 19)}[tag]
    assert model.vocab_size == 32000 and opt.name == "adafactor"
    sizes[tag] = count_params(model)
  assert 120e6 < sizes["150m"] < 250e6, sizes
  assert 1.1e9 < sizes["1_3b"] < 1.6e9, sizes
  # Another row of the table: a variant file given after the experiment.
  gin.clear_config()
  model, train, _ = build([f"experiments/{corpus}_150m.gin",
                           "variants/xl_4w.gin"])
  assert model.recurrent_layers == () and model.block_width == 2048
  model.check_segment_length(train.segment_length)


def test_memory_experiment_wins_over_its_variants_and_tasks():
  # scripts/compare_memory.py parses variant, task, then the experiment.
  for variant in ("xl", "slide", "rec_fixed_skip", "rec_lstm_dual",
                  "feedback_fixed_skip", "rmt"):
    for task in ("retrieval", "copy", "passkey"):
      gin.clear_config()
      model, train, _ = build([f"variants/{variant}.gin",
                               f"tasks/{task}_bytes.gin",
                               "experiments/memory_cpu.gin"])
      assert (model.block_width, model.num_layers) == (16, 2)
      model.check_segment_length(train.segment_length)
      if variant == "rmt":
        assert model.memory_tokens == 8 and model.memory_bptt_blocks is None
      else:
        assert model.memory_tokens == 0
      if variant.startswith(("rec", "feedback")):
        assert model.recurrent_layers == (1,)


def test_paper_1b_is_meliads_tall_model():
  model, train, _ = build(["sizes/paper_1b.gin", "variants/rec_fixed_skip.gin"])
  assert (model.num_layers, model.d_model, model.num_heads, model.head_size,
          model.mlp_size) == (24, 2048, 16, 128, 8192)
  assert model.recurrent_layers == (9, 19)  # recurrent/tall_24L.gin
  assert train.segment_length == 4096 and model.block_width == 512


def test_classic_option_file_holds_the_classic_settings():
  model, _, _ = build(["sizes/tiny.gin", "variants/rec_fixed_skip.gin",
                       "options/brt_classic.gin"])
  for name, value in CLASSIC.items():
    assert getattr(model, name) == value, name
  assert all(getattr(ModelConfig(), n) != v for n, v in CLASSIC.items())
