"""Sampling from trained weights: the compiled, sharded sample function, and
prediction, interpolation and longer videos by autoregressive extension.

Videos are channels-last (batch, frames, height, width, channels) in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from video_diffusion.config.schema import default_cond_frames
from video_diffusion.data import video_io
from video_diffusion.data.preprocess import Preprocess
from video_diffusion.diffusion.samplers import Sampler
from video_diffusion.parallel import compiled as compiled_fns
from video_diffusion.parallel import distributed, sharding


class SamplingError(ValueError):
  """A sampling request that cannot be met; the message says what to change."""


def compile_sample_fn(
  graphdef: nnx.GraphDef,
  constants,
  batch_size: int,
  *,
  sampler: Sampler | None = None,
  cond_scale: float = 1.0,
  recon_guidance: float = 0.0,
  mesh: Mesh | None = None,
) -> Callable[..., np.ndarray]:
  """A jitted `sample_fn(params, key, cond=None, known=None, frame_mask=None)` -> numpy
  (batch_size, f, h, w, c) videos in [0, 1]; known (in [0, 1]) and frame_mask
  (batch, frames) give frames to keep (see samplers.sample).

  The compiled sampler runs over `mesh` (default: all devices on the data
  axis): the videos are split over the devices, and the params follow the
  training's fsdp rule. A batch that does not split is padded to the next
  multiple of the device count and the extra videos dropped; the padded
  batch size is `sample_fn.padded_batch`.
  """
  mesh = mesh or sharding.make_mesh()
  padded = -(-batch_size // mesh.size) * mesh.size
  videos_sharding = sharding.batch_sharding(mesh)

  def run(params, key_data, cond, known, frame_mask):
    model = nnx.merge(graphdef, params, constants)
    return model.sample(
      jax.random.wrap_key_data(key_data),
      batch_size=padded,
      cond=cond,
      cond_scale=cond_scale,
      sampler=sampler,
      known=known,
      frame_mask=frame_mask,
      recon_guidance=recon_guidance,
      sharding=videos_sharding,
    )

  key = ('sample', graphdef, compiled_fns.fingerprint(constants), padded, sampler, cond_scale)
  compiled = compiled_fns.reuse(
    key + (recon_guidance, mesh), lambda: jax.jit(run, out_shardings=videos_sharding)
  )

  def to_mesh(array):
    """A per-video array, padded by repeating its last row, split over the mesh."""
    if array is None:
      return None
    array = np.asarray(array)
    pad = np.repeat(array[-1:], padded - len(array), axis=0)
    return sharding.global_array(np.concatenate([array, pad]), videos_sharding)

  def sample_fn(params, key, cond=None, known=None, frame_mask=None) -> np.ndarray:
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
    key_data = sharding.global_array(jax.random.key_data(key), sharding.replicated(mesh))
    videos = compiled(params, key_data, to_mesh(cond), to_mesh(known), to_mesh(frame_mask))
    return distributed.fetch(videos)[:batch_size]

  sample_fn.padded_batch = padded
  sample_fn.compiled = compiled  # the jitted (params, key_data, cond, known, frame_mask) function
  return sample_fn


def _place(frames: np.ndarray, positions: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
  """(known, frame_mask) of `shape` (b, f, h, w, c) with `frames` (b, k, ...) at `positions`."""
  known = np.zeros(shape, np.float32)
  mask = np.zeros(shape[:2], bool)
  known[:, positions] = frames
  mask[:, positions] = True
  return known, mask


def generate(
  sample_fn,
  params,
  key: jax.Array,
  video_shape,
  batch_size: int,
  *,
  cond=None,
  first: np.ndarray | None = None,
  last: np.ndarray | None = None,
  num_frames: int | None = None,
  num_cond_frames: int | None = None,
) -> np.ndarray:
  """Videos (batch, num_frames, h, w, c) in [0, 1] from a compile_sample_fn function.

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
      raise SamplingError(
        f'{len(first)} + {len(last)} given frames leave none of the '
        f'{frames} to generate; lower --num-cond-frames'
      )
    both = np.concatenate([first, last])
    positions = np.r_[np.arange(len(first)), np.arange(frames - len(last), frames)]
    known, mask = _place(np.broadcast_to(both, (batch_size,) + both.shape), positions, shape)
    return np.asarray(sample_fn(params, key, cond, known, mask))
  if first is None and total == frames:
    return np.asarray(sample_fn(params, key, cond))
  first = np.zeros((0,) + shape[2:], np.float32) if first is None else first
  if len(first) >= frames:
    raise SamplingError(
      f"{len(first)} given frames leave none of the model's {frames} to "
      'generate; lower --num-cond-frames'
    )
  known, mask = _place(
    np.broadcast_to(first, (batch_size,) + first.shape), np.arange(len(first)), shape
  )
  context = num_cond_frames or default_cond_frames(frames)
  if total > frames and not 1 <= context < frames:
    raise SamplingError(
      f'--num-cond-frames {context} must be in [1, {frames - 1}] to extend '
      f'a model of {frames} frames'
    )
  chunks = 1 + max(0, math.ceil((total - frames) / (frames - context)))
  video = np.asarray(sample_fn(params, key, cond, known, mask))
  for i in range(1, chunks):
    known, mask = _place(video[:, -context:], np.arange(context), shape)
    chunk = np.asarray(sample_fn(params, jax.random.fold_in(key, i), cond, known, mask))
    video = np.concatenate([video, chunk[:, context:]], axis=1)
  return video[:, :total]


def load_clip(path: str, shape) -> np.ndarray:
  """Every frame of a video file as (frames, h, w, c) in [0, 1], resized and
  converted to the model's frame size and channels."""
  video = video_io.read_video(path)
  _, size, _, channels = shape
  record = Preprocess(len(video), size, channels).random_map({'video': video}, None)
  return record['video'].astype(np.float32) / 255.0
