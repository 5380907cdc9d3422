"""The entry point, run as users run it: `python -m brt.main` in a subprocess.

Covers gin files end to end (train, eval, generate), bad bindings, and runs
stopped by SIGTERM or killed with SIGKILL that resume exactly.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny experiment composed like the real ones: base + variant + task,
# with the size given by macros and bindings.
EXPERIMENT_GIN = """
include 'base.gin'
include 'variants/rec_lstm_dual.gin'
BLOCK_WIDTH = 8
BLOCK_WIDTH_4X = 32
NUM_STATES = 3
RECURRENT_LAYERS = [1]
ModelConfig.num_layers = 2
ModelConfig.d_model = 32
ModelConfig.num_heads = 4
ModelConfig.mlp_dim = 48
ModelConfig.vocab_size = 259
ModelConfig.dropout_rate = 0.1

DataConfig.task = @pg19_local()
pg19_local.data_dir = '{data_dir}'
pg19_local.vocabulary = 'bytes'

TrainConfig.batch_size = 2
TrainConfig.segment_length = 16
TrainConfig.num_steps = {num_steps}
TrainConfig.log_every = 1
TrainConfig.checkpoint_every = {checkpoint_every}
TrainConfig.eval_every = 0
TrainConfig.eval_segment_length = 32
TrainConfig.mesh_shape = (1, 1)
OptimizerConfig.warmup_steps = 3
"""


def write_corpus(root):
  """A PG19-layout directory of short plain-text books."""
  words = "the a king queen sword crown night day speaks runs".split()
  rng = np.random.RandomState(0)
  for split, count in (("train", 6), ("validation", 2), ("test", 2)):
    os.makedirs(root / split)
    for i in range(count):
      text = " ".join(rng.choice(words, rng.randint(40, 120))) + "\n"
      (root / split / f"book{i}.txt").write_text(text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  write_corpus(root)
  return root


def write_gin(path, corpus, num_steps, checkpoint_every=2):
  path.write_text(EXPERIMENT_GIN.format(data_dir=corpus, num_steps=num_steps,
                                        checkpoint_every=checkpoint_every))
  return str(path)


def command(workdir, *args):
  return [sys.executable, "-m", "brt.main", f"--workdir={workdir}", *args]


def run(workdir, *args, check=True):
  result = subprocess.run(command(workdir, *args), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n"
                         f"{result.stderr[-3000:]}")
  return result


def train_losses(workdir):
  """Per-step training losses from metrics.jsonl; a step that was run twice
  (after a kill) keeps its last value."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["kind"] == "train":
        losses[record["step"]] = record["loss"]
  return [losses[s] for s in sorted(losses)]


