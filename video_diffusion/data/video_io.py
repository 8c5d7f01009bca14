"""Reading and writing videos: GIF through Pillow, other containers through PyAV.

Videos are uint8 numpy arrays, channels-last: (frames, height, width,
channels). numpy, Pillow and PyAV only (runs in grain worker processes).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os

import av
import numpy as np
from PIL import Image, ImageSequence

__all__ = [
  'IMAGE_EXTENSIONS',
  'VIDEO_EXTENSIONS',
  'VideoInfo',
  'VideoReadError',
  'probe_video',
  'read_frames',
  'read_video',
  'to_uint8',
  'video_grid',
  'write_gif',
]

VIDEO_EXTENSIONS = ('.gif', '.mp4', '.webm', '.avi', '.mov', '.mkv')
# Still images, read as one-frame videos (image-video co-training).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


class VideoReadError(ValueError):
  """A video file that cannot be decoded; the message names the path and the reason."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'{self.path}: cannot read video: {reason}')


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """A video file's frame count and rate, read from its header (GIF: its frame durations)."""

  frames: int
  fps: float


_GIF_FRAME_MS = 100  # what browsers show a GIF frame that sets no duration for


def _open_gif(path: str) -> Image.Image:
  im = Image.open(path)
  if im.format != 'GIF':
    im.close()
    raise VideoReadError(path, f'not a GIF file (Pillow reads it as {im.format})')
  return im


def _video_stream(container, path: str):
  if not container.streams.video:
    raise VideoReadError(path, 'the file has no video stream')
  return container.streams.video[0]


def _gif_frames(path: str, wanted: set[int] | None) -> dict[int, np.ndarray]:
  with _open_gif(path) as im:
    last = max(wanted) if wanted else None
    frames = {}
    for index, frame in enumerate(ImageSequence.Iterator(im)):  # disposal needs every frame
      if last is not None and index > last:
        break
      if wanted is None or index in wanted:
        frames[index] = np.asarray(frame.convert('RGB'))
  return frames


def _av_frames(path: str, wanted: set[int] | None, seek: bool = True) -> dict[int, np.ndarray]:
  """{index: frame}; with `wanted`, decoding starts at the keyframe before its
  first index (found from the stream's timestamps) and stops after its last."""
  with av.open(path) as container:
    stream = _video_stream(container, path)
    rate, base, start = stream.average_rate, stream.time_base, stream.start_time or 0
    first, last = (min(wanted), max(wanted)) if wanted else (0, None)
    seek = seek and first > 0 and bool(rate) and base is not None
    if seek:
      container.seek(start + int(first / rate / base), stream=stream)  # back to a keyframe
    frames = {}
    for count, frame in enumerate(container.decode(stream)):
      timed = frame.pts is not None and bool(rate) and base is not None
      index = round(float((frame.pts - start) * base * rate)) if timed else count
      if seek and (not timed or (count == 0 and index > first)):
        return _av_frames(path, wanted, seek=False)  # no usable timestamps: count from 0
      if last is not None and index > last:
        break
      if wanted is None or index in wanted:
        frames[index] = frame.to_ndarray(format='rgb24')
  return frames


def _decode(path: str | os.PathLike, read, *args):
  """read(path, ...) with every decoder failure turned into VideoReadError."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
    raise VideoReadError(
      path,
      f'unknown extension {ext or "(none)"!r}; readable: videos ({", ".join(VIDEO_EXTENSIONS)}) '
      f'and images ({", ".join(IMAGE_EXTENSIONS)}, read as one frame)',
    )
  try:
    return read(path, ext, *args)
  except VideoReadError:
    raise
  except FileNotFoundError:
    raise VideoReadError(path, 'file not found') from None
  except Exception as e:  # decoders raise many types (OSError, EOFError, av.FFmpegError, ...)
    # FFmpeg's errors carry the path in str(e); their strerror is the reason alone.
    reason = getattr(e, 'strerror', None) or f'{type(e).__name__}: {e}'.replace(f" '{path}'", '')
    raise VideoReadError(path, reason) from e


def _image(path: str, wanted: set[int] | None) -> dict[int, np.ndarray]:
  with Image.open(path) as im:
    return {0: np.asarray(im.convert('RGB'))}


def _probe(path: str, ext: str) -> VideoInfo:
  if ext in IMAGE_EXTENSIONS:
    with Image.open(path):
      return VideoInfo(1, 1.0)
  if ext == '.gif':
    with _open_gif(path) as im:
      return VideoInfo(im.n_frames, 1000 / (im.info.get('duration') or _GIF_FRAME_MS))
  with av.open(path) as container:
    stream = _video_stream(container, path)
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    frames = stream.frames
    if not frames and fps:  # containers without a frame count (webm, mkv): from the duration
      seconds = stream.duration * stream.time_base if stream.duration else container.duration / 1e6
      frames = round(float(seconds or 0) * fps)
  if not frames or not fps:
    raise VideoReadError(path, 'the header gives no frame count or frame rate')
  return VideoInfo(int(frames), fps)


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Frame count and rate of a video file from its header, without decoding frames."""
  return _decode(path, _probe)


def _as_video(path: str, frames: list[np.ndarray]) -> np.ndarray:
  if not frames:
    raise VideoReadError(path, 'the video stream has no decodable frames')
  video = np.stack(frames)
  if min(video.shape[1:3]) == 0:
    raise VideoReadError(path, f'empty video of shape {video.shape}')
  if np.array_equal(video[..., 0], video[..., 1]) and np.array_equal(video[..., 0], video[..., 2]):
    video = np.ascontiguousarray(video[..., :1])
  return video


def _read(path: str, ext: str, wanted: set[int] | None) -> dict[int, np.ndarray]:
  if ext in IMAGE_EXTENSIONS:
    return _image(path, wanted)
  return (_gif_frames if ext == '.gif' else _av_frames)(path, wanted)


def read_video(path: str | os.PathLike) -> np.ndarray:
  """Every frame of a video file as uint8 (frames, height, width, channels).

  `.gif` is read with Pillow (palettes and frame disposal resolved), the other
  VIDEO_EXTENSIONS with PyAV, an image (IMAGE_EXTENSIONS) as one frame.
  channels is 1 when every pixel of every frame is grey (R == G == B), else 3.
  A missing, truncated or corrupt file, or an unknown extension, raises
  VideoReadError.
  """
  frames = _decode(path, _read, None)
  return _as_video(os.fspath(path), [frames[i] for i in sorted(frames)])


def read_frames(path: str | os.PathLike, indices) -> np.ndarray:
  """The frames of `indices` (ascending, repeats allowed) as read_video gives
  them, decoding only from the keyframe before the first to the last. Indices
  past the end of the video get its last frame."""
  indices = [int(i) for i in indices]
  frames = _decode(path, _read, set(indices))
  if not frames:
    raise VideoReadError(path, f'no frame at or after index {indices[0]} can be decoded')
  have = sorted(frames)  # an index not decoded (past the end) gets the frame before it
  nearest = [have[max(bisect.bisect_right(have, i) - 1, 0)] for i in indices]
  return _as_video(os.fspath(path), [frames[k] for k in nearest])


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
