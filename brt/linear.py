"""The dense layer, the norms and the products under every matmul of the model.

Each function takes `products`, the ExecutionConfig setting: "plain" is
stock JAX -- operands cast to the compute dtype, `jnp.einsum` /
`lax.dot_general` accumulating in float32 where a float32 result is asked
for, flax's norms, jax's own autodiff; "xla_cpu" hands the same operation
to brt/xla_cpu.py, whose backward passes are written for XLA:CPU.

`Dense` keeps flax's DenseGeneral parameter names, shapes and
initialisation, so checkpoints carry over (and between the two paths).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from brt import xla_cpu

is_low_precision = xla_cpu.is_low_precision


# --- products ---------------------------------------------------------------


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype, out_dtype=None,
           products: str = "plain") -> jax.Array:
  """`jnp.einsum(spec, a, b)` with both operands in `dtype`, the result in
  `out_dtype` (default `dtype`; a float32 one is accumulated in float32)."""
  if products == "xla_cpu":
    return xla_cpu.einsum(spec, a, b, dtype, out_dtype)
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=out_dtype)


def add_bias(x: jax.Array, bias: jax.Array, products: str = "plain"):
  """x + bias in x's dtype."""
  if products == "xla_cpu":
    return xla_cpu.add_bias(x, bias)
  return x + bias.astype(x.dtype)


def contract(x: jax.Array, kernel: jax.Array, num_axes: int, dtype,
             products: str = "plain") -> jax.Array:
  """Contracts x's last `num_axes` axes with kernel's first ones, in
  `dtype`."""
  if products == "xla_cpu":
    return xla_cpu.contract(x, kernel, num_axes, dtype)
  dims = ((tuple(range(x.ndim - num_axes, x.ndim)), tuple(range(num_axes))),
          ((), ()))
  return jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), dims)


def activation(fn: Callable, h: jax.Array, products: str = "plain"):
  """The MLP's nonlinearity `fn`, computed in float32, in h's dtype."""
  if products == "xla_cpu":
    return xla_cpu.activation(fn, h)
  return fn(h.astype(jnp.float32)).astype(h.dtype)


def norm(*, use_mean: bool, use_bias: bool, products: str = "plain",
         name=None) -> nn.Module:
  """A norm over the last axis with a float32 result and flax's parameter
  names: LayerNorm (`use_mean`), else the scale-only RMS norm of T5 and
  meliad, x / rms(x) * scale; epsilon 1e-6."""
  if products == "xla_cpu":
    return xla_cpu.LayerNorm(use_bias=use_bias, use_mean=use_mean, name=name)
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if not use_mean:
    return nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32, scale_init=scale_init,
                      name=name)
  return nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, use_bias=use_bias,
      use_fast_variance=False, scale_init=scale_init,
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             ("embed",)), name=name)


# --- layers -------------------------------------------------------------------


def _canonical(features) -> tuple[int, ...]:
  return (features,) if isinstance(features, int) else tuple(features)


class Dense(nn.Module):
  """flax's DenseGeneral contracting the input's last `num_axes` axes, with
  logical axis names on its parameters (`names`: the kernel's axes, input
  axes first; the bias takes the output axes' names)."""
  features: int | Sequence[int]
  names: Sequence[str | None]
  num_axes: int = 1
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  bias_init: Callable = nn.initializers.zeros
  kernel_scale: float = 1.0  # variance_scaling's scale; 1 is lecun_normal.
  products: str = "plain"  # ExecutionConfig.products.

  @nn.compact
  def __call__(self, x):
    features = _canonical(self.features)
    fan_in = x.shape[x.ndim - self.num_axes:]

    def kernel_init(rng, shape, dtype=jnp.float32):
      # Initialised as a (fan_in, fan_out) matrix, as DenseGeneral does, so
      # that the initialiser sees the true fan-in.
      flat = (math.prod(fan_in), math.prod(features))
      init = nn.initializers.variance_scaling(
          self.kernel_scale, "fan_in", "truncated_normal")
      return init(rng, flat, dtype).reshape(shape)

    kernel = self.param(
        "kernel", nn.with_logical_partitioning(kernel_init, tuple(self.names)),
        fan_in + features, jnp.float32)
    y = contract(x, kernel, self.num_axes, self.dtype, self.products)
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(
              self.bias_init, tuple(self.names)[-len(features):]),
          features, jnp.float32)
      y = add_bias(y, bias, self.products)
    return y
