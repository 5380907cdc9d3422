"""The products tuned to XLA:CPU: ExecutionConfig.products = "xla_cpu".

The CPU sizes (configs/sizes/tiny.gin, small.gin), the demo and the CPU
benchmarks turn this on; the default ("plain", brt/linear.py) is stock JAX.
Both give the same values and gradients to float tolerance
(tests/test_products.py). Measured on the 2-core development CPU (jaxlib
0.10), each piece below says what it bought there.

Every product goes through one custom VJP (`einsum`), whose backward pass
is the two transposed products written out (`transposed_specs`):

- With a 16-bit compute dtype (`ModelConfig.dtype`), all three products
  take 16-bit operands and accumulate in float32 (`preferred_element_type`).
  jax's own transpose of such a product upcasts the 16-bit operand to meet
  the float32 cotangent, so the backward -- two thirds of a training step's
  matmul FLOPs -- would run in float32. XLA:CPU runs a bf16 x bf16 -> f32
  product about 1.5x as fast as an f32 one on CPUs with bf16 dot
  instructions (AVX512-BF16, AMX), and no faster than f32 when asked for a
  bf16 result.
- In float32 a dense layer is one 2-D product, (rows, fan-in) x (fan-in,
  fan-out), whatever its axes (`contract`), so that its weight gradient is
  one (fan-in, rows) x (rows, fan-out) product. Contracting several row
  axes at once, XLA:CPU instead transposed the cotangent for the weight
  gradient, fused into whatever computed it: the MLP's activation gradient
  was written out at a stride (6% of a float32 training step without
  biases; 4-6% of the step came back).

Biases' and scales' gradients are products with a ones vector, the norms
are written out for that, and the MLP's activation is recomputed in the
backward pass (`activation`). `tune_xla_flags` is the one XLA flag that
paid on this CPU; the command line and the CPU benchmarks apply it.
"""

from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def is_low_precision(dtype) -> bool:
  return jnp.dtype(dtype) in _LOW_PRECISION


def tune_xla_flags() -> None:
  """XLA's CPU backend in jaxlib 0.10 hands reductions to YNNPACK, which
  runs the ones this model's gradients need (e.g. the relative-position
  bias summed over the batch) about 40x slower than XLA's own loops: 10 ms
  instead of 0.3 ms for 1M outputs, a quarter of a training step at the bench
  config. Keep YNNPACK for the matmuls, where it is fast. Takes effect only
  if jax has not started its CPU backend yet; a flag the user set wins; the
  flag reaches XLA:CPU's compiler only, so it is harmless on accelerators.
  """
  try:
    from jaxlib import version
  except ImportError:
    return
  if not version.__version__.startswith("0.10."):
    return  # The flag is version-specific; an unknown flag aborts XLA.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = (
        flags + " --xla_cpu_experimental_ynn_fusion_type=-reduce").strip()


# --- products ---------------------------------------------------------------


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype,
           out_dtype=None) -> jax.Array:
  """`jnp.einsum(spec, a, b)` computed in `dtype` and accumulated in float32,
  forward and backward; the result in `out_dtype` (default `dtype`), each
  gradient in its operand's dtype (float32 for parameters, rounded once)."""
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  return _einsum(spec, dtype, out_dtype, a.dtype, b.dtype, a, b)


def transposed_specs(spec: str) -> tuple[str, str]:
  """The specs of the two backward products of `spec`.

  For c = einsum("A,B->C", a, b): da = einsum("C,B->A", dc, b) and
  db = einsum("A,C->B", a, dc). This holds when no index repeats and every
  index of an operand appears in the other operand or in the result (none is
  summed within one operand alone) -- true of every product in brt.
  """
  inputs, out = spec.replace(" ", "").split("->")
  lhs, rhs = inputs.split(",")
  for operand, other in ((lhs, rhs), (rhs, lhs)):
    if len(set(operand)) != len(operand) or any(
        i not in other and i not in out for i in operand):
      raise ValueError(
          f"einsum spec {spec!r}: an index repeats or is summed within one "
          "operand, which brt's einsum does not support; sum "
          "that operand first.")
  return f"{out},{rhs}->{lhs}", f"{lhs},{out}->{rhs}"


