"""GaussianDiffusion behaviour beyond parity: schedules, sampling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion import GaussianDiffusion, Unet3D
from video_diffusion.diffusion.schedule import cosine_beta_schedule, linear_beta_schedule

SHAPE = (2, 3, 8, 8, 1)  # (batch, frames, height, width, channels)


@pytest.fixture(scope='module')
def diffusion():
  unet = Unet3D(
    dim=8, dim_mults=(1, 2), channels=1, attn_heads=2, attn_dim_head=8, rngs=nnx.Rngs(0)
  )
  return GaussianDiffusion(
    unet, image_size=8, num_frames=3, channels=1, timesteps=5, loss_type='l2'
  )


def test_schedules_are_increasing_and_bounded():
  for betas in (cosine_beta_schedule(1000), linear_beta_schedule(1000)):
    assert betas.shape == (1000,) and np.all(np.diff(betas) > 0)
    assert betas[0] > 0 and betas[-1] <= 0.9999
  np.testing.assert_allclose(linear_beta_schedule(1000)[[0, -1]], [1e-4, 0.02])


def test_q_sample_at_last_step_is_almost_pure_noise(diffusion):
  x = jnp.ones(SHAPE)
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  t = jnp.full((2,), diffusion.num_timesteps - 1)
  np.testing.assert_allclose(diffusion.q_sample(x, t, noise), noise, atol=1e-2)


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_sample_and_interpolate_are_jittable_and_bounded(diffusion):
  samples = nnx.jit(lambda d, key: d.sample(key, batch_size=2))(diffusion, jax.random.key(1))
  assert samples.shape == SHAPE
  assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0
  again = nnx.jit(lambda d, key: d.sample(key, batch_size=2))(diffusion, jax.random.key(1))
  np.testing.assert_array_equal(samples, again)
  x1 = jnp.zeros(SHAPE) - 0.5
  mixed = nnx.jit(lambda d, a, b, key: d.interpolate(a, b, key, t=3))(
    diffusion, x1, -x1, jax.random.key(2)
  )
  assert mixed.shape == SHAPE and bool(jnp.all(jnp.abs(mixed) <= 1.0))


def test_dynamic_thresholding_rescales_outliers(diffusion):
  dynamic = GaussianDiffusion(
    diffusion.denoise_fn,
    image_size=8,
    num_frames=3,
    channels=1,
    timesteps=5,
    use_dynamic_thres=True,
    dynamic_thres_percentile=0.5,
  )
  x = jnp.concatenate([jnp.full((1,) + SHAPE[1:], 4.0), jnp.full((1,) + SHAPE[1:], 0.5)])
  clipped = dynamic.clip_x0(x)
  np.testing.assert_allclose(clipped[0], 1.0)  # divided by its own 4.0 percentile
  np.testing.assert_allclose(clipped[1], 0.5)  # s clamps at 1: left as is
  np.testing.assert_allclose(diffusion.clip_x0(x)[0], 1.0)


def test_loss_rejects_wrong_video_shape(diffusion):
  with pytest.raises(ValueError, match=r'videos must be \(batch, 3, 8, 8, 1\)'):
    diffusion(jnp.zeros((2, 1, 3, 8, 8)), jax.random.key(0))


def test_random_masks_need_a_key(diffusion):
  x = jnp.zeros(SHAPE)
  with pytest.raises(ValueError, match='prob_focus_present=0.5 draws random masks'):
    diffusion.denoise_fn(x, jnp.zeros(2, jnp.int32), prob_focus_present=0.5)


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_focus_present_probability_one_equals_all_true_mask(diffusion):
  x = jax.random.normal(jax.random.key(3), SHAPE)
  t = jnp.array([1, 4])
  unet = diffusion.denoise_fn
  np.testing.assert_array_equal(
    unet(x, t, prob_focus_present=1.0), unet(x, t, focus_present_mask=jnp.ones(2, bool))
  )


def test_bad_constructor_options_are_named():
  with pytest.raises(ValueError, match='init_kernel_size=4 must be odd'):
    Unet3D(dim=8, init_kernel_size=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="loss_type='huber'"):
    GaussianDiffusion(None, image_size=8, num_frames=2, loss_type='huber')
