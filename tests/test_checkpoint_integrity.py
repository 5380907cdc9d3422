"""Damaged checkpoints: restored exactly as saved, or refused and passed over.

Every file of a checkpoint is damaged in turn (bytes flipped, or the file cut
short); restoring then either gives back exactly what was saved or falls back
to the previous checkpoint, saying so. A training run resumed over a damaged
checkpoint ends equal to a straight run.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brt import checkpoints
from brt.checkpoints import (Checkpointer, DamagedCheckpointError,
                             IncompatibleCheckpointError)
from test_trainer import batches, learnable_documents, make_trainer


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _same(a, b):
  return all(x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
             for x, y in zip(_leaves(a), _leaves(b)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "uint32",
                                   "bool", "int8"])
def test_fingerprint_changes_with_any_one_element(dtype):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randint(0, 2, (5, 7)) if dtype == "bool"
                  else rng.randint(0, 100, (5, 7))).astype(dtype)
  (base,) = checkpoints._fingerprints([x])
  seen = {tuple(np.asarray(base))}
  for i in range(x.size):
    flat = x.reshape(-1)
    changed = flat.at[i].set(~flat[i] if dtype == "bool" else flat[i] + 1)
    (fp,) = checkpoints._fingerprints([changed.reshape(x.shape)])
    seen.add(tuple(np.asarray(fp)))
  assert len(seen) == x.size + 1  # Every change gives its own fingerprint.
  # Swapping two different elements changes it too (positions count).
  swapped = x.reshape(-1)
  i, j = 0, int(np.argmax(np.asarray(swapped != swapped[0])))
  swapped = swapped.at[i].set(x.reshape(-1)[j]).at[j].set(x.reshape(-1)[i])
  (fp,) = checkpoints._fingerprints([swapped.reshape(x.shape)])
  assert tuple(np.asarray(fp)) != tuple(np.asarray(base))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run with checkpoints at steps 3 and 6, and its states at both."""
  workdir = tmp_path_factory.mktemp("run")
  trainer = make_trainer(workdir, 6)
  trainer.train(batches(learnable_documents()))
  trainer.close()
  ckpt = Checkpointer(str(workdir / "checkpoints"), asynchronous=False)
  target = trainer.abstract_state()
  states = {s: ckpt.restore(target, trainer.model_config, s)[0]
            for s in (3, 6)}
  ckpt.close()
  return workdir, trainer, states


