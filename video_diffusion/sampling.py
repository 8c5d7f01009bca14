"""Sampling from trained weights: one compiled sampler, GIF output.

Videos are channels-last (batch, frames, height, width, channels).
"""

from __future__ import annotations

import math
import os
from typing import Callable

import jax
import numpy as np
from flax import nnx

from video_diffusion import video_io


def make_sampler(graphdef: nnx.GraphDef, constants, batch_size: int, *,
                 cond_scale: float = 1.0) -> Callable[[dict, jax.Array], jax.Array]:
  """A jitted `sample(params, key)` -> (batch_size, f, h, w, c) videos in [0, 1]."""

  def sample(params, key):
    model = nnx.merge(graphdef, params, constants)
    return model.sample(key, batch_size=batch_size, cond_scale=cond_scale)

  return jax.jit(sample)


def grid_rows(n: int) -> int:
  """Rows of the most nearly square grid of n videos."""
  return math.isqrt(n - 1) + 1 if n > 1 else 1


def write_samples(folder: str, videos01: np.ndarray, *, fps: int = 8) -> list[str]:
  """Writes sample_{i}.gif (i from 1) per video and grid.gif; returns the paths."""
  frames = video_io.to_uint8(np.asarray(videos01), value_range=(0.0, 1.0))
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i, video in enumerate(frames, start=1):
    path = os.path.join(folder, f'sample_{i}.gif')
    video_io.write_gif(path, video, fps=fps)
    paths.append(path)
  grid_path = write_grid(os.path.join(folder, 'grid.gif'), videos01, grid_rows(len(frames)),
                         fps=fps)
  return paths + [grid_path]


def write_grid(path: str, videos01: np.ndarray, rows: int, *, fps: int = 8) -> str:
  """Writes the videos as one rows x rows grid GIF at `path`."""
  frames = video_io.to_uint8(np.asarray(videos01), value_range=(0.0, 1.0))
  video_io.write_gif(path, video_io.video_grid(frames, rows), fps=fps)
  return path


def sample_checkpoint(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False,
                      seed: int = 0, batch_size: int = 16):
  """(videos in [0, 1], step) sampled from a training checkpoint's params or EMA params."""
  from video_diffusion.checkpoint import Checkpointer
  from video_diffusion.factory import split_diffusion

  graphdef, target, constants = split_diffusion(cfg, abstract=True)
  with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
    step = ckpt.resolve_step(step)
    params = ckpt.restore_params(step, target, ema=ema)
  sampler = make_sampler(graphdef, constants, batch_size, cond_scale=cfg.trainer.cond_scale)
  return np.asarray(sampler(params, jax.random.key(seed))), step
