"""Which frames of a longer video a training clip takes.

A clip is num_frames frames, every frame_stride-th frame of the source, or
the source resampled to `fps` (nearest frames). Each video gives
clips_per_video clips per epoch: clip k of a video starts at a random frame
of the k-th of clips_per_video equal parts of the possible starts, so the
clips of one epoch cover the whole video. numpy only (runs in grain workers).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from video_diffusion.data.errors import DataError

__all__ = ['ClipSampling', 'ReadClip']


@dataclasses.dataclass(frozen=True)
class ClipSampling:
  """How clips are cut from a source video (see the module docstring)."""

  num_frames: int
  frame_stride: int = 1
  fps: float | None = None
  clips_per_video: int = 1

  def step(self, source_fps: float | None) -> float:
    """Source frames from one clip frame to the next."""
    if self.fps is None:
      return float(self.frame_stride)
    if not source_fps:
      raise DataError(
        'trainer.fps resamples video files by their frame rate; this dataset has none '
        '(a .npy array): use trainer.frame_stride instead'
      )
    return source_fps / self.fps

  def span(self, source_fps: float | None) -> int:
    """Source frames one clip covers, first to last."""
    return int(round((self.num_frames - 1) * self.step(source_fps))) + 1

  def describe(self) -> str:
    """'10 frames at stride 2 (19 source frames)' or '10 frames at 8 fps'."""
    if self.fps:
      return f'{self.num_frames} frames at {self.fps:g} fps'
    return (
      f'{self.num_frames} frames at stride {self.frame_stride} ({self.span(None)} source frames)'
    )

  def indices(
    self, length: int, source_fps: float | None, rng: np.random.Generator, part: int = 0
  ) -> np.ndarray:
    """Source frame indices of a clip from part `part` of a `length`-frame video,
    ascending; past the end of a short video they stay at its last frame."""
    step = self.step(source_fps)
    room = length - self.span(source_fps)  # possible starts - 1
    start = 0
    if room > 0:
      parts = self.clips_per_video
      low, high = part * room // parts, (part + 1) * room // parts
      start = int(rng.integers(low, high + 1)) if high > low else low
    offsets = np.rint(step * np.arange(self.num_frames)).astype(np.int64)
    return np.minimum(start + offsets, length - 1)


class ReadClip(grain.transforms.RandomMap):
  """Turns a source's clip reference {'clip': i} into its record (the source's
  read_clip(i, rng)), so that the window is drawn anew every epoch."""

  def __init__(self, source):
    self.source = source

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return self.source.read_clip(int(element['clip']), rng)