def _damage(path, how):
  data = bytearray(open(path, "rb").read())
  if how == "cut":
    data = data[:len(data) // 2]
  else:
    for i in range(len(data) // 3, min(len(data), len(data) // 3 + 8)):
      data[i] ^= 0xA5
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_every_damaged_file_is_either_harmless_or_passed_over(
    trained, tmp_path, capsys):
  workdir, trainer, states = trained
  latest = workdir / "checkpoints" / "6"
  files = sorted(os.path.relpath(p, latest) for p in glob.glob(
      str(latest / "**" / "*"), recursive=True) if os.path.isfile(p)
                 and os.path.getsize(p) > 0)
  assert any("ocdbt" in f for f in files), files  # The arrays are among them.
  outcomes = {}
  for how in ("flip", "cut"):
    for name in files:
      copy = tmp_path / f"{how}-{name.replace('/', '_')}"
      shutil.copytree(workdir / "checkpoints", copy)
      _damage(copy / "6" / name, how)
      ckpt = Checkpointer(str(copy), asynchronous=False)
      try:
        state, _, step = ckpt.restore(trainer.abstract_state(),
                                      trainer.model_config)
      except IncompatibleCheckpointError:
        # Damage to the config item of step 6 that reads as another model:
        # refused loudly, which is also safe.
        outcomes[how, name] = "refused"
        continue
      finally:
        ckpt.close()
      # Whatever was restored is exactly what was saved at that step.
      assert _same(state, states[step]), (how, name, step)
      if step == 3:
        assert "passing over damaged step(s) [6]" in capsys.readouterr().out
      outcomes[how, name] = step
  # Damage to the array files was noticed (some of orbax's files are not
  # read back at all: damage there is harmless, as checked above).
  assert any(outcomes[how, f] == 3 for how in ("flip", "cut")
             for f in files if "/d/" in f), outcomes


def test_values_other_than_those_saved_are_refused(trained, tmp_path, capsys):
  """Files that read back cleanly but hold other values (here: the record of
  one array's fingerprint changed) fail verification."""
  workdir, trainer, states = trained
  copy = tmp_path / "ckpt"
  shutil.copytree(workdir / "checkpoints", copy)
  (record_file,) = [p for p in glob.glob(str(copy / "6" / "integrity" / "*"))
                    if not p.endswith(".txt")]
  record = json.load(open(record_file))
  name = sorted(record["arrays"])[0]
  fingerprint = record["arrays"][name]["fingerprint"]
  record["arrays"][name]["fingerprint"] = fingerprint[:-1] + (
      "1" if fingerprint[-1] == "0" else "0")
  json.dump(record, open(record_file, "w"))
  ckpt = Checkpointer(str(copy), asynchronous=False)
  state, _, step = ckpt.restore(trainer.abstract_state(), trainer.model_config)
  ckpt.close()
  assert step == 3 and _same(state, states[3])
  out = capsys.readouterr().out
  assert f"differs from what was saved ({name})" in out


def test_every_checkpoint_damaged_is_a_clear_error(trained, tmp_path):
  workdir, trainer, _ = trained
  copy = tmp_path / "ckpt"
  shutil.copytree(workdir / "checkpoints", copy)
  for step in ("3", "6"):
    for path in glob.glob(str(copy / step / "state" / "**" / "d" / "*"),
                          recursive=True):
      _damage(path, "cut")
  ckpt = Checkpointer(str(copy), asynchronous=False)
  with pytest.raises(DamagedCheckpointError,
                     match=r"Every checkpoint .* is damaged \(steps \[6, 3\]"):
    ckpt.restore(trainer.abstract_state(), trainer.model_config)
  # Asked for by step, a damaged checkpoint is refused, not replaced.
  with pytest.raises(DamagedCheckpointError, match=r"/6 is damaged"):
    ckpt.restore(trainer.abstract_state(), trainer.model_config, 6)
  with pytest.raises(FileNotFoundError, match=r"holds steps \[3, 6\]"):
    ckpt.restore(trainer.abstract_state(), trainer.model_config, 5)
  ckpt.close()


def test_resume_over_a_damaged_checkpoint_equals_a_straight_run(
    trained, tmp_path):
  workdir, _, _ = trained
  straight = make_trainer(tmp_path / "straight", 9)
  state_a = straight.train(batches(learnable_documents()))
  straight.close()

  run = tmp_path / "resumed"
  shutil.copytree(workdir, run)
  for path in glob.glob(str(run / "checkpoints" / "6" / "state" / "**" / "d"
                            / "*"), recursive=True):
    _damage(path, "cut")
  resumed = make_trainer(run, 9)
  state_b = resumed.train(batches(learnable_documents()))
  resumed.close()
  # Steps 4-6 were trained again from step 3, and saved again.
  assert os.path.isdir(run / "checkpoints.damaged" / "6")
  assert resumed.checkpointer.all_steps() == [3, 6, 9]
  assert _same(state_a.params, state_b.params)


def test_changed_batch_size_names_the_carry(trained):
  workdir, _, _ = trained
  other = make_trainer(workdir, 6, batch_size=2)
  with pytest.raises(IncompatibleCheckpointError,
                     match=r"other shapes .*carry.*TrainConfig.batch_size"):
    other.restore_or_init()
  other.close()


def test_checkpoint_without_integrity_record_still_restores(trained, tmp_path):
  """Checkpoints written before integrity records restore, unverified."""
  workdir, trainer, states = trained
  copy = tmp_path / "old"
  shutil.copytree(workdir / "checkpoints", copy)
  for step in ("3", "6"):
    shutil.rmtree(copy / step / "integrity")
  ckpt = Checkpointer(str(copy), asynchronous=False)
  state, _, step = ckpt.restore(trainer.abstract_state(), trainer.model_config)
  ckpt.close()
  assert step == 6 and _same(state, states[6])
