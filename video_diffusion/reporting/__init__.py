"""What a run reports: the metrics log, TensorBoard events, the loss plot and
progress bars. JAX-free."""
