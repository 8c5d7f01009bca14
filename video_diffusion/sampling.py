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
from jax.sharding import Mesh

from video_diffusion import distributed, sharding, video_io
from video_diffusion.samplers import Sampler


class SamplingError(ValueError):
  """A sampling request that cannot be met; the message says what to change."""


def make_sampler(graphdef: nnx.GraphDef, constants, batch_size: int, *,
                 sampler: Sampler | None = None, cond_scale: float = 1.0,
                 recon_guidance: float = 0.0, mesh: Mesh | None = None
                 ) -> Callable[..., np.ndarray]:
  """A `sample(params, key, cond=None, known=None, frame_mask=None)` -> numpy
  (batch_size, f, h, w, c) videos in [0, 1]; known (in [0, 1]) and frame_mask
  (batch, frames) give frames to keep (see samplers.sample).

  The compiled sampler runs over `mesh` (default: all devices on the data
  axis): the videos are split over the devices, and the params follow the
  training's fsdp rule. A batch that does not split is padded to the next
  multiple of the device count and the extra videos dropped; the padded
  batch size is `sample.padded_batch`.
  """
  mesh = mesh or sharding.make_mesh()
  padded = -(-batch_size // mesh.size) * mesh.size
  videos_sharding = sharding.batch_sharding(mesh)

  def run(params, key_data, cond, known, frame_mask):
    model = nnx.merge(graphdef, params, constants)
    return model.sample(jax.random.wrap_key_data(key_data), batch_size=padded, cond=cond,
                        cond_scale=cond_scale, sampler=sampler, known=known, frame_mask=frame_mask,
                        recon_guidance=recon_guidance, sharding=videos_sharding)

  compiled = jax.jit(run, out_shardings=videos_sharding)

  def to_mesh(array):
    """A per-video array, padded by repeating its last row, split over the mesh."""
    if array is None:
      return None
    array = np.asarray(array)
    pad = np.repeat(array[-1:], padded - len(array), axis=0)
    return sharding.global_array(np.concatenate([array, pad]), videos_sharding)

  def sample(params, key, cond=None, known=None, frame_mask=None) -> np.ndarray:
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
    key_data = sharding.global_array(jax.random.key_data(key), sharding.replicated(mesh))
    videos = compiled(params, key_data, to_mesh(cond), to_mesh(known), to_mesh(frame_mask))
    return distributed.fetch(videos)[:batch_size]

  sample.padded_batch = padded
  sample.compiled = compiled  # the jitted (params, key_data, cond, known, frame_mask) function
  return sample


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


def sampling_mesh(cfg) -> Mesh:
  """All devices, videos split over them; params over the training's fsdp size
  where it divides the devices here, else replicated."""
  fsdp = cfg.trainer.mesh_fsdp or cfg.trainer.num_model_shards
  return sharding.make_mesh(-1, fsdp if jax.device_count() % fsdp == 0 else 1)


def sample_checkpoint(cfg, checkpoint_dir: str, *, step: int | None = None, ema: bool = False,
                      seed: int = 0, batch_size: int = 16, sampler: Sampler | None = None,
                      cond=None, cond_scale: float | None = None, recon_guidance: float = 0.0,
                      **generate_kwargs):
  """(videos in [0, 1], step) sampled from a training checkpoint; cond as the
  model takes it (conditioning.model_condition), generate_kwargs as generate."""
  graphdef, params, constants, step = load_params(cfg, checkpoint_dir, step=step, ema=ema)
  scale = cfg.trainer.cond_scale if cond_scale is None else cond_scale
  sample_fn = make_sampler(graphdef, constants, batch_size, sampler=sampler, cond_scale=scale,
                           recon_guidance=recon_guidance, mesh=sampling_mesh(cfg))
  videos = generate(sample_fn, params, jax.random.key(seed), video_shape(cfg), batch_size,
                    cond=cond, **generate_kwargs)
  return videos, step
