"""Reading and writing videos: GIF through Pillow, other containers through PyAV.

Videos are uint8 numpy arrays, channels-last: (frames, height, width,
channels). numpy, Pillow and PyAV only (runs in grain worker processes).
"""

from __future__ import annotations

import math
import os

import av
import numpy as np
from PIL import Image, ImageSequence

__all__ = [
  'VIDEO_EXTENSIONS',
  'VideoReadError',
  'read_video',
  'to_uint8',
  'video_grid',
  'write_gif',
]

VIDEO_EXTENSIONS = ('.gif', '.mp4', '.webm', '.avi', '.mov', '.mkv')


class VideoReadError(ValueError):
  """A video file that cannot be decoded; the message names the path and the reason."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'{self.path}: cannot read video: {reason}')


def _read_gif(path: str) -> np.ndarray:
  with Image.open(path) as im:
    if im.format != 'GIF':
      raise VideoReadError(path, f'not a GIF file (Pillow reads it as {im.format})')
    frames = [np.asarray(frame.convert('RGB')) for frame in ImageSequence.Iterator(im)]
  return np.stack(frames)


def _read_av(path: str) -> np.ndarray:
  with av.open(path) as container:
    if not container.streams.video:
      raise VideoReadError(path, 'the file has no video stream')
    frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
  if not frames:
    raise VideoReadError(path, 'the video stream has no decodable frames')
  return np.stack(frames)


def read_video(path: str | os.PathLike) -> np.ndarray:
  """Every frame of a video file as uint8 (frames, height, width, channels).

  `.gif` is read with Pillow (palettes and frame disposal resolved), the other
  VIDEO_EXTENSIONS with PyAV. channels is 1 when every pixel of every frame is
  grey (R == G == B), else 3 (RGB). A missing, truncated or corrupt file, or
  an unknown extension, raises VideoReadError.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in VIDEO_EXTENSIONS:
    raise VideoReadError(
      path, f'unknown extension {ext or "(none)"!r}; readable: {", ".join(VIDEO_EXTENSIONS)}'
    )
  try:
    video = _read_gif(path) if ext == '.gif' else _read_av(path)
  except VideoReadError:
    raise
  except FileNotFoundError:
    raise VideoReadError(path, 'file not found') from None
  except Exception as e:  # decoders raise many types (OSError, EOFError, av.FFmpegError, ...)
    # FFmpeg's errors carry the path in str(e); their strerror is the reason alone.
    reason = getattr(e, 'strerror', None) or f'{type(e).__name__}: {e}'
    raise VideoReadError(path, reason) from e
  if video.shape[0] == 0 or min(video.shape[1:3]) == 0:
    raise VideoReadError(path, f'empty video of shape {video.shape}')
  if np.array_equal(video[..., 0], video[..., 1]) and np.array_equal(video[..., 0], video[..., 2]):
    video = np.ascontiguousarray(video[..., :1])
  return video


def to_uint8(videos, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Float videos in value_range -> uint8 [0, 255]; uint8 input is returned as is.

  The map is linear and fixed (not per-batch min-max): with the default
  (-1, 1), x -> floor((x + 1) * 127.5 + 0.5) clipped to [0, 255], so -1 -> 0,
  0 -> 128 and 1 -> 255; NaN -> 0.
  """
  videos = np.asarray(videos)
  if videos.dtype == np.uint8:
    return videos
  low, high = value_range
  scaled = (videos.astype(np.float64) - low) * (255.0 / (high - low))
  scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
  return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def video_grid(videos, rows: int, pad: int = 1) -> np.ndarray:
  """(n, f, h, w, c) videos -> one (f, H, W, c) video tiling them row by row.

  The grid has `rows` rows and ceil(n / rows) columns with `pad` black pixels
  between neighbouring tiles (none around the outside), so H = rows * h +
  (rows - 1) * pad; missing tiles at the end are black. Float input goes
  through to_uint8 first.
  """
  videos = to_uint8(videos)
  if videos.ndim != 5:
    raise ValueError(f'video_grid expects (n, frames, h, w, c), got shape {videos.shape}')
  n, f, h, w, c = videos.shape
  cols = max(1, math.ceil(n / rows))
  grid = np.zeros((f, rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), np.uint8)
  for i in range(n):
    y, x = (i // cols) * (h + pad), (i % cols) * (w + pad)
    grid[:, y : y + h, x : x + w] = videos[i]
  return grid


def write_gif(path: str | os.PathLike, video, fps: float = 8) -> str:
  """Write (f, h, w, c) video, c in {1, 3} (or (f, h, w)), as a looping GIF.

  Float input goes through to_uint8 (values in [-1, 1]). Grey videos are
  written in mode 'L' (exact); RGB frames are quantised to a 256-colour
  palette per frame (exact when a frame has at most 256 colours). Pillow
  merges consecutive identical frames into one longer frame, so such a GIF
  reads back with fewer frames. Parent folders are created. Returns the path.
  """
  video = to_uint8(video)
  if video.ndim == 4 and video.shape[-1] == 1:
    video = video[..., 0]
  if not (video.ndim == 3 or (video.ndim == 4 and video.shape[-1] == 3)):
    raise ValueError(f'write_gif expects (frames, h, w, 1 or 3), got shape {video.shape}')
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  images = [Image.fromarray(frame, 'L' if video.ndim == 3 else 'RGB') for frame in video]
  images[0].save(
    path,
    format='GIF',
    save_all=True,
    append_images=images[1:],
    duration=max(1, round(1000 / fps)),
    loop=0,
  )
  return path
