"""Sample videos as GIF files: one per video and a grid of them all.

Videos are channels-last (batch, frames, height, width, channels) in [0, 1].
"""

from __future__ import annotations

import math
import os

import numpy as np

from video_diffusion.data import video_io


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
  grid_path = write_grid(
    os.path.join(folder, 'grid.gif'), videos01, grid_rows(len(frames)), fps=fps
  )
  return paths + [grid_path]


def grid_frames(videos01: np.ndarray, rows: int) -> np.ndarray:
  """The videos as the uint8 frames (frames, height, width, channels) of one rows x rows grid."""
  frames = video_io.to_uint8(np.asarray(videos01), value_range=(0.0, 1.0))
  return video_io.video_grid(frames, rows)


def write_grid(path: str, videos01: np.ndarray, rows: int, *, fps: int = 8) -> str:
  """Writes the videos as one rows x rows grid GIF at `path`."""
  video_io.write_gif(path, grid_frames(videos01, rows), fps=fps)
  return path
