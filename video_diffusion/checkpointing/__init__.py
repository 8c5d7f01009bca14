"""Orbax checkpoints of training runs."""
