"""brt: Block-Recurrent Transformers and relatives in JAX/Flax.

    import brt
    cfg = brt.ModelConfig(vocab_size=256, num_layers=6, recurrent_layers=(4,))
    model = brt.BlockRecurrentTransformer(cfg)
"""

import os


def _tune_xla_cpu() -> None:
  """XLA's CPU backend in jaxlib 0.10 hands reductions to YNNPACK, which
  runs the ones this model's gradients need (e.g. the relative-position
  bias summed over the batch) about 40x slower than XLA's own loops: 10 ms
  instead of 0.3 ms for 1M outputs, a quarter of a training step at the bench
  config. Keep YNNPACK for the matmuls, where it is fast. Takes effect only
  if jax has not started its CPU backend yet; a flag the user set wins.
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


_tune_xla_cpu()

from brt.config import ModelConfig  # noqa: E402
from brt.model import BlockRecurrentTransformer, initial_carry  # noqa: E402

__all__ = ["ModelConfig", "BlockRecurrentTransformer", "initial_carry"]
