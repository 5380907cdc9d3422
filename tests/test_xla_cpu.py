"""brt/xla_cpu.py: the products tuned to XLA:CPU, and brt/xla_cpu.py's dense
layer and norms on both product paths."""

import flax.linen as nn
import jax
import jax.extend.core  # jaxprs_in_params (no longer in jax.core from 0.11)
import jax.numpy as jnp
import numpy as np
import pytest

from brt import linear, xla_cpu

# The products brt takes: attention logits and outputs (plain, grouped and
# multi-query heads), and dense layers: one 2-D product in float32; in 16-bit
# contracting one axis or three (the attention output projection).
SPECS = {
    "bkgd,bqgnd->bgnqk": ((2, 7, 2, 8), (2, 5, 2, 3, 8)),
    "bkhd,bqhd->bhqk": ((2, 7, 4, 8), (2, 5, 4, 8)),
    "bkd,bqhd->bqhk": ((2, 7, 8), (2, 5, 4, 8)),
    "bhqk,bkhd->bqhd": ((2, 4, 5, 7), (2, 7, 4, 8)),
    "bgnqk,bkgd->bqgnd": ((2, 2, 3, 5, 7), (2, 7, 2, 8)),
    "bqhk,bkd->bqhd": ((2, 5, 4, 7), (2, 7, 8)),
    "ri,io->ro": ((10, 16), (16, 24)),
    "abc,cdef->abdef": ((2, 5, 16), (16, 2, 3, 8)),
    "abcde,cdef->abf": ((2, 5, 2, 3, 8), (2, 3, 8, 16)),
}


