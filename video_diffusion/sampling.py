"""Sampling from trained weights: compiled samplers, prediction, interpolation,
longer videos by autoregressive extension, GIF output.

Videos are channels-last (batch, frames, height, width, channels) in [0, 1].
"""

from __future__ import annotations

import math
import os
from typing import Callable

import jax
import numpy as np
from flax import nnx

from video_diffusion import video_io
from video_diffusion.samplers import Sampler


class SamplingError(ValueError):
  """A sampling request that cannot be met; the message says what to change."""


def make_sampler(graphdef: nnx.GraphDef, constants, batch_size: int, *,
                 sampler: Sampler | None = None, cond_scale: float = 1.0,
                 recon_guidance: float = 0.0) -> Callable[..., jax.Array]:
  """A jitted `sample(params, key, cond=None, known=None, frame_mask=None)` ->
  (batch_size, f, h, w, c) videos in [0, 1]; known (in [0, 1]) and frame_mask
  (batch, frames) give frames to keep (see samplers.sample)."""

  def sample(params, key, cond=None, known=None, frame_mask=None):
    model = nnx.merge(graphdef, params, constants)
    return model.sample(key, batch_size=batch_size, cond=cond, cond_scale=cond_scale,
                        sampler=sampler, known=known, frame_mask=frame_mask,
                        recon_guidance=recon_guidance)

  return jax.jit(sample)


def _place(frames: np.ndarray, positions: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
  """(known, frame_mask) of `shape` (b, f, h, w, c) with `frames` (b, k, ...) at `positions`."""
  known = np.zeros(shape, np.float32)
  mask = np.zeros(shape[:2], bool)
  known[:, positions] = frames
  mask[:, positions] = True
  return known, mask


def generate(sample_fn, params, key: jax.Array, video_shape, batch_size: int, *, cond=None,
             first: np.ndarray | None = None, last: np.ndarray | None = None,
             num_frames: int | None = None, num_cond_frames: int | None = None) -> np.ndarray:
  """Videos (batch, num_frames, h, w, c) in [0, 1] from a make_sampler function.

  first: frames (k, h, w, c) in [0, 1] the videos start with (prediction);
  with `last` too, frames they end with (interpolation). num_frames beyond the
  model's frames: autoregressive extension, each chunk given the last
  num_cond_frames (default half the model's frames) of the video so far.
  """
  frames = video_shape[0]
  total = num_frames or frames
  shape = (batch_size,) + tuple(video_shape)
  if last is not None:
    if total != frames:
      raise SamplingError(f'interpolation fills one chunk of {frames} frames; drop --num-frames')
    if len(first) + len(last) >= frames:
      raise SamplingError(f'{len(first)} + {len(last)} given frames leave none of the '
                          f'{frames} to generate; lower --num-cond-frames')
    both = np.concatenate([first, last])
    positions = np.r_[np.arange(len(first)), np.arange(frames - len(last), frames)]
    known, mask = _place(np.broadcast_to(both, (batch_size,) + both.shape), positions, shape)
    return np.asarray(sample_fn(params, key, cond, known, mask))
  if first is None and total == frames:
    return np.asarray(sample_fn(params, key, cond))
  first = np.zeros((0,) + shape[2:], np.float32) if first is None else first
  if len(first) >= frames:
    raise SamplingError(f'{len(first)} given frames leave none of the model\'s {frames} to '
                        'generate; lower --num-cond-frames')
  known, mask = _place(np.broadcast_to(first, (batch_size,) + first.shape),
                       np.arange(len(first)), shape)
  context = num_cond_frames or max(1, frames // 2)
  if total > frames and not 1 <= context < frames:
    raise SamplingError(f'--num-cond-frames {context} must be in [1, {frames - 1}] to extend '
                        f'a model of {frames} frames')
  chunks = 1 + max(0, math.ceil((total - frames) / (frames - context)))
  video = np.asarray(sample_fn(params, key, cond, known, mask))
  for i in range(1, chunks):
    known, mask = _place(video[:, -context:], np.arange(context), shape)
    chunk = np.asarray(sample_fn(params, jax.random.fold_in(key, i), cond, known, mask))
    video = np.concatenate([video, chunk[:, context:]], axis=1)
  return video[:, :total]


def video_shape(cfg) -> tuple[int, int, int, int]:
  """(frames, height, width, channels) of the config's model."""
  d = cfg.diffusion
  return (d.num_frames, d.image_size, d.image_size, d.channels)


def load_clip(path: str, shape) -> np.ndarray:
  """Every frame of a video file as (frames, h, w, c) in [0, 1], resized and
  converted to the model's frame size and channels."""
  from video_diffusion.data import Preprocess
  video = video_io.read_video(path)
  _, size, _, channels = shape
  record = Preprocess(len(video), size, channels).random_map({'video': video}, None)
  return record['video'].astype(np.float32) / 255.0


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


def load_params(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False):
  """(graphdef, params, constants, step) of a training checkpoint's params or EMA params."""
  from video_diffusion.checkpoint import Checkpointer
  from video_diffusion.factory import split_diffusion

  graphdef, target, constants = split_diffusion(cfg, abstract=True)
  with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
    step = ckpt.resolve_step(step)
    params = ckpt.restore_params(step, target, ema=ema)
  return graphdef, params, constants, step


def sample_checkpoint(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False,
                      seed: int = 0, batch_size: int = 16, sampler: Sampler | None = None,
                      cond=None, cond_scale: float | None = None, recon_guidance: float = 0.0,
                      **generate_kwargs):
  """(videos in [0, 1], step) sampled from a training checkpoint; cond as the
  model takes it (conditioning.model_condition), generate_kwargs as generate."""
  graphdef, params, constants, step = load_params(cfg, checkpoint_dir, step=step, ema=ema)
  scale = cfg.trainer.cond_scale if cond_scale is None else cond_scale
  sample_fn = make_sampler(graphdef, constants, batch_size, sampler=sampler, cond_scale=scale,
                           recon_guidance=recon_guidance)
  videos = generate(sample_fn, params, jax.random.key(seed), video_shape(cfg), batch_size,
                    cond=cond, **generate_kwargs)
  return videos, step
