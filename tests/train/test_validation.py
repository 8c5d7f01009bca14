"""The validation loss: fixed times, fixed noise, the model's own p_losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.config import ConfigError, config_from_dict
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.train import validation

UNET = dict(dim=8, dim_mults=[1], channels=1, attn_heads=2, attn_dim_head=8)
DIFFUSION = dict(image_size=8, num_frames=3, channels=1, timesteps=20, loss_type='l2')


def test_validation_times_are_evenly_spaced_midpoints():
  np.testing.assert_array_equal(
    validation.validation_times(8, 20, flow=False), [1, 3, 6, 8, 11, 13, 16, 18]
  )
  np.testing.assert_array_equal(validation.validation_times(4, 4, flow=False), [0, 1, 2, 3])
  np.testing.assert_allclose(
    validation.validation_times(4, 1000, flow=True), [0.125, 0.375, 0.625, 0.875]
  )
  labels = [validation.time_label(t) for t in validation.validation_times(2, 1000, flow=True)]
  assert labels == ['0.25', '0.75']
  assert validation.time_label(validation.validation_times(2, 1000, flow=False)[1]) == '750'


def test_more_validation_times_than_timesteps_is_refused():
  data = {'unet': UNET, 'diffusion': dict(DIFFUSION), 'trainer': dict(val_every=10, val_times=21)}
  with pytest.raises(ConfigError, match=r'trainer.val_times \(21\) is more than the 20'):
    config_from_dict(data)
  data['diffusion']['objective'] = 'flow'  # continuous times: any number
  assert config_from_dict(data).trainer.val_times == 21


@pytest.mark.parametrize('objective', ['eps', 'flow'])
def test_validation_loss_is_p_losses_at_fixed_times_and_noise(objective):
  cfg = config_from_dict({'unet': UNET, 'diffusion': dict(DIFFUSION, objective=objective)})
  graphdef, params, constants = split_diffusion(cfg)
  times = validation.validation_times(4, 20, flow=objective == 'flow')
  loss = jax.jit(validation.make_validation_loss(graphdef, constants, times))
  videos = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8, 1), np.uint8)
  key = jax.random.key(7)
  per_time, mean = loss(params, videos, None, key)
  again, _ = loss(params, videos, None, key)
  np.testing.assert_array_equal(per_time, again)  # deterministic

  @jax.jit
  def reference(params, t):  # the model's loss at one time, computed apart
    model = nnx.merge(graphdef, params, constants)
    x_start = jnp.asarray(videos, jnp.float32) / 255.0 * 2.0 - 1.0
    noise = jax.random.normal(key, x_start.shape)
    return model.p_losses(x_start, jnp.full((2,), t), noise)

  expected = np.array([reference(params, t) for t in times])
  np.testing.assert_allclose(per_time, expected, rtol=1e-5)
  np.testing.assert_allclose(mean, expected.mean(), rtol=1e-5)
  assert len(set(np.round(expected, 6))) == len(times)  # the times really differ
  other, _ = loss(params, videos, None, jax.random.key(8))
  assert not np.allclose(other, per_time)  # and the noise matters
