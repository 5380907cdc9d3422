"""brt: Block-Recurrent Transformers in JAX/Flax."""
