"""Sharded training on 8 fake CPU devices equals training on one device:
a 2 (data) x 4 (model) mesh, so both kinds of parallelism are exercised.

jax fixes its device count when it starts, so the meshes run in a
subprocess started with --xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import json, sys, tempfile
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_trainer import learnable_documents, make_trainer
from brt.data.batching import LongDocBatcher, eval_batcher
from conftest import tiny_config

assert jax.device_count() == 8, jax.devices()
docs = learnable_documents()
model = tiny_config(block_width=8, recurrent_layers=(1,))
out = {}
for data, model_axis in ((1, 1), (2, 4)):
  trainer = make_trainer(tempfile.mkdtemp(), 3, model=model, batch_size=8,
                         mesh_shape=(data, model_axis), checkpoint_every=3)
  state = trainer.train(LongDocBatcher(docs, 8, 16, seed=0))
  result = trainer.evaluate(state.params, eval_batcher(docs, 8, 16), 3)
  trainer.close()
  wi = state.params["blocks"]["layer_0"]["mlp"]["wi"]["kernel"]
  out[f"{data}x{model_axis}"] = {
      "losses": [r["loss"] for r in trainer.history if r["kind"] == "train"],
      "eval_loss": result.metrics["loss"],
      "params": [np.asarray(x).ravel().tolist()
                 for x in jax.tree_util.tree_leaves(state.params)],
      "devices": len(wi.sharding.device_set),
      "mlp_spec": str(wi.sharding.spec),
      "carry_spec": str(jax.tree_util.tree_leaves(state.carry)[0].sharding.spec),
  }
print("RESULT" + json.dumps(out))
"""


def test_data_and_model_parallel_match_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, HERE], env=env,
                        cwd=HERE, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  runs = json.loads(proc.stdout.split("RESULT", 1)[1])
  one = runs.pop("1x1")
  assert one["devices"] == 1
  assert runs["2x4"]["devices"] == 8
  # MLP columns over `model`; batch rows over `data`.
  assert runs["2x4"]["mlp_spec"] == "P(None, 'model')"
  assert runs["2x4"]["carry_spec"].startswith("P('data'")
  for name, run in runs.items():
    np.testing.assert_allclose(run["losses"], one["losses"], rtol=2e-5,
                               err_msg=name)
    np.testing.assert_allclose(run["eval_loss"], one["eval_loss"], rtol=2e-5,
                               err_msg=name)
    for a, b in zip(run["params"], one["params"]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
