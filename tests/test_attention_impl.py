"""The attention kernel switch (ExecutionConfig.attention):
jax.nn.dot_product_attention computes what the einsum reference does,
forward and backward; "auto" picks by backend and falls back where a kernel
cannot run."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brt
from brt import attention
from conftest import init_model, random_tokens, tiny_config


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("per_head_scale", [False, True])
def test_attend_kernels_agree_with_bias_and_mask(kv_heads, per_head_scale):
  rng = np.random.RandomState(kv_heads)
  b, nq, nk, h, d = 2, 3, 6, 4, 8
  q = jnp.asarray(rng.randn(b, nq, h, d), jnp.float32)
  k = jnp.asarray(rng.randn(b, nk, kv_heads, d), jnp.float32)
  v = jnp.asarray(rng.randn(b, nk, kv_heads, d), jnp.float32)
  bias = jnp.asarray(rng.randn(h, nq, nk), jnp.float32)
  mask = rng.rand(b, 1, nq, nk) > 0.4
  mask[..., 0] = True  # Every query sees a key.
  scale = jnp.asarray(rng.rand(h) + 0.5) if per_head_scale else 0.4

  def run(impl, q, k, v, bias):
    return attention.attend(q, k, v, scale=scale, bias=bias,
                            mask=jnp.asarray(mask), impl=impl)

  ref = run("einsum", q, k, v, bias)
  out = run("xla", q, k, v, bias)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  # The mask matters (so the comparison covers it).
  unmasked = attention.attend(q, k, v, scale=scale, bias=bias)
  assert float(jnp.abs(unmasked - ref).max()) > 1e-2

  cot = jnp.asarray(rng.randn(*ref.shape), jnp.float32)
  grads = lambda impl: jax.grad(
      lambda *a: jnp.sum(run(impl, *a) * cot), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for a, e in zip(grads("xla"), grads("einsum")):
    np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("per_head_scale", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_query_rows_equal_the_block_path(kv_heads, per_head_scale, dtype):
  """Decoding attends one query at a time (its own elementwise path, no
  dot); each row must equal that row of the whole block's attention."""
  rng = np.random.RandomState(7)
  b, nq, nk, h, d = 2, 3, 6, 4, 8
  q = jnp.asarray(rng.randn(b, nq, h, d), dtype)
  k = jnp.asarray(rng.randn(b, nk, kv_heads, d), dtype)
  v = jnp.asarray(rng.randn(b, nk, kv_heads, d), dtype)
  bias = jnp.asarray(rng.randn(h, nq, nk), jnp.float32)
  mask = rng.rand(b, 1, nq, nk) > 0.4
  mask[..., 0] = True
  scale = jnp.asarray(rng.rand(h) + 0.5) if per_head_scale else 0.4
  block = attention.attend(q, k, v, scale=scale, bias=bias,
                           mask=jnp.asarray(mask))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for i in range(nq):
    row = attention.attend(q[:, i:i + 1], k, v, scale=scale,
                           bias=bias[:, i:i + 1],
                           mask=jnp.asarray(mask[:, :, i:i + 1]))
    assert row.dtype == block.dtype
    np.testing.assert_allclose(np.asarray(row, np.float32),
                               np.asarray(block[:, i:i + 1], np.float32),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("overrides", [
    # T5 bias, masks over cache and compressed memory, a recurrent layer.
    dict(recurrent_layers=(1,), compressed_mem_factor=2),
    # Rotary, multi-query and learned per-head scales; feedback reads.
    dict(recurrent_layers=(1,), feedback=True, position="rotary",
         multi_query=True, qk_norm=True),
])
def test_model_logits_and_gradients_agree(overrides):
  cfg = tiny_config(**overrides)
  model, variables = init_model(cfg)
  other = brt.BlockRecurrentTransformer(cfg,
                                       brt.ExecutionConfig(attention="xla"))
  w = cfg.block_width
  tokens = random_tokens(4, 2, 4 * w)
  # A carry from an earlier segment, with one row starting a new document,
  # so that masks hide the cache in one row and not in the other.
  _, carry = model.apply(variables, random_tokens(5, 2, 3 * w),
                         model.initial_carry(2))
  sos = jnp.array([True, False])

  def loss(m, params):
    logits, new_carry = m.apply({"params": params}, tokens, carry,
                                start_of_sequence=sos)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean(), logits

  (l1, logits1), g1 = jax.jit(jax.value_and_grad(
      lambda p: loss(model, p), has_aux=True))(variables["params"])
  (l2, logits2), g2 = jax.jit(jax.value_and_grad(
      lambda p: loss(other, p), has_aux=True))(variables["params"])
  np.testing.assert_allclose(logits2, logits1, atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  flat1, flat2 = jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)
  for a, b in zip(flat2, flat1):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)
  assert max(float(jnp.abs(g).max()) for g in flat1) > 1e-3


def test_unknown_kernel_is_rejected():
  with pytest.raises(ValueError, match="attention='flash' is not one of"):
    brt.ExecutionConfig(attention="flash")


