"""Pixel ranges: data in [0, 1] (or uint8) and the diffusion's [-1, 1]."""

import jax.numpy as jnp


def normalize_img(x):
  """[0, 1] -> [-1, 1]."""
  return x * 2 - 1


def unnormalize_img(x):
  """[-1, 1] -> [0, 1]."""
  return (x + 1) * 0.5


def uint8_to_model_range(videos):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return normalize_img(videos.astype(jnp.float32) / 255.0)


def model_input(videos):
  """What the model diffuses: uint8 videos in [-1, 1], float arrays (a latent
  model's normalised latents) as they are."""
  if jnp.issubdtype(videos.dtype, jnp.floating):
    return videos
  return uint8_to_model_range(videos)
