"""brt.meliad: meliad's parameters and gin bindings become a brt model with
meliad's logits (against tests/meliad_reference.py, the paper's model written
out in numpy), settings brt cannot express are refused by name, and a meliad
checkpoint becomes a workdir that brt evaluates, samples from and trains."""

import dataclasses
import os
import subprocess
import sys

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import meliad
from conftest import apply
import meliad_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPECS = {
    "xl": ref.Spec(),
    **{f"rec_{g}_{v}": ref.Spec(layers=3, recurrent=(1,), gate=g,
                                single=v == "single", skip=v == "skip")
       for g in ("bias", "lstm") for v in ("skip", "single", "dual")},
    "feedback_lstm_single": ref.Spec(layers=3, recurrent=(1,), gate="lstm",
                                     single=True, skip=False, feedback=True),
    "feedback_two_writers": ref.Spec(layers=3, recurrent=(0, 2), feedback=True),
    "rec_keys_not_normalised": ref.Spec(recurrent=(0,), normalize_keys=False),
    "no_xl_cache": ref.Spec(recurrent=(1,), xl=False),
}


def relative_difference(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def segments_against_reference(spec, seed=0, num_segments=3, length=None):
  """brt's and the reference's logits over consecutive segments: a document
  starts in both rows in the first and in row 1 again in the second."""
  length = length or (2 * spec.window if spec.xl else spec.window)
  rng = np.random.RandomState(seed)
  params = ref.random_params(spec, rng)
  cfg, variables = meliad.convert(params, spec.gin(length, 2))
  model = brt.BlockRecurrentTransformer(cfg)
  carry, cache = model.initial_carry(2), ref.initial_cache(spec, 2)
  out = []
  for segment in range(num_segments):
    tokens = rng.randint(0, spec.vocab, (2, length))
    sos = np.array([segment == 0, segment < 2])
    want, cache = ref.forward(spec, params, tokens, sos, cache)
    got, carry = apply(model, variables, jnp.asarray(tokens, jnp.int32),
                       carry, jnp.asarray(sos))
    out.append((np.asarray(got), want))
  return cfg, out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_converted_model_gives_meliads_logits(name):
  cfg, segments = segments_against_reference(SPECS[name])
  for got, want in segments:
    assert relative_difference(got, want) < 1e-4
  # The state (and the cache) mattered: the reference's own logits change
  # from segment to segment for the same kind of text.
  assert not np.allclose(segments[1][1], segments[2][1])
  spec = SPECS[name]
  assert cfg.recurrent_layers == spec.recurrent
  assert cfg.feedback == spec.feedback
  assert (cfg.dropout_rate, cfg.attention_dropout_rate) == (0.05, 0.05)


def test_the_paper_config_is_what_meliad_builds():
  """Converting a paper-size meliad config gives sizes/paper.gin's model."""
  spec = ref.Spec(vocab=32000, layers=12, embed=1024, heads=8, head=128,
                  mlp=4096, window=512, states=512, recurrent=(9,))
  cfg, run = meliad.model_config(meliad.Bindings([spec.gin(4096, 1).replace(
      'dtype = "float32"', 'dtype = "bfloat16"')]))
  from brt import configurables
  gin.clear_config()
  try:
    configurables.parse(["sizes/paper.gin", "variants/rec_fixed_skip.gin"],
                        ["ModelConfig.vocab_size = 32000"])
    paper = configurables.build(brt.ModelConfig)
    train = configurables.build(brt.trainer.TrainConfig)
  finally:
    gin.clear_config()
  assert cfg == dataclasses.replace(paper, head_dim=128, mlp_dim=4096)
  assert run.sequence_length == train.segment_length == 4096


def test_a_reset_row_and_a_fresh_row_agree_with_meliad_in_bfloat16():
  spec = ref.Spec(layers=2, recurrent=(1,))
  params = ref.random_params(spec, np.random.RandomState(3))
  cfg, variables = meliad.convert(params, spec.gin(8, 2).replace(
      'dtype = "float32"', 'dtype = "bfloat16"'))
  assert cfg.dtype == "bfloat16"
  model = brt.BlockRecurrentTransformer(cfg)
  tokens = np.random.RandomState(4).randint(0, spec.vocab, (2, 8))
  sos = np.array([True, True])
  want, _ = ref.forward(spec, params, tokens, sos, ref.initial_cache(spec, 2))
  got, _ = apply(model, variables, jnp.asarray(tokens, jnp.int32),
                 model.initial_carry(2), jnp.asarray(sos))
  assert relative_difference(got, want) < 0.05


@pytest.mark.parametrize("binding,match", [
    ('transformer_layer.TransformerLayer.relative_position_type = "rotary"',
     "relative_position_type = 'rotary'"),
    ("decoder_stack.DecoderStack.use_absolute_positions = True",
     "use_absolute_positions = True"),
    ('transformer_layer.TransformerLayer.recurrent_gate_type = "full"',
     "recurrent_gate_type = 'full'"),
    ("transformer_ffn/nn_components.MLP.use_bias = True",
     "transformer_attn/nn_components.MLP.use_bias = False"),
    ("decoder_stack.DecoderStack.dstack_window_length = 8",
     "dstack_window_length = 8"),
    ("nn_components.LayerNorm.use_mean = True\n"
     "nn_components.LayerNorm.use_bias = True", "LayerNorm.use_bias = True"),
    ("decoder_stack.DecoderStack.num_layers = %UNDEFINED", "%UNDEFINED"),
])
def test_settings_brt_cannot_express_are_refused_by_name(binding, match):
  spec = ref.Spec(recurrent=(1,))
  with pytest.raises(meliad.UnsupportedMeliadConfig, match=match):
    meliad.model_config(meliad.Bindings([spec.gin(8, 1), binding]))


def test_parameters_the_config_does_not_describe_are_refused():
  spec = ref.Spec(recurrent=(1,))
  params = ref.random_params(spec, np.random.RandomState(0))
  gin_text = spec.gin(8, 1)
  params["transformer0"]["external_memory_bias"] = np.zeros(4)
  with pytest.raises(meliad.UnsupportedMeliadConfig,
                     match="transformer0/external_memory_bias"):
    meliad.convert(params, gin_text)
  del params["transformer0"]["external_memory_bias"]
  lstm = ref.random_params(dataclasses.replace(spec, gate="lstm"),
                           np.random.RandomState(0))
  with pytest.raises(meliad.UnsupportedMeliadConfig, match="gate_bias"):
    meliad.convert(lstm, gin_text)  # The bindings say "bias" gates.


def test_gin_files_with_includes_and_block_bindings(tmp_path):
  spec = ref.Spec(recurrent=(1,))
  (tmp_path / "base.gin").write_text(spec.gin(8, 1))
  (tmp_path / "variant.gin").write_text(
      'include "base.gin"\n'
      'transformer_layer.TransformerLayer:\n  recurrent_gate_type = "lstm"\n')
  bindings = meliad.Bindings(['include "variant.gin"', "NUM_LAYERS = 3"],
                             [str(tmp_path)])
  cfg, _ = meliad.model_config(bindings)
  assert (cfg.gate, cfg.num_layers, cfg.norm) == ("lstm", 3, "rms")
  cfg, _ = meliad.model_config(meliad.Bindings(
      [spec.gin(8, 1), "nn_components.LayerNorm.use_mean = True"]))
  assert (cfg.norm, cfg.use_bias) == ("layer", False)


def _meliad_workdir(tmp_path, spec, params, step=1000):
  """A meliad workdir: a flax msgpack checkpoint of its training state."""
  from flax import serialization
  workdir = tmp_path / "meliad_run"
  workdir.mkdir()
  state = {"optimizer": {"target": {"decoder": params},
                         "state": {"step": np.asarray(step)}},
           "state": {}}
  (workdir / f"checkpoint_{step}").write_bytes(
      serialization.msgpack_serialize(state))
  (workdir / "checkpoint_10").write_bytes(b"an older one")
  return workdir


def test_checkpoint_reading_takes_the_newest(tmp_path):
  spec = ref.Spec(recurrent=(1,))
  params = ref.random_params(spec, np.random.RandomState(0))
  workdir = _meliad_workdir(tmp_path, spec, params)
  restored = meliad.read_checkpoint(str(workdir))
  _, direct = meliad.convert(params, spec.gin(8, 1))
  _, loaded = meliad.convert(restored, spec.gin(8, 1))
  for a, b in zip(jax.tree_util.tree_leaves(direct),
                  jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_command_writes_a_workdir_brt_evaluates_samples_and_trains(tmp_path):
  from test_main import write_corpus
  corpus = tmp_path / "corpus"
  write_corpus(corpus)
  spec = ref.Spec(vocab=259, recurrent=(1,))
  params = ref.random_params(spec, np.random.RandomState(0))
  meliad_dir = _meliad_workdir(tmp_path, spec, params)
  (tmp_path / "meliad.gin").write_text(spec.gin(8, 2))
  (tmp_path / "task.gin").write_text(
      f"DataConfig.task = @pg19_local()\n"
      f"pg19_local.data_dir = '{corpus}'\npg19_local.vocabulary = 'bytes'\n"
      "TrainConfig.batch_size = 2\nTrainConfig.num_steps = 2\n"
      "TrainConfig.mesh_shape = (1, 1)\nTrainConfig.eval_batch_size = 2\n")
  out = tmp_path / "converted"
  result = subprocess.run(
      [sys.executable, "-m", "brt.meliad", f"--checkpoint={meliad_dir}",
       f"--gin_file={tmp_path / 'meliad.gin'}", f"--workdir={out}",
       f"--brt_gin_file={tmp_path / 'task.gin'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out / "checkpoints")) == ["0"]

  from brt import configurables
  from brt.experiment import Experiment
  gin.clear_config()
  try:
    configurables.parse([str(out / "config.gin")])
    exp = Experiment.from_gin(str(out), write_config=False)
    trainer, state = exp._restored(verbose=False)
    trainer.close()
    _, want = meliad.convert(params, spec.gin(8, 2))
    got = flax.traverse_util.flatten_dict(state.params)
    for path, value in flax.traverse_util.flatten_dict(want["params"]).items():
      np.testing.assert_array_equal(np.asarray(got[path]), value)
    report = exp.evaluate("test", plot=False)
    assert report["step"] == 0 and np.isfinite(report["metrics"]["bits_per_byte"])
    assert exp.generate("the king", 5)
    # Training continues from the converted weights (the data from its start).
    exp.train()
    trainer, state = exp._restored(verbose=False)
    trainer.close()
    assert int(state.step) == 2

    # A new run fine-tunes from the converted weights (--init_from): step 0,
    # meliad's parameters, a fresh optimizer state.
    gin.clear_config()
    configurables.parse([str(out / "config.gin")],
                        [f"TrainConfig.init_from = '{out / 'checkpoints' / '0'}'"])
    tuned = Experiment.from_gin(str(tmp_path / "finetune"))
    trainer = tuned.trainer(verbose=False)
    state = trainer.restore_or_init()
    trainer.close()
    assert int(state.step) == 0
    got = flax.traverse_util.flatten_dict(state.params)
    for path, value in flax.traverse_util.flatten_dict(want["params"]).items():
      np.testing.assert_array_equal(np.asarray(got[path]), value)
  finally:
    gin.clear_config()
