"""sampling.generate: prediction, interpolation and autoregressive extension.

A fake sampler stands in for the model: it returns the given frames where the
mask says so and, elsewhere, the call number, so every frame of the result
tells which call made it and what each call was given.
"""

import jax
import numpy as np
import pytest

from video_diffusion.inference import sampling

SHAPE = (4, 2, 2, 1)  # (frames, height, width, channels) of the model


class FakeSampler:
  def __init__(self):
    self.calls = []

  def __call__(self, params, key, cond=None, known=None, frame_mask=None):
    self.calls.append(
      (
        cond,
        None if known is None else known.copy(),
        None if frame_mask is None else frame_mask.copy(),
      )
    )
    value = len(self.calls) / 100
    out = np.full((2,) + SHAPE, value, np.float32)
    if known is not None:
      out = np.where(frame_mask[:, :, None, None, None], known, out)
    return out


def frame_values(video):
  return np.round(video[0, :, 0, 0, 0] * 100).astype(int).tolist()


def test_plain_sampling_is_one_call_without_known_frames():
  fake = FakeSampler()
  video = sampling.generate(fake, None, jax.random.key(0), SHAPE, 2, cond='c')
  assert video.shape == (2,) + SHAPE and len(fake.calls) == 1
  assert fake.calls[0] == ('c', None, None)


def test_prediction_keeps_the_given_frames_first():
  fake = FakeSampler()
  first = np.full((1, 2, 2, 1), 0.5, np.float32)
  video = sampling.generate(fake, None, jax.random.key(0), SHAPE, 2, first=first)
  assert frame_values(video) == [50, 1, 1, 1]
  _, _, mask = fake.calls[0]
  assert mask.tolist() == [[True, False, False, False]] * 2


def test_extension_conditions_each_chunk_on_the_last_frames():
  fake = FakeSampler()
  video = sampling.generate(
    fake, None, jax.random.key(0), SHAPE, 2, num_frames=9, num_cond_frames=2
  )
  # 4 frames, then chunks of 4 that repeat the last 2 and add 2 new: 4 + 2 + 2 + 2 >= 9.
  assert len(fake.calls) == 4 and video.shape == (2, 9) + SHAPE[1:]
  assert frame_values(video) == [1, 1, 1, 1, 2, 2, 3, 3, 4]
  for _, _known, mask in fake.calls[1:]:
    assert mask[0].tolist() == [True, True, False, False]
  np.testing.assert_array_equal(fake.calls[2][1][:, :2], video[:, 4:6])


def test_interpolation_gives_both_ends():
  fake = FakeSampler()
  first = np.full((1, 2, 2, 1), 0.2, np.float32)
  last = np.full((1, 2, 2, 1), 0.9, np.float32)
  video = sampling.generate(fake, None, jax.random.key(0), SHAPE, 2, first=first, last=last)
  assert frame_values(video) == [20, 1, 1, 90]
  with pytest.raises(sampling.SamplingError, match='interpolation fills one chunk'):
    sampling.generate(fake, None, jax.random.key(0), SHAPE, 2, first=first, last=last, num_frames=8)


def test_requests_that_leave_nothing_to_generate_are_refused():
  fake = FakeSampler()
  with pytest.raises(sampling.SamplingError, match='leave none'):
    sampling.generate(
      fake, None, jax.random.key(0), SHAPE, 2, first=np.zeros((4, 2, 2, 1), np.float32)
    )
  with pytest.raises(sampling.SamplingError, match=r'--num-cond-frames 4 must be in \[1, 3\]'):
    sampling.generate(fake, None, jax.random.key(0), SHAPE, 2, num_frames=8, num_cond_frames=4)


def test_load_clip_resizes_and_converts_to_the_model(tmp_path):
  from video_diffusion.data import video_io

  rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
  path = tmp_path / 'clip.gif'
  video_io.write_gif(path, rgb)
  clip = sampling.load_clip(str(path), (4, 4, 4, 1))
  assert clip.shape == (3, 4, 4, 1) and clip.dtype == np.float32
  assert 0.0 <= clip.min() and clip.max() <= 1.0
