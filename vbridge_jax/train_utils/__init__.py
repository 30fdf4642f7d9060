"""Training helpers: checkpointing, metrics, TensorBoard events."""
