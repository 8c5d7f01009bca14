"""Video reading and writing."""

import av
import numpy as np
import pytest

from video_diffusion.data.video_io import (
  VideoReadError,
  read_video,
  to_uint8,
  video_grid,
  write_gif,
)
from video_diffusion.inference.gifs import write_samples


def write_mp4(path, video, fps=8):
  """Write uint8 (f, h, w, 3) with PyAV (h264, yuv420p: lossy)."""
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.width, stream.height = video.shape[2], video.shape[1]
    stream.pix_fmt = 'yuv420p'
    for frame in video:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())
  return path


def _palette_video(shape, colours, seed=0):
  """Random video drawn from a few colours, so GIF palettes are lossless."""
  rng = np.random.default_rng(seed)
  return np.asarray(colours, np.uint8)[rng.integers(0, len(colours), shape)]


def test_gif_round_trip_grey_is_exact(tmp_path):
  video = _palette_video((5, 9, 11), [[0], [70], [200], [255]])
  path = write_gif(tmp_path / 'a' / 'b' / 'grey.gif', video)
  out = read_video(path)
  assert out.shape == (5, 9, 11, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, video)


def test_gif_round_trip_rgb_is_exact(tmp_path):
  video = _palette_video((4, 8, 10), [[255, 0, 0], [0, 200, 0], [0, 0, 255], [10, 20, 30]])
  out = read_video(write_gif(tmp_path / 'rgb.gif', video))
  np.testing.assert_array_equal(out, video)


def test_float_gif_and_sample_gifs(tmp_path):
  videos = np.linspace(0, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4, 1)
  paths = write_samples(str(tmp_path / 'samples'), videos)
  assert [p.rsplit('/', 1)[1] for p in paths] == ['sample_1.gif', 'sample_2.gif', 'grid.gif']
  np.testing.assert_array_equal(read_video(paths[1]), to_uint8(videos[1], value_range=(0.0, 1.0)))


def test_mp4_round_trip_is_close(tmp_path):
  t, y, x = np.meshgrid(np.arange(6), np.arange(32), np.arange(48), indexing='ij')
  video = np.stack([x * 5 + t * 10, y * 7, np.full_like(x, 90)], -1).astype(np.uint8)
  out = read_video(write_mp4(tmp_path / 'v.mp4', video))
  assert out.shape == video.shape and out.dtype == np.uint8
  assert np.abs(out.astype(int) - video).mean() < 6


def test_unreadable_files_raise_video_read_error(tmp_path):
  good = write_gif(tmp_path / 'good.gif', _palette_video((4, 8, 8), [[0], [255]]))
  data = open(good, 'rb').read()
  (tmp_path / 'cut.gif').write_bytes(data[: len(data) // 2])
  (tmp_path / 'junk.mp4').write_bytes(np.random.default_rng(0).bytes(2000))
  (tmp_path / 'fake.gif').write_bytes(b'GIF89a not really')
  for name in ('cut.gif', 'junk.mp4', 'fake.gif', 'missing.avi'):
    with pytest.raises(VideoReadError, match=name):
      read_video(tmp_path / name)
  with pytest.raises(VideoReadError, match='unknown extension'):
    read_video(tmp_path / 'x.txt')


def test_to_uint8_mapping_and_clipping():
  out = to_uint8(np.array([-1.0, 1.0, 0.0, 2.0, -3.0, np.nan], np.float32))
  np.testing.assert_array_equal(out, [0, 255, 128, 255, 0, 0])
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(
    to_uint8(np.array([0.0, 0.5, 1.0]), value_range=(0.0, 1.0)), [0, 128, 255]
  )
  raw = np.array([3, 7], np.uint8)
  assert to_uint8(raw) is raw


def test_video_grid_layout():
  videos = np.stack([np.full((2, 3, 4, 1), 10 * (i + 1), np.uint8) for i in range(5)])
  grid = video_grid(videos, rows=2)
  assert grid.shape == (2, 2 * 3 + 1, 3 * 4 + 2, 1)
  for i in range(5):
    y, x = (i // 3) * 4, (i % 3) * 5
    assert (grid[:, y : y + 3, x : x + 4] == 10 * (i + 1)).all()
  assert (grid[:, 3] == 0).all() and (grid[:, :, 4] == 0).all()  # separators
  assert (grid[:, 4:, 10:] == 0).all()  # the missing sixth tile
