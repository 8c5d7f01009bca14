"""Clips from longer videos: window decoding, stride, frame rate, parts, padding, flips."""

import types

import av
import numpy as np
import pytest
from test_data import make_cfg, record, take

from video_diffusion.config import ConfigError, config_from_dict
from video_diffusion.data import loader as data_loader
from video_diffusion.data import sources, video_io
from video_diffusion.data.clips import ClipSampling
from video_diffusion.data.errors import DataError, ShortVideoWarning, UnreadableVideoWarning
from video_diffusion.data.preprocess import Preprocess

STEP = 4  # grey level per frame index of the counting videos


def write_counting_video(path, frames, fps=30, keyframe_every=8, size=(32, 24)):
  """A video whose frame i is flat grey STEP * i (h264 B-frames, or VP9 for .webm)."""
  codec = 'libvpx-vp9' if str(path).endswith('.webm') else 'libx264'
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = *size, 'yuv420p'
    stream.options = {'g': str(keyframe_every)}
    for i in range(frames):
      image = np.full((size[1], size[0], 3), STEP * i, np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
    container.mux(stream.encode())
  return path


def frame_numbers(video):
  """The frame index each frame of a counting video shows."""
  return [int(round(float(frame.mean()) / STEP)) for frame in video]


@pytest.mark.parametrize('name', ['a.mp4', 'a.webm', 'a.gif'])
def test_window_decoding_equals_the_full_decode(tmp_path, name):
  path = tmp_path / name
  if name.endswith('.gif'):
    rng = np.random.default_rng(0)
    video_io.write_gif(path, rng.integers(0, 4, (30, 8, 8, 1)).astype(np.uint8) * 80)
  else:
    write_counting_video(path, 30)
  full = video_io.read_video(path)
  assert video_io.probe_video(path).frames == len(full) == 30
  for indices in ([0, 1, 2], [9, 11, 13, 15], [17, 17, 18], [27, 29, 31, 40], [24]):
    expected = full[np.minimum(indices, len(full) - 1)]  # past the end: the last frame
    np.testing.assert_array_equal(video_io.read_frames(path, indices), expected)


def test_window_decoding_starts_at_the_keyframe_before_the_window(tmp_path, monkeypatch):
  path = write_counting_video(tmp_path / 'long.mp4', 60, keyframe_every=8)
  decoded = []

  class Counting:
    def __init__(self, container):
      self.container = container

    def __getattr__(self, name):
      return getattr(self.container, name)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.container.close()

    def decode(self, *args):
      for frame in self.container.decode(*args):
        decoded.append(frame.pts)
        yield frame

  monkeypatch.setattr(video_io, 'av', types.SimpleNamespace(open=lambda p: Counting(av.open(p))))
  clip = video_io.read_frames(path, [50, 52, 54])
  assert frame_numbers(clip) == [50, 52, 54]
  assert len(decoded) <= 8 + 5  # from keyframe 48 (a GOP of 8) to frame 55 at most, not 55


def test_clip_indices_follow_stride_rate_parts_and_pad():
  rng = np.random.default_rng(0)
  by_stride = ClipSampling(4, frame_stride=3)
  for _ in range(20):
    idx = by_stride.indices(30, None, rng)
    assert np.all(np.diff(idx) == 3) and 0 <= idx[0] and idx[-1] < 30
  by_rate = ClipSampling(5, fps=10)
  assert by_rate.span(30.0) == 13
  assert np.all(np.diff(by_rate.indices(100, 30.0, rng)) == 3)  # 30 fps -> 10 fps
  np.testing.assert_array_equal(ClipSampling(3, fps=60).indices(2, 30.0, rng), [0, 0, 1])
  parts = ClipSampling(2, clips_per_video=3)  # starts 0..9 of an 11-frame video, in 3 parts
  starts = {k: {int(parts.indices(11, None, rng, k)[0]) for _ in range(60)} for k in range(3)}
  assert starts == {0: {0, 1, 2, 3}, 1: {3, 4, 5, 6}, 2: {6, 7, 8, 9}}
  np.testing.assert_array_equal(ClipSampling(5, 2).indices(6, None, rng), [0, 2, 4, 5, 5])
  with pytest.raises(DataError, match='trainer.fps .* use trainer.frame_stride'):
    ClipSampling(4, fps=8).indices(20, None, rng)


def test_folder_clips_take_every_kth_frame_from_each_part(tmp_path):
  write_counting_video(tmp_path / 'a.mp4', 40)
  write_counting_video(tmp_path / 'b.mp4', 44)
  spec = make_cfg(tmp_path, frames=4, trainer={'frame_stride': 2, 'clips_per_video': 2})
  source = sources.make_source(spec)
  assert len(source) == 4  # two clips of each file
  for index, (frames, part) in enumerate([(40, 0), (40, 1), (44, 0), (44, 1)]):
    for seed in range(8):
      numbers = frame_numbers(record(source, index, seed)['video'])
      assert np.all(np.diff(numbers) == 2), numbers
      room = frames - 7  # possible first frames - 1
      assert part * room // 2 <= numbers[0] <= (part + 1) * room // 2
  batches = list(data_loader.make_loader(spec, seed=0, num_epochs=1))
  assert len(batches) == 1 and batches[0]['video'].shape == (4, 4, 16, 16, 1)


def test_folder_clips_resampled_to_a_frame_rate(tmp_path):
  write_counting_video(tmp_path / 'a.mp4', 45, fps=30)
  source = sources.make_source(make_cfg(tmp_path, frames=4, trainer={'fps': 10}))
  for seed in range(5):
    assert np.all(np.diff(frame_numbers(record(source, 0, seed)['video'])) == 3)


def test_short_videos_are_padded_and_counted_each_epoch(tmp_path):
  write_counting_video(tmp_path / 'long.mp4', 30)
  write_counting_video(tmp_path / 'short.mp4', 5)
  spec = make_cfg(tmp_path, frames=4, batch=2, accumulate=1, trainer={'frame_stride': 2})
  with pytest.warns(ShortVideoWarning, match=r'1 of the 2 videos .* short.mp4'):
    source = sources.make_source(spec)
  assert [p.rsplit('/', 1)[1] for p in source.short_videos()] == ['short.mp4']
  assert frame_numbers(record(source, 1)['video']) == [0, 2, 4, 4]
  epoch = data_loader.EpochReport.of(source, spec.batch_size)
  assert (epoch.steps, epoch.clips, epoch.short_clips) == (1, 2, 1)
  assert epoch.warning(3) == (
    'warning: epoch 3 (to step 3): 1 of its 2 clips came from videos shorter than a clip '
    'and repeat their last frame'
  )
  assert data_loader.EpochReport.of(sources.make_source(make_cfg()), 2).warning(1) is None


def test_moving_mnist_clips_take_every_kth_frame(tmp_path):
  frames = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 8, 8), np.uint8)
  np.save(tmp_path / 'm.npy', frames)  # (frames, sequences, h, w): frame f is all f
  source = sources.make_source(
    make_cfg(tmp_path / 'm.npy', frames=4, size=8, trainer={'frame_stride': 3})
  )
  for seed in range(10):
    numbers = record(source, 2, seed)['video'][:, 0, 0, 0]
    assert np.all(np.diff(numbers) == 3) and numbers[-1] < 20
  with pytest.raises(DataError, match='use trainer.frame_stride'):
    sources.make_source(make_cfg(tmp_path / 'm.npy', trainer={'fps': 8}))


