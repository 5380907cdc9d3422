"""How a model is computed, apart from what it computes.

`ModelConfig` is the architecture: it fixes the parameters, the carry and
the function they compute. `ExecutionConfig` holds the choices that change
only the program that computes it (the product kernels, the attention
kernel, rematerialisation, the order of layers and blocks), so that any of
them can change between a checkpoint and the run that resumes, evaluates or
samples from it. In gin:

    ExecutionConfig.products = 'xla_cpu'       # the CPU sizes turn it on
    ExecutionConfig.remat = 'dots_saveable'    # a jax.checkpoint_policies name
"""

from __future__ import annotations

import dataclasses

import jax

from brt.config import ModelConfig

# "plain": jnp.einsum / lax.dot_general in the compute dtype (float32
# accumulation where a float32 result is wanted), flax's norms and jax's own
# autodiff -- the program t5x and maxtext write, and the one accelerators
# run. "xla_cpu": the products with hand-written backward passes tuned to
# XLA:CPU (brt/xla_cpu.py); the same values and gradients to float
# tolerance (tests/test_products.py).
PRODUCTS = ("plain", "xla_cpu")
# "einsum": brt's reference (brt.attention.attend); "xla" and "cudnn":
# jax.nn.dot_product_attention with that implementation (cuDNN's fused
# kernel needs a GPU and 16-bit activations); "pallas_tpu": jax's Pallas
# flash-attention kernel for TPUs (keys in multiples of 128); "auto": cuDNN
# on GPUs, the Pallas kernel on TPUs, where they can run, else the einsum.
ATTENTION = ("auto", "einsum", "xla", "cudnn", "pallas_tpu")
# "none"; "full": a block step keeps only its inputs and recomputes the rest
# in the backward pass; or a policy of jax.checkpoint_policies that says
# which intermediates to keep (e.g. "dots_saveable": the matmuls' outputs).
REMAT_POLICIES = ("dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable", "everything_saveable")
REMAT = ("none", "full", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How the model's function is computed; see the module docstring."""

  products: str = "plain"
  attention: str = "auto"
  remat: str = "none"
  # True: a segment layer by layer, every block of a layer at once, only the
  # recurrent states scanned over the blocks; False: the whole stack block
  # by block (one `nn.scan`). None: layer by layer wherever the model allows
  # it -- on CPU only for one key/value head or 16-bit activations
  # (in-process A/Bs of the training step at the bench config,
  # scripts/bench_ab.py: one key/value head +5-6% float32, +9% bf16; a head
  # per query head +2-7% bf16, -1-0% float32).
  layer_major: bool | None = None

  def __post_init__(self):
    for name, allowed in (("products", PRODUCTS), ("attention", ATTENTION),
                          ("remat", REMAT)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ExecutionConfig: {name}={getattr(self, name)!r} "
                         f"is not one of {allowed}.")
    if self.layer_major not in (None, True, False):
      raise ValueError("ExecutionConfig: layer_major must be None (choose), "
                       f"True or False, got {self.layer_major!r}.")

  def layer_major_blocker(self, model: ModelConfig) -> str | None:
    """Why `model` cannot run a segment layer by layer, or None."""
    if model.layer_major_blocker:
      return model.layer_major_blocker
    if self.remat != "none":
      return "remat recomputes the stack block by block"
    return None

  def check(self, model: ModelConfig) -> None:
    """Raises ValueError where this execution cannot run `model`."""
    blocker = self.layer_major_blocker(model)
    if self.layer_major and blocker:
      raise ValueError(
          f"ExecutionConfig: layer_major=True is not possible: {blocker}. "
          "Leave layer_major=None (the fastest possible order) or False.")

  def runs_layer_major(self, model: ModelConfig,
                       backend: str | None = None) -> bool:
    self.check(model)
    if self.layer_major is not None:
      return self.layer_major
    if self.layer_major_blocker(model):
      return False
    if (backend or jax.default_backend()) != "cpu":
      return True  # Bigger products; accelerators have the memory.
    return model.num_kv_heads == 1 or model.dtype != "float32"

  def attention_kernel(self, model: ModelConfig,
                       backend: str | None = None) -> str:
    """The kernel "auto" stands for here: cuDNN's fused attention on a GPU
    with 16-bit activations (its kernel's condition), the Pallas flash
    kernel on a TPU, else the einsum. (Where a kernel refuses the shapes
    when traced, "auto" takes the einsum: brt.attention.attend's fallback.)"""
    if self.attention != "auto":
      return self.attention
    backend = backend or jax.default_backend()
    if backend == "gpu" and model.dtype in ("bfloat16", "float16"):
      return "cudnn"
    if backend == "tpu":
      return "pallas_tpu"
    return "einsum"

  def remat_policy(self):
    """The jax.checkpoint policy of `remat` (None: keep nothing)."""
    if self.remat in ("none", "full"):
      return None
    return getattr(jax.checkpoint_policies, self.remat)


# Execution settings that ModelConfig held before they moved here: a
# workdir's operative config.gin written then still names them.
LEGACY_MODEL_FIELDS = {
    "layer_major": ("layer_major", {}),
    "remat": ("remat", {"True": "'full'", "False": "'none'"}),
    "attention_impl": ("attention", {"'dot_product_attention'": "'xla'"}),
}


def upgrade_bindings(text: str) -> str:
  """Gin text with the legacy `ModelConfig.<execution field> = v` bindings
  rewritten as the ExecutionConfig bindings they stand for."""
  lines = []
  for line in text.splitlines():
    stripped = line.strip()
    for old, (new, values) in LEGACY_MODEL_FIELDS.items():
      prefix = f"ModelConfig.{old}"
      if stripped.startswith(prefix) and stripped[len(prefix):].lstrip(
      ).startswith("="):
        value = stripped.split("=", 1)[1].strip()
        line = f"ExecutionConfig.{new} = {values.get(value, value)}"
        break
    lines.append(line)
  return "\n".join(lines)