def _product(spec, a, b, out_dtype):
  return jnp.einsum(spec, a, b,
                    preferred_element_type=jnp.float32).astype(out_dtype)


def _backward_product(spec, a, b, out_dtype):
  """`_product` for a backward product. Those of a weight gradient, and the
  attention's dK and dV, contract their operands' leading axes. XLA:CPU's
  dot kernels take the left operand with its contracted axes last, so XLA
  transposes the left operand first, whatever its size. Where transposing
  the right one and the result moves fewer bytes (dV = W^T dO: the
  attention weights are 4x the values at the bench config), the product is
  taken the other way round, and the result transposed after a barrier, so
  that XLA does not fold the transpose back into the product. This took
  the attention's transposes (a tenth of a float32 training step with one
  key/value head) down to a third."""
  inputs, out = spec.split("->")
  lhs, rhs = inputs.split(",")
  contracted = "".join(i for i in lhs if i not in out)
  if (jax.default_backend() != "cpu" or lhs.endswith(contracted)
      or b.size + math.prod(_sizes(out, (lhs, a), (rhs, b))) >= a.size):
    return _product(spec, a, b, out_dtype)
  batch = "".join(i for i in out if i in lhs and i in rhs)
  natural = batch + "".join(i for i in rhs + lhs
                            if i in out and i not in batch)
  y = jax.lax.optimization_barrier(_product(f"{rhs},{lhs}->{natural}", b, a,
                                            jnp.float32))
  return jnp.einsum(f"{natural}->{out}", y).astype(out_dtype)


def _sizes(indices, *operands):
  """The sizes of `indices`, read off (spec, array) pairs."""
  size = {i: n for spec, x in operands for i, n in zip(spec, x.shape)}
  return [size[i] for i in indices]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _einsum(spec, dtype, out_dtype, a_dtype, b_dtype, a, b):
  return _einsum_fwd(spec, dtype, out_dtype, a_dtype, b_dtype, a, b)[0]


def _einsum_fwd(spec, dtype, out_dtype, a_dtype, b_dtype, a, b):
  del a_dtype, b_dtype  # For the backward pass.
  a, b = a.astype(dtype), b.astype(dtype)
  return _product(spec, a, b, out_dtype), (_to_bits(a), _to_bits(b))


# 16-bit operands are the residuals: half the memory of float32 ones. They
# are kept as their bits (uint16). Under a scan, each is stacked over the
# blocks; XLA:CPU slices 16-bit floats through float32 and then hoists that
# conversion out of the backward loop, converting every stacked residual to
# float32 and back in full (a sixth of a bf16 training step at the bench
# config). Integers are sliced as they are. The bitcasts are free on every
# backend.
def _to_bits(x):
  if not is_low_precision(x.dtype):
    return x
  return jax.lax.bitcast_convert_type(x, jnp.uint16)


def _from_bits(x, dtype):
  if not is_low_precision(dtype):
    return x
  return jax.lax.bitcast_convert_type(x, dtype)


def _einsum_bwd(spec, dtype, out_dtype, a_dtype, b_dtype, residuals, g):
  del out_dtype
  a, b = (_from_bits(r, dtype) for r in residuals)
  spec_a, spec_b = transposed_specs(spec)
  g = g.astype(dtype)
  return (_backward_product(spec_a, g, b, a_dtype),
          _backward_product(spec_b, a, g, b_dtype))


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


# --- broadcast parameters ---------------------------------------------------
# A bias or scale shaped like its input's trailing axes gets, as gradient,
# the cotangent summed over the leading (row) axes. XLA:CPU took that sum as
# a reduction at a few bytes per cycle, and for the attention's position
# bias re-computed the softmax's backward inside the reduction loop. Here it
# is one (1, rows) x (rows, size) product with a ones vector, the ones on the
# left (on the right, XLA transposed the cotangent to put the rows last).
# Float32 training step at the bench config, in-process A/B: +11% for the
# dense and position biases, then +5% for the layer norms.


def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
  """x + bias in x's dtype; bias (its leading size-1 axes aside) shaped like
  x's trailing axes, or else any broadcastable shape (a plain sum)."""
  return _broadcast_op(_add_bias, jnp.add, x, bias)