def test_random_flip_mirrors_about_half():
  video = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), np.uint8)
  flip = Preprocess(2, 8, 1, random_flip=True)
  outs = [flip.random_map({'video': video}, np.random.default_rng(s))['video'] for s in range(40)]
  mirrored = [np.array_equal(o, video[:, :, ::-1]) for o in outs]
  assert all(m or np.array_equal(o, video) for m, o in zip(mirrored, outs))
  assert 10 <= sum(mirrored) <= 30
  plain = Preprocess(2, 8, 1)
  assert all(
    np.array_equal(plain.random_map({'video': video}, np.random.default_rng(s))['video'], video)
    for s in range(10)
  )


def test_clip_settings_are_checked():
  with pytest.raises(ConfigError, match='trainer.fps .* and trainer.frame_stride .* keep one'):
    config_from_dict({'trainer': {'fps': 8, 'frame_stride': 2}})
  with pytest.raises(DataError, match='synthetic digits .* leave them at 1, null and 1'):
    sources.make_source(make_cfg(trainer={'clips_per_video': 2}))
  take(data_loader.make_loader(make_cfg(trainer={'random_flip': True}), seed=0), 1)


def test_a_file_with_an_unreadable_header_is_skipped_in_worker_processes_too(tmp_path):
  write_counting_video(tmp_path / 'a.mp4', 20)
  (tmp_path / 'b.mp4').write_text('not a video')
  spec = make_cfg(tmp_path, frames=4, batch=2, accumulate=1)
  with pytest.warns(UnreadableVideoWarning, match='b.mp4'):
    in_process = take(data_loader.make_loader(spec, seed=0, worker_count=0), 2)
  with pytest.warns(UnreadableVideoWarning, match='b.mp4'):  # once, when the source is made
    loader = data_loader.make_loader(spec, seed=0, worker_count=1)
  iterator = iter(loader)
  try:
    for a, b in zip(in_process, [next(iterator) for _ in range(2)]):
      np.testing.assert_array_equal(a['video'], b['video'])
  finally:
    data_loader.close_iterator(iterator)
