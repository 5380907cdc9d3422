"""brt: Block-Recurrent Transformers and relatives in JAX/Flax.

    import brt
    cfg = brt.ModelConfig(vocab_size=256, num_layers=6, recurrent_layers=(4,))
    model = brt.BlockRecurrentTransformer(cfg)
"""

from brt.config import ModelConfig
from brt.execution import ExecutionConfig
from brt.model import BlockRecurrentTransformer, initial_carry

__all__ = ["ModelConfig", "ExecutionConfig", "BlockRecurrentTransformer",
           "initial_carry"]
