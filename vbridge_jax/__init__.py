"""V-Bridge few-shot all-in-one image restoration on Wan2.2-TI2V-5B, in JAX/Flax NNX."""

__version__ = "0.1.0"