def _bf16_exact(shape, seed):
  """Random values that bf16 represents exactly, so that a bf16 product
  accumulated in float32 equals the float32 product up to summation order."""
  x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
  return jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_transposed_specs_give_jax_gradients(spec):
  a_shape, b_shape = SPECS[spec]
  a, b = _bf16_exact(a_shape, 0), _bf16_exact(b_shape, 1)
  out, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)
  g = _bf16_exact(out.shape, 2)
  spec_a, spec_b = xla_cpu.transposed_specs(spec)
  da, db = vjp(g)
  np.testing.assert_allclose(jnp.einsum(spec_a, g, b), da, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(jnp.einsum(spec_b, a, g), db, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("spec", ["ab,bc->a", "aa,ab->b", "ab,cd->ad"])
def test_unsupported_specs_are_refused(spec):
  with pytest.raises(ValueError, match="brt's einsum"):
    xla_cpu.transposed_specs(spec)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_mixed_einsum_equals_float32_product_and_gradients(spec):
  """With bf16-exact operands and cotangent, every product -- forward and
  both backward -- accumulates in float32 and matches float32 arithmetic;
  gradients come back in each operand's dtype."""
  a_shape, b_shape = SPECS[spec]
  a, b = _bf16_exact(a_shape, 3), _bf16_exact(b_shape, 4)
  want, want_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)
  got, got_vjp = jax.vjp(
      lambda a, b: xla_cpu.einsum(spec, a, b, jnp.bfloat16,
                                 out_dtype=jnp.float32), a, b)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g = _bf16_exact(want.shape, 5)
  for got_grad, want_grad in zip(got_vjp(g), want_vjp(g)):
    assert got_grad.dtype == jnp.float32  # The operand's dtype, not bf16.
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def _dot_generals(jaxpr):
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _dot_generals(sub)
  return found


def test_mixed_backward_products_take_bf16_and_accumulate_in_float32():
  """jax's default transpose would upcast the bf16 operand to meet the float32
  cotangent; the custom VJP keeps all three products bf16 x bf16 -> f32."""
  spec = "abc,cdef->abdef"
  a, b = _bf16_exact(SPECS[spec][0], 6), _bf16_exact(SPECS[spec][1], 7)
  loss = lambda a, b: jnp.sum(xla_cpu.einsum(spec, a, b, jnp.bfloat16) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a, b).jaxpr
  dots = _dot_generals(jaxpr)
  assert len(dots) == 3
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
    assert eqn.outvars[0].aval.dtype == jnp.float32


def test_scanned_residuals_are_not_converted_to_float32_in_full():
  """Under a scan, the bf16 residuals are stacked over the steps. XLA:CPU
  slices bf16 through float32 and hoists that conversion out of the backward
  loop, so a float32 copy of every stacked residual appeared before it (a
  sixth of a bf16 training step); the residuals are kept as uint16 bits so
  that none is made."""
  steps, rows, width = 7, 3, 16
  rng = np.random.RandomState(0)
  x0 = jnp.asarray(rng.randn(rows, width), jnp.float32)
  ws = jnp.asarray(rng.randn(steps, width, width) / 4, jnp.float32)

  def loss(x0, ws):
    def body(x, w):
      y = xla_cpu.einsum("ab,bc->ac", x, w, jnp.bfloat16)
      return y.astype(jnp.float32), None
    return jnp.sum(jax.lax.scan(body, x0, ws)[0] ** 2)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  hlo = grad.lower(x0, ws).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  # The stacked residual x: (steps, rows, width), outside the loops.
  assert f"f32[{steps},{rows},{width}]" not in entry
  # The gradients are still right.
  want = jax.grad(lambda x0, ws: jnp.sum(jax.lax.scan(
      lambda x, w: (jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                            preferred_element_type=jnp.float32)
                    .astype(jnp.bfloat16).astype(jnp.float32), None),
      x0, ws)[0] ** 2), argnums=(0, 1))(x0, ws)
  for got, expected in zip(grad(x0, ws), want):
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_float32_einsum_and_gradients_are_jnp_einsums(spec):
  a_shape, b_shape = SPECS[spec]
  rng = np.random.RandomState(8)
  a, b = (jnp.asarray(rng.randn(*s), jnp.float32) for s in (a_shape, b_shape))
  want, want_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)
  got, got_vjp = jax.vjp(
      lambda a, b: xla_cpu.einsum(spec, a, b, jnp.float32), a, b)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  g = jnp.asarray(rng.randn(*want.shape), jnp.float32)
  for got_grad, want_grad in zip(got_vjp(g), want_vjp(g)):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_backward_product_taken_the_other_way_round_is_the_same_product(dtype):
  """dV = W^T dO with the weights (a) much larger than the values (b): on
  CPU it is computed as (dO^T W)^T, which transposes less (see xla_cpu.py)."""
  spec = "bqhk,bqhd->bkd"
  a, b = _bf16_exact((2, 6, 4, 16), 10), _bf16_exact((2, 6, 4, 3), 11)
  got = xla_cpu._backward_product(spec, a.astype(dtype), b.astype(dtype),  # pylint: disable=protected-access
                                 jnp.float32)
  np.testing.assert_allclose(got, jnp.einsum(spec, a, b), rtol=1e-5,
                             atol=1e-5)
  jaxpr = jax.make_jaxpr(lambda a, b: xla_cpu._backward_product(  # pylint: disable=protected-access
      spec, a, b, jnp.float32))(a, b)
  swapped = "optimization_barrier" in str(jaxpr)
  assert swapped == (jax.default_backend() == "cpu")
  # Swapping would transpose more here: the product is left as it is.
  jaxpr = jax.make_jaxpr(lambda a, b: xla_cpu._backward_product(  # pylint: disable=protected-access
      spec, a, b, jnp.float32))(b.reshape(2, 6, 4, 3), a)
  assert "optimization_barrier" not in str(jaxpr)


def test_float32_dense_layer_is_one_two_dimensional_product():
  """Forward and backward. Contracting several row axes at once, XLA:CPU transposed the cotangent
  for the weight gradient, fused into the loop that computed it; flattened,
  the weight gradient is a plain (fan-in, rows) x (rows, fan-out) product."""
  x = jnp.ones((2, 5, 2, 3, 8))
  kernel = jnp.ones((2, 3, 8, 16))
  loss = lambda x, k: jnp.sum(xla_cpu.contract(x, k, 3, jnp.float32) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernel).jaxpr
  dots = _dot_generals(jaxpr)
  assert len(dots) == 3
  for eqn in dots:
    assert [v.aval.ndim for v in eqn.invars] == [2, 2], eqn