def test_train_eval_generate_from_gin_files(tmp_path, corpus):
  gin = write_gin(tmp_path / "exp.gin", corpus, num_steps=4)
  workdir = tmp_path / "run"
  out = run(workdir, "--mode=train_and_eval", f"--gin_file={gin}",
            "--gin_param=TrainConfig.eval_batch_size = 2")
  assert "step 4/4" in out.stdout and "eval at step 4" in out.stdout
  # No TensorFlow or CUDA start-up lines in front of brt's output.
  for noise in ("oneDNN", "cuda drivers", "cuInit", "absl::InitializeLog"):
    assert noise not in out.stderr, out.stderr[:2000]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  operative = (workdir / "config.gin").read_text()
  assert "ModelConfig.gate = 'lstm'" in operative
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  tags = events.Reload().Tags()["tensors"]
  for tag in ("train/loss", "eval_validation/bits_per_token",
              "operative_config"):
    assert any(t.startswith(tag) for t in tags), (tag, tags)
  assert os.listdir(workdir / "config_history") == ["000.gin"]
  assert len(train_losses(workdir)) == 4

  # eval and generate find the run's config in the workdir.
  run(workdir, "--mode=eval", "--eval_split=test")
  report = json.loads((workdir / "eval_test_4.json").read_text())
  texts = [(corpus / "test" / f"book{i}.txt").read_text() for i in range(2)]
  assert report["metrics"]["num_documents"] == 2
  assert report["metrics"]["num_bytes"] == sum(len(t.encode()) for t in texts)
  assert report["metrics"]["num_words"] == sum(len(t.split()) for t in texts)
  assert os.path.getsize(workdir / "eval_test_4.png") > 1000
  # The report keeps the loss-by-position bins, so runs can be compared.
  assert sum(report["position_count"]) == report["metrics"]["num_tokens"]
  # The state-withheld ablation writes its own file, which plot_eval's
  # workdir lookup below must not take for the plain evaluation.
  run(workdir, "--mode=eval", "--eval_split=test",
      "--gin_param=TrainConfig.eval_withhold_state = True",
      "--gin_param=TrainConfig.eval_segment_length = 8")
  withheld = json.loads(
      (workdir / "eval_test_4_state_withheld.json").read_text())
  assert withheld["state_withheld"] and not report["state_withheld"]
  assert withheld["metrics"]["num_tokens"] == report["metrics"]["num_tokens"]
  out = subprocess.run(
      [sys.executable, "-m", "brt.plot_eval", f"--out={tmp_path / 'cmp.png'}",
       f"a={workdir}", f"b={workdir / 'eval_test_4.json'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count("bits/token") == 2
  # The workdir argument took the plain evaluation, not the withheld one.
  assert f"a: {report['metrics']['bits_per_token']:.4f} bits/token" in out.stdout
  assert os.path.getsize(tmp_path / "cmp.png") > 1000

  out = run(workdir, "--mode=generate", "--prompt=the king", "--num_tokens=20",
            "--temperature=0")
  assert out.stdout.startswith("the king")

  # A chosen checkpoint; one that does not exist is a clear error.
  run(workdir, "--mode=eval", "--eval_split=test", "--checkpoint_step=2")
  earlier = json.loads((workdir / "eval_test_2.json").read_text())
  assert earlier["step"] == 2
  assert earlier["metrics"]["bits_per_token"] != report["metrics"][
      "bits_per_token"]
  out = run(workdir, "--mode=generate", "--prompt=the", "--checkpoint_step=3",
            check=False)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert "No checkpoint of step 3" in out.stderr and "[2, 4]" in out.stderr

  # The latest checkpoint's arrays damaged: eval says so and falls back to
  # step 2, whose numbers it reports; asked for by step, it refuses.
  for path in glob.glob(str(workdir / "checkpoints" / "4" / "state" / "**"
                            / "d" / "*"), recursive=True):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  os.remove(workdir / "eval_test_2.json")
  out = run(workdir, "--mode=eval", "--eval_split=test")
  assert "passing over damaged step(s) [4]" in out.stdout
  again = json.loads((workdir / "eval_test_2.json").read_text())
  assert again["metrics"] == earlier["metrics"]
  out = run(workdir, "--mode=eval", "--checkpoint_step=4", check=False)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert "checkpoints/4 is damaged" in out.stderr


def test_workdir_that_is_a_file_is_a_clear_error(tmp_path, corpus):
  gin = write_gin(tmp_path / "exp.gin", corpus, num_steps=4)
  (tmp_path / "run").write_text("not a directory")
  out = run(tmp_path / "run", f"--gin_file={gin}", check=False)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert "is a file, not a directory" in out.stderr


def test_bad_gin_binding_fails_with_the_nearest_names(tmp_path, corpus):
  gin = write_gin(tmp_path / "exp.gin", corpus, num_steps=4)
  out = run(tmp_path / "run", f"--gin_file={gin}",
            "--gin_param=ModelConfig.num_layer = 3", check=False)
  assert out.returncode == 1
  assert "doesn't have a parameter named 'num_layer'" in out.stderr
  assert "Did you mean 'num_layers'" in out.stderr
  assert "Traceback" not in out.stderr


def _wait_for(condition, process, what, timeout=300):
  start = time.time()
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"training exited before {what}: "
                           f"{process.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def test_sigterm_then_kill_then_resume_equals_one_straight_run(tmp_path,
                                                                corpus):
  num_steps = 12
  gin = write_gin(tmp_path / "exp.gin", corpus, num_steps=num_steps,
                  checkpoint_every=1)
  straight = tmp_path / "straight"
  run(straight, f"--gin_file={gin}")

  workdir = tmp_path / "stopped"
  ckpts = workdir / "checkpoints"
  # The interrupted runs are told to go on much longer, so that they are
  # still training when the signal comes; the rsqrt schedule does not depend
  # on the number of steps, so their steps equal the straight run's.
  longer = command(workdir, f"--gin_file={gin}",
                   "--gin_param=TrainConfig.num_steps = 100000")
  # 1. Pre-emption: SIGTERM once training is under way; it saves and exits 0.
  proc = subprocess.Popen(longer, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (ckpts / "2").is_dir(), proc, "checkpoint 2")
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Stopped by SIGTERM at step" in out
  stopped_at = int(out.split("Stopped by SIGTERM at step ")[1].split(";")[0])
  assert stopped_at + 3 < num_steps and (ckpts / str(stopped_at)).is_dir()

  # 2. A crash: SIGKILL at once after the next checkpoint lands, whatever
  # the run is doing then (often writing the one after).
  proc = subprocess.Popen(longer, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (ckpts / str(stopped_at + 2)).is_dir(), proc,
            f"checkpoint {stopped_at + 2}")
  proc.kill()
  proc.communicate()

  # 3. Resume to the end: the same losses and parameters as the straight run.
  out = run(workdir, f"--gin_file={gin}")
  assert "Restored step" in out.stdout
  assert train_losses(workdir) == train_losses(straight)
  (step_a, params_a), (step_b, params_b) = (_final_params(workdir),
                                            _final_params(straight))
  assert step_a == step_b == num_steps
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)


def _final_params(workdir):
  """(step, parameters) of the run's last checkpoint, read back with orbax."""
  import jax
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  manager.close()
  return step, [np.asarray(x) for x in
                jax.tree_util.tree_leaves(state["params"])]