@pytest.mark.parametrize("check", [
    "check_pallas_attend(4, False, False)",
    "check_pallas_attend(4, True, True)",
    "check_pallas_attend(1, False, False)",
    "check_pallas_attend(1, True, True)",
    "check_pallas_model()",
])
def test_pallas_tpu_kernel_in_interpret_mode(check):
  """jax's Pallas flash kernel for TPUs, run by its interpreter on this
  CPU, one check to a fresh process: the interpreter keeps global state,
  and a process that has run one kernel has hung on the next (in a test
  worker and in a process running several checks in turn)."""
  code = f"import test_attention_impl as t\nt.{check}\nprint('checked')\n"
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [
                 tests, os.environ.get("PYTHONPATH")])))
  # A check takes 5-15 s here: the timeout only bounds what a hang costs.
  result = subprocess.run([sys.executable, "-c", code], cwd=tests, env=env,
                          capture_output=True, text=True, timeout=180)
  assert result.returncode == 0 and "checked" in result.stdout, (
      result.stderr[-3000:])


def check_pallas_attend(kv_heads, per_head_scale, bias_scaled):
  """The kernel against the einsum: values and gradients, with a position
  bias, a mask and a query that sees no key."""
  from jax.experimental.pallas import tpu as pltpu
  rng = np.random.RandomState(kv_heads)
  b, nq, nk, h, d = 1, 8, 128, 4, 8
  q = jnp.asarray(rng.randn(b, nq, h, d), jnp.float32)
  k = jnp.asarray(rng.randn(b, nk, kv_heads, d), jnp.float32)
  v = jnp.asarray(rng.randn(b, nk, kv_heads, d), jnp.float32)
  bias = jnp.asarray(rng.randn(h, nq, nk), jnp.float32)
  mask = rng.rand(b, 1, nq, nk) > 0.5
  mask[..., 0, :] = False  # The first query sees nothing: reads zeros.
  scale = jnp.asarray(rng.rand(h) + 0.5) if per_head_scale else 0.4
  cot = jnp.asarray(rng.randn(b, nq, h, d), jnp.float32)

  def run(impl, q, k, v, bias):
    return attention.attend(q, k, v, scale=scale, bias=bias,
                            mask=jnp.asarray(mask), impl=impl,
                            bias_scaled=bias_scaled)

  grads = lambda impl: jax.grad(
      lambda *a: jnp.sum(run(impl, *a) * cot), argnums=(0, 1, 2, 3))(q, k, v, bias)
  ref = run("einsum", q, k, v, bias)
  with pltpu.force_tpu_interpret_mode():
    out = run("pallas_tpu", q, k, v, bias)
    got = grads("pallas_tpu")
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  assert float(jnp.abs(out[:, 0]).max()) == 0
  for a, e in zip(got, grads("einsum")):
    np.testing.assert_allclose(a, e, atol=2e-5, rtol=1e-4)


def test_pallas_tpu_kernel_refuses_shapes_it_cannot_take():
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.randn(1, 8, 2, 8), jnp.float32)
             for _ in range(3))
  with pytest.raises(ValueError, match="keys in multiples of 128"):
    attention.attend(q, k, v, scale=0.3, impl="pallas_tpu")
  np.testing.assert_array_equal(
      attention.attend(q, k, v, scale=0.3, impl="pallas_tpu", fallback=True),
      attention.attend(q, k, v, scale=0.3))


def test_auto_takes_cudnn_on_gpus_with_16_bit_activations_only():
  kernel = lambda dtype, backend: brt.ExecutionConfig().attention_kernel(
      tiny_config(dtype=dtype), backend)
  assert kernel("bfloat16", "gpu") == "cudnn"
  assert kernel("float32", "gpu") == "einsum"
  assert kernel("bfloat16", "cpu") == kernel("float32", "cpu") == "einsum"
  assert kernel("bfloat16", "tpu") == kernel("float32", "tpu") == "pallas_tpu"
  assert brt.ExecutionConfig(attention="xla").attention_kernel(
      tiny_config(), "gpu") == "xla"


def test_a_kernel_that_cannot_run_falls_back_only_when_asked():
  """Here cuDNN cannot run (no GPU, or shapes it refuses on one): jax says
  so while tracing; "auto" then takes the einsum, a chosen kernel raises."""
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.randn(2, 4, 2, 8), jnp.bfloat16)
             for _ in range(3))
  want = attention.attend(q, k, v, scale=0.3)
  got = attention.attend(q, k, v, scale=0.3, impl="cudnn", fallback=True)
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(want, np.float32))
  if jax.default_backend() != "gpu":
    with pytest.raises(RuntimeError, match="cuDNN"):
      attention.attend(q, k, v, scale=0.3, impl="cudnn")


def check_pallas_model():
  """An XL model whose every attention fits the kernel (W = 64: 64 queries,
  128 keys): the einsum model's logits and gradients."""
  from jax.experimental.pallas import tpu as pltpu
  cfg = tiny_config(block_width=64, num_layers=1, recurrent_layers=())
  model, variables = init_model(cfg)
  fused = brt.BlockRecurrentTransformer(
      cfg, brt.ExecutionConfig(attention="pallas_tpu"))
  tokens = random_tokens(4, 1, 2 * cfg.block_width)

  def loss(m, params):
    logits, _ = m.apply({"params": params}, tokens, m.initial_carry(1))
    return jnp.mean(logits ** 2), logits

  (l1, logits1), g1 = jax.value_and_grad(
      lambda p: loss(model, p), has_aux=True)(variables["params"])
  with pltpu.force_tpu_interpret_mode():
    (l2, logits2), g2 = jax.value_and_grad(
        lambda p: loss(fused, p), has_aux=True)(variables["params"])
  np.testing.assert_allclose(logits2, logits1, atol=1e-4, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)