@pytest.mark.parametrize("products", ["plain", "xla_cpu"])
@pytest.mark.parametrize("features,num_axes,x_shape", [
    (16, 1, (2, 5, 8)),
    ((2, 3, 4), 1, (2, 5, 8)),
    (8, 3, (2, 5, 2, 3, 4)),
])
def test_dense_matches_flax_dense_general(features, num_axes, x_shape,
                                          products):
  """Same parameters from the same key (names, shapes, values) and the same
  outputs as flax's DenseGeneral, so checkpoints carry over."""
  x = jnp.asarray(np.random.RandomState(0).randn(*x_shape), jnp.float32)
  ours = linear.Dense(features, ("a",) * (num_axes + (
      1 if isinstance(features, int) else len(features))), num_axes=num_axes,
                       products=products)
  flax_dense = nn.DenseGeneral(features, axis=tuple(range(-num_axes, 0)))
  key = jax.random.PRNGKey(0)
  ours_params = nn.meta.unbox(ours.init(key, x))
  flax_params = flax_dense.init(key, x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours_params,
                         flax_params)
  # A non-zero bias, so that its broadcast is checked too.
  params = jax.tree_util.tree_map(lambda p: p + 0.5, flax_params)
  np.testing.assert_allclose(ours.apply(params, x),
                             flax_dense.apply(params, x), rtol=1e-6, atol=1e-6)
  # And the same gradients (brt's backward pass is its own, see xla_cpu.py).
  grads = [jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))(
      params, x) for m in (ours, flax_dense)]
  for a, b in zip(*(jax.tree_util.tree_leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, plain", [(xla_cpu.add_bias, jnp.add),
                                       (xla_cpu.multiply, jnp.multiply)])
@pytest.mark.parametrize("x_shape, p_shape, dtype", [
    ((3, 5, 8), (8,), jnp.float32),            # A dense layer's bias.
    ((6, 4, 5, 7), (1, 4, 5, 7), jnp.float32),  # The attention's bias.
    ((3, 5, 8), (8,), jnp.bfloat16),           # 16-bit activations.
    ((2, 4, 5, 7), (4, 1, 7), jnp.float32),    # Other broadcasts: plain op.
])
def test_broadcast_parameters_give_jax_values_and_gradients(
    op, plain, x_shape, p_shape, dtype):
  x = _bf16_exact(x_shape, 0).astype(dtype)
  param = _bf16_exact(p_shape, 1)
  out, vjp = jax.vjp(op, x, param)
  want, want_vjp = jax.vjp(lambda x, p: plain(x, p.astype(x.dtype)), x, param)
  assert out.dtype == want.dtype == dtype and out.shape == want.shape
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             np.asarray(want, np.float32), rtol=1e-6)
  g = _bf16_exact(out.shape, 2).astype(dtype)
  for got, expected in zip(vjp(g), want_vjp(g)):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # bf16: jax sums the cotangent in bf16, brt in float32.
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(expected, np.float32),
                               rtol=1e-5 if dtype == jnp.float32 else 2e-2,
                               atol=1e-5 if dtype == jnp.float32 else 5e-2)


def test_bias_gradient_is_a_product_not_a_reduction():
  """XLA:CPU reduced over the rows at a few bytes per cycle (see xla_cpu.py)."""
  x, bias = jnp.ones((4, 6, 8)), jnp.ones((8,))
  bias_grad = lambda x, b, g: jax.vjp(xla_cpu.add_bias, x, b)[1](g)[1]
  jaxpr = jax.make_jaxpr(bias_grad)(x, bias, x).jaxpr
  assert len(_dot_generals(jaxpr)) == 1
  assert "reduce_sum" not in str(jaxpr)


@pytest.mark.parametrize("products", ["plain", "xla_cpu"])
@pytest.mark.parametrize("use_mean, use_bias", [(True, True), (True, False),
                                                (False, False)])
def test_norms_match_flax_norms(use_mean, use_bias, products):
  """Same parameters, values and gradients as flax's LayerNorm (with a mean)
  or RMSNorm (without), on both product paths."""
  x = jnp.asarray(np.random.RandomState(0).randn(3, 5, 16) * 2 + 1, jnp.float32)
  ours = linear.norm(use_mean=use_mean, use_bias=use_bias, products=products)
  theirs = (nn.LayerNorm(use_bias=use_bias) if use_mean
            else nn.RMSNorm(epsilon=1e-6))
  params = nn.meta.unbox(ours.init(jax.random.PRNGKey(0), x))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         theirs.init(jax.random.PRNGKey(0), x))
  rng = np.random.RandomState(1)
  params = jax.tree_util.tree_map(
      lambda p: p + jnp.asarray(rng.randn(*p.shape), p.dtype), params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))(
      params, x) for m in (ours, theirs)]
  for a, b in zip(*(jax.tree_util.tree_leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
