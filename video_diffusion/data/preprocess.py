"""Preprocessing of a record's video to the model's frames, size and channels.

numpy and Pillow only (runs in grain worker processes).
"""

from __future__ import annotations

import grain
import numpy as np
from PIL import Image

from video_diffusion.data.clips import ReadClip
from video_diffusion.data.errors import DataError
from video_diffusion.data.spec import DataSpec


class Preprocess(grain.transforms.RandomMap):
  """Cast a record's video to (num_frames, image_size, image_size, channels) uint8.

  Frames: a random window of num_frames when longer; when shorter, the last
  frame is repeated. Space: the centred square of side min(h, w) is resized to
  image_size with Pillow's bilinear filter (antialiased when shrinking), i.e.
  resize the shorter side then centre-crop. Channels: RGB -> 1 by ITU-R 601
  luma (as Pillow's 'L'), grey -> 3 by repetition. random_flip mirrors half
  of the videos left to right.
  """

  def __init__(self, num_frames: int, image_size: int, channels: int, random_flip: bool = False):
    if channels not in (1, 3):
      raise DataError(f'channels must be 1 (grey) or 3 (RGB) for video data, got {channels}')
    self.num_frames, self.image_size, self.channels = num_frames, image_size, channels
    self.random_flip = random_flip

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    video = np.asarray(element['video'])
    f, h, w, c = video.shape
    if f > self.num_frames:
      start = int(rng.integers(0, f - self.num_frames + 1))
      video = video[start : start + self.num_frames]
    elif f < self.num_frames:
      video = np.concatenate([video, np.repeat(video[-1:], self.num_frames - f, axis=0)])
    if c == 3 and self.channels == 1:
      luma = video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      video = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    elif c not in (1, 3):
      raise DataError(f'videos must have 1 or 3 channels, got shape {video.shape}')
    s = self.image_size
    if (h, w) != (s, s):
      side = min(h, w)
      box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
      video = np.stack([self._resize(frame, box) for frame in video])
    if video.shape[-1] == 1 and self.channels == 3:
      video = np.repeat(video, 3, axis=-1)
    if self.random_flip and rng.random() < 0.5:
      video = video[:, :, ::-1]
    return {**element, 'video': np.ascontiguousarray(video)}

  def _resize(self, frame: np.ndarray, box) -> np.ndarray:
    grey = frame.shape[-1] == 1
    image = Image.fromarray(frame[..., 0] if grey else frame, 'L' if grey else 'RGB')
    out = np.asarray(image.resize((self.image_size,) * 2, Image.Resampling.BILINEAR, box=box))
    return out[..., None] if grey else out


def record_ops(spec: DataSpec, source) -> list:
  """The per-record operations from a source's record to the model's clip: the
  clip read (file sources) and Preprocess; each takes a random generator.
  Shards of latents are read as they are."""
  if getattr(source, 'latents', None) is not None:
    if spec.random_flip:
      raise DataError(
        f'{source!r} holds latents, encoded once without flips; set trainer.random_flip: '
        'false, or train from the videos'
      )
    return []
  frames, size, _, channels = spec.video_shape
  read = [ReadClip(source)] if getattr(source, 'clips', None) is not None else []
  return read + [Preprocess(frames, size, channels, random_flip=spec.random_flip)]
