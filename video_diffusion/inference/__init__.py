"""Sampling from trained weights: the compiled sample function, generation with
given frames, sampling from checkpoints and GIF output."""
