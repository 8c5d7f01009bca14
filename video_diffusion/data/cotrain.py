"""Image-video co-training: stacks of independent still images in every batch.

As in Ho et al. 2022 (Video Diffusion Models), the last
round(image_fraction * batch) items of each batch become stacks of
num_frames independent images (drawn from the image source by a seed that
the item's record carries), flagged in the batch's 'image' (bool (b,)). The
train step gives them the temporal-attention focus mask and the null
condition, so no frame of a stack sees another. numpy, Pillow and grain
only (runs in grain worker processes).
"""

from __future__ import annotations

import dataclasses
import os

import grain
import numpy as np

from video_diffusion.data.clips import ClipSampling
from video_diffusion.data.errors import DataError
from video_diffusion.data.preprocess import record_ops
from video_diffusion.data.shards import PackedSource, is_packed
from video_diffusion.data.sources import VideoFolderSource
from video_diffusion.data.spec import DataSpec
from video_diffusion.data.video_io import IMAGE_EXTENSIONS

__all__ = ['DrawImageSeed', 'ImageStacks', 'image_items', 'make_image_source']


def make_image_source(spec: DataSpec):
  """The still images of spec.image_dataset_path: a folder of image files, or
  a folder of one-frame clips made by `video-diffusion prepare --num-frames 1`."""
  path = os.path.expanduser(spec.image_dataset_path)
  _, size, _, channels = spec.video_shape
  if is_packed(path):
    return PackedSource(path, (1, size, size, channels))
  if os.path.isdir(path):
    return VideoFolderSource(path, clips=ClipSampling(1), extensions=IMAGE_EXTENSIONS)
  raise DataError(
    f'{path}: trainer.image_dataset_path must be a folder of images '
    f'({", ".join(IMAGE_EXTENSIONS)}) or of one-frame clips made by video-diffusion prepare '
    '--num-frames 1'
  )


def image_items(spec: DataSpec, batch: int) -> int:
  """Image stacks in a (per-process) batch of `batch` items."""
  count = round(spec.image_fraction * batch)
  if not 0 < count < batch:
    raise DataError(
      f'trainer.image_fraction {spec.image_fraction} of {batch} videos per batch (and '
      f'process) makes {count} image stacks; it must make at least 1 and leave a video: '
      'change image_fraction or the batch size'
    )
  return count


class DrawImageSeed(grain.transforms.RandomMap):
  """Adds 'image_seed', from which ImageStacks draws a stack's images (last op: the
  draws of the ops before it do not change)."""

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return {**element, 'image_seed': np.uint64(rng.integers(2**63))}


class ImageStacks:
  """grain batch_fn: stacks the records, the last `count` as image stacks."""

  def __init__(self, images, count: int, spec: DataSpec):
    frames, size, _, channels = spec.video_shape
    self.images, self.count, self.frames = images, count, frames
    self.ops = record_ops(dataclasses.replace(spec, video_shape=(1, size, size, channels)), images)

  def stack(self, seed: int) -> np.ndarray:
    """num_frames independent images (frames, size, size, channels) drawn by `seed`."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in rng.integers(0, len(self.images), self.frames):
      record = self.images[int(index)]
      for op in self.ops:
        record = op.random_map(record, rng)
      frames.append(record['video'][0])
    return np.stack(frames)

  def __call__(self, values: list[dict]) -> dict:
    first_image = len(values) - self.count
    items = []
    for i, value in enumerate(values):
      seed = value.pop('image_seed')
      if i >= first_image:
        value = {**value, 'video': self.stack(int(seed))}
      items.append(value)
    batch = {key: np.stack([item[key] for item in items]) for key in items[0]}
    batch['image'] = np.arange(len(values)) >= first_image
    return batch
