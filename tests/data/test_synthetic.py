"""The synthetic moving-digits dataset."""

import numpy as np
import pytest

from video_diffusion.data.synthetic import _trajectory, caption, moving_digits


def _sample(index, seed=0, **kw):
  args = dict(num_frames=8, image_size=32)
  args.update(kw)
  return moving_digits(seed, index, **args)


def _centroid(frame):
  ys, xs = np.indices(frame.shape)
  mass = frame.sum()
  return np.array([(ys * frame).sum() / mass, (xs * frame).sum() / mass])


def test_deterministic_per_seed_and_index():
  a, b = _sample(3), _sample(3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['video'], _sample(4)['video'])
  assert not np.array_equal(a['video'], _sample(3, seed=1)['video'])


@pytest.mark.parametrize('size,channels', [(32, 1), (64, 3)])
def test_shapes_and_dtypes(size, channels):
  s = _sample(0, num_frames=5, image_size=size, channels=channels)
  assert s['video'].shape == (5, size, size, channels) and s['video'].dtype == np.uint8
  assert s['label'].shape == (2,) and s['label'].dtype == np.int32
  assert s['velocity'].shape == (2, 2) and s['velocity'].dtype == np.float32
  if channels == 3:
    np.testing.assert_array_equal(s['video'][..., 0], s['video'][..., 2])


def test_labels_counts_and_brightness():
  samples = [_sample(i) for i in range(200)]
  labels = np.stack([s['label'] for s in samples])
  assert labels[:, 0].min() >= 0 and labels.max() <= 9
  two = (labels[:, 1] >= 0).mean()
  assert 0.35 < two < 0.65
  assert set(labels[:, 0]) == set(range(10))
  for s in samples:
    absent = s['label'] < 0
    assert not s['velocity'][absent].any()
    assert s['video'].max() >= 200 and s['video'][0].mean() < 128  # white digits on black


def test_single_digit_moves_with_its_velocity():
  checked = 0
  for i in range(60):
    s = _sample(i, num_frames=2, image_size=64)
    if s['label'][1] >= 0:
      continue
    frames = s['video'][..., 0].astype(np.float64)
    assert not np.array_equal(frames[0], frames[1])
    v = s['velocity'][0]
    ink = np.argwhere(frames.max(0) > 0)
    margin = np.abs(v).max() + 1
    if ink.min() < margin or ink.max() > 63 - margin:
      continue  # may bounce between the two frames
    np.testing.assert_allclose(_centroid(frames[1]) - _centroid(frames[0]), v, atol=0.15)
    checked += 1
  assert checked >= 5


def test_digits_bounce_and_stay_inside():
  index = next(i for i in range(100) if _sample(i)['label'][1] < 0)
  video = _sample(index, num_frames=64, image_size=32)['video'][..., 0].astype(np.float64)
  mass = video.sum(axis=(1, 2))
  np.testing.assert_allclose(mass, mass[0], rtol=0.03)  # never cut off by an edge
  steps = np.diff(np.stack([_centroid(f) for f in video]), axis=0)
  for axis in range(2):
    assert (steps[:, axis] > 0.1).any() and (steps[:, axis] < -0.1).any()


def test_trajectory_reflects_at_the_edges():
  np.testing.assert_allclose(_trajectory(1.0, -2.0, 10.0, 8), [1, 1, 3, 5, 7, 9, 9, 7])
  np.testing.assert_allclose(_trajectory(3.0, 7.5, 10.0, 4), [3, 9.5, 2, 5.5])
  pos = _trajectory(3.0, 7.5, 10.0, 50)
  assert pos.min() >= 0 and pos.max() <= 10


def test_caption():
  label = np.array([3, 7], np.int32)
  velocity = np.array([[0.2, -2.0], [1.5, 0.1]], np.float32)
  assert caption(label, velocity) == 'a 3 moving left and a 7 moving down'
  assert caption([5, -1], [[-1.0, 1.0], [0, 0]]) == 'a 5 moving up and right'
  assert caption([0, -1], [[0.0, 0.0], [0, 0]]) == 'a 0 standing still'
