"""Read/write placement of the recurrent state (read_recurrent_layers): an
earlier layer may read the state a later layer writes -- from the previous
block, never the current one."""

import numpy as np
import pytest

from brt.model import layer_kind
from brt.sampling import Sampler
from conftest import (changed_positions, init_model, random_tokens,
                      run_in_pieces, teacher_forced_logits, tiny_config)

# Layer 0 reads the state that layer 2 writes; layer 2 does not read it.
EARLY_READER = dict(num_layers=3, recurrent_layers=(2,),
                    read_recurrent_layers=(0,))


def test_layer_kinds_and_parameters():
  cfg = tiny_config(**EARLY_READER)
  assert [layer_kind(cfg, i) for i in range(3)] == ["feedback", "plain",
                                                    "writer"]
  _, variables = init_model(cfg)
  blocks = variables["params"]["blocks"]
  assert "scale_read" not in blocks["layer_2"]  # The writer reads nothing.
  assert "state_ids" in blocks["layer_2"] and "kv_state" in blocks["layer_2"]
  # The reader attends to the writer's state keys/values, with no
  # projections of its own.
  assert "kv_state" not in blocks["layer_0"] and "ln_state" not in blocks["layer_0"]
  # One query per token in the writer, two (self + state) in the reader.
  assert blocks["layer_2"]["q_tokens"]["kernel"].shape[1] == 1
  assert blocks["layer_0"]["q_tokens"]["kernel"].shape[1] == 2
  # Pairs follow the order given, whatever it is.
  cfg = tiny_config(num_layers=4, recurrent_layers=(3, 1),
                    read_recurrent_layers=(2, 0))
  assert cfg.recurrent_layers == (1, 3) and cfg.read_recurrent_layers == (0, 2)
  assert cfg.state_read_by(2) == 3 and cfg.state_read_by(1) is None


def test_no_logit_before_a_changed_token_changes():
  cfg = tiny_config(**EARLY_READER)
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(11, 2, 6 * w)
  # The last token of a block is the one that would leak into the block's
  # first tokens if layer 0 read the state written from this block.
  for position in (w - 1, 2 * w - 1, 3 * w + 3, 4 * w - 2):
    changed = changed_positions(model, variables, tokens, position, piece=3 * w)
    assert not changed[:position].any(), f"logits before {position} changed"
    assert changed[position]


def test_the_early_reader_reads_the_state():
  # One layer pair where only the state can carry token 0 past the window:
  # a 2-layer model reaches 3W tokens without a state.
  cfg = tiny_config(num_layers=2, recurrent_layers=(1,),
                    read_recurrent_layers=(0,))
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(12, 1, 8 * w)
  changed = changed_positions(model, variables, tokens, 0, piece=2 * w)
  assert changed[3 * w:].all()


def test_streaming_and_decoder_agree_with_the_forward_pass():
  cfg = tiny_config(**EARLY_READER)
  model, variables = init_model(cfg)
  w = cfg.block_width
  tokens = random_tokens(13, 2, 4 * w)
  whole, _ = run_in_pieces(model, variables, tokens, tokens.shape[1])
  pieces, _ = run_in_pieces(model, variables, tokens, w)
  np.testing.assert_allclose(pieces, whole, atol=1e-5, rtol=0)
  sampler = Sampler(model, variables, prefill_blocks=2)
  decoded, full = teacher_forced_logits(sampler, tokens, w + 2)
  scale = float(np.abs(np.asarray(full)).max())
  np.testing.assert_allclose(decoded, full, atol=2e-5 * scale, rtol=0)


@pytest.mark.parametrize("overrides,message", [
    (dict(recurrent_layers=(0,), read_recurrent_layers=(1,)),
     "cannot read the state of recurrent layer 0"),
    (dict(num_layers=3, recurrent_layers=(1, 2), read_recurrent_layers=(0, 0)),
     "a layer reads at most one state"),
    (dict(recurrent_layers=(1,), read_recurrent_layers=(0, 1)),
     "needs one reader per recurrent layer"),
    (dict(recurrent_layers=(1,), read_recurrent_layers=(0,), feedback=True),
     "feedback=True already makes every layer read"),
    (dict(num_layers=3, recurrent_layers=(1, 2), read_recurrent_layers=(0, 1)),
     "layer 1 writes a state of its own"),
])
def test_bad_placements_name_the_fix(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(**overrides)
