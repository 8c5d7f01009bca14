"""Evaluation: the I3D network, FVD and evaluation of checkpoints and training runs."""