def multiply(x: jax.Array, scale: jax.Array) -> jax.Array:
  """x * scale in x's dtype, `scale` shaped as for `add_bias`."""
  return _broadcast_op(_multiply, jnp.multiply, x, scale)


def _broadcast_op(custom, plain, x, param):
  core = param.reshape(param.shape[_leading_ones(param.shape):])
  if core.shape != x.shape[x.ndim - core.ndim:]:
    return plain(x, param.astype(x.dtype))
  return custom(x, core).reshape(jnp.broadcast_shapes(x.shape, param.shape))


def _leading_ones(shape) -> int:
  return next((i for i, n in enumerate(shape) if n != 1), len(shape))


def _sum_rows(g: jax.Array, param: jax.Array) -> jax.Array:
  """g summed over its leading axes, shaped and typed like `param`."""
  rows = g.size // param.size
  total = jnp.dot(jnp.ones((1, rows), g.dtype), g.reshape(rows, param.size),
                  preferred_element_type=jnp.float32)
  return total.reshape(param.shape).astype(param.dtype)


@jax.custom_vjp
def _add_bias(x, bias):
  return x + bias.astype(x.dtype)


def _add_bias_fwd(x, bias):
  return _add_bias(x, bias), bias  # The bias only gives its shape and dtype.


def _add_bias_bwd(bias, g):
  return g, _sum_rows(g, bias)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def _multiply(x, scale):
  return x * scale.astype(x.dtype)


def _multiply_fwd(x, scale):
  return _multiply(x, scale), (x, scale)


def _multiply_bwd(residuals, g):
  x, scale = residuals
  return g * scale.astype(g.dtype), _sum_rows(g * x, scale)


_multiply.defvjp(_multiply_fwd, _multiply_bwd)


def contract(x: jax.Array, kernel: jax.Array, num_axes: int, dtype):
  """Contracts x's last `num_axes` axes with kernel's first ones; in float32
  as one 2-D product (see the module's docstring)."""
  free, fan_in = x.shape[:x.ndim - num_axes], x.shape[x.ndim - num_axes:]
  if is_low_precision(dtype):
    # Flattened, XLA:CPU's bf16 weight gradient (fan-in, rows) x (rows,
    # fan-out) leaves its fast kernel: the step was a tenth slower. In this
    # form it transposes the activation and takes the fast one.
    letters = "abcdefghijklmnopqrstuvwxyz"
    xs = letters[:x.ndim]
    ks = xs[len(free):] + letters[x.ndim:x.ndim + kernel.ndim - num_axes]
    return einsum(f"{xs},{ks}->{xs[:len(free)] + ks[num_axes:]}", x, kernel,
                  dtype)
  y = einsum("ri,io->ro", x.reshape(-1, math.prod(fan_in)),
             kernel.reshape(math.prod(fan_in), -1), dtype)
  return y.reshape(free + kernel.shape[num_axes:])


class LayerNorm(nn.Module):
  """A norm over the last axis, in float32: with `use_mean` flax's LayerNorm,
  else the scale-only RMS norm of T5 and meliad (x / rms(x) * scale), with
  flax's parameter names ("scale", and "bias" if use_bias) and epsilon; the
  scale and bias go through `multiply` and `add_bias`, whose gradients are
  products rather than reductions."""
  use_bias: bool = True
  use_mean: bool = True
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    features = (x.shape[-1],)
    if self.use_mean:
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(x * x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(variance + self.epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), features)
    y = multiply(y, scale)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed",)), features)
      y = add_bias(y, bias)
    return y


@functools.partial(jax.checkpoint, static_argnums=(0,))
def activation(fn, h):
  """`fn(h)` computed in float32 and recomputed in the backward pass from
  its input alone. Stored, the intermediates of its formula (five
  hidden-sized arrays per block for GELU) are stacked over the blocks; in
  16-bit XLA:CPU converted them all back to float32 before the backward
  pass (a tenth of a bf16 step at the bench config), and in float32 it
  fused the hidden gradient's transpose, made for the weight-gradient
  product, into the loop that reads them all at a stride (a fifth of the
  step without biases, 8-15% with them)."""
  return fn(h.astype(jnp.float32)).astype(h.dtype)
