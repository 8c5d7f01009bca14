"""Flow matching on an analytic case: Gaussian data, whose exact velocity has a closed form.

For x0 ~ N(mu, s^2) per pixel and x_t = (1 - t) x0 + t eps,
E[x0 | x_t] = mu + (1 - t) s^2 / ((1 - t)^2 s^2 + t^2) (x_t - (1 - t) mu), and
the exact velocity is E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t. With it a
correct flow sampler draws from N(mu, s^2) again.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.diffusion import GaussianDiffusion, samplers
from video_diffusion.diffusion.schedule import FlowSchedule

FRAMES, SIZE = 2, 2
NUM = 10000
TIME_SCALE = 1000
MU = np.linspace(-0.4, 0.4, FRAMES * SIZE * SIZE).reshape(FRAMES, SIZE, SIZE, 1)
STD = np.linspace(0.3, 0.6, FRAMES * SIZE * SIZE).reshape(FRAMES, SIZE, SIZE, 1)[::-1]


class ExactVelocity(nnx.Module):
  """Bayes-optimal velocity of N(mu, s^2) data; reads t from the network's time input."""

  def __init__(self, mu, s):
    self.mu, self.s = jnp.asarray(mu), jnp.asarray(s)

  def __call__(self, x, time, cond=None, **kwargs):
    t = (time / TIME_SCALE)[:, None, None, None, None]
    a = 1.0 - t
    x0 = self.mu + a * self.s**2 / (a**2 * self.s**2 + t**2) * (x - a * self.mu)
    return (x - x0) / t

  def forward_with_cond_scale(self, x, time, cond=None, cond_scale=1.0, **kwargs):
    return self(x, time, cond)


def flow_model(mu=MU, s=STD, **kwargs):
  return GaussianDiffusion(
    ExactVelocity(mu, s),
    image_size=SIZE,
    num_frames=FRAMES,
    channels=1,
    timesteps=TIME_SCALE,
    objective='flow',
    **kwargs,
  )


def draw(diffusion, sampler, key=0):
  run = jax.jit(
    lambda key: samplers.sample(
      diffusion, sampler, key, (NUM, FRAMES, SIZE, SIZE, 1), clip_denoised=False
    )
  )
  return np.asarray(run(jax.random.key(key))) * 2 - 1  # back to the data's [-1, 1] scale


@pytest.mark.parametrize('sampler', [samplers.Euler(50), samplers.Heun(20)], ids=['euler', 'heun'])
def test_flow_sampler_draws_the_data_distribution(sampler):
  x = draw(flow_model(), sampler)
  # The tolerances of the Gaussian samplers (tests/diffusion/test_samplers.py).
  # Measured: Euler-50 2.9% on average, Heun-20 0.5%. (A timestep shift of 3
  # ends these grids at a higher noise level, whose x0 estimate shrinks the
  # spread by 5-6%: shift is for large images, where detail survives more noise.)
  ratio = x.std(0) / STD
  np.testing.assert_allclose(x.mean(0), MU, atol=0.025)
  np.testing.assert_allclose(ratio, 1.0, atol=0.10)
  assert abs(ratio - 1).mean() < 0.05


def test_the_check_catches_a_wrong_velocity():
  """Guards the test above: the velocity of data twice as wide gives the wrong spread."""
  x = draw(flow_model(s=STD * 2), samplers.Euler(20))
  assert abs(x.std(0) - STD).mean() > 0.05


def test_heun_is_closer_than_euler_at_equal_steps():
  """Second order: with few steps Heun's spread is nearer the data's than Euler's."""
  euler = abs(draw(flow_model(), samplers.Euler(4)).std(0) / STD - 1).mean()
  heun = abs(draw(flow_model(), samplers.Heun(4)).std(0) / STD - 1).mean()
  assert heun < 0.6 * euler, (heun, euler)  # measured 0.17 against 0.34


def test_heun_visits_each_inner_time_twice_and_ends_on_the_data():
  times = samplers.Heun(4).timesteps(TIME_SCALE)
  np.testing.assert_allclose(times, [1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0])
  assert len(times) - 1 == 2 * 4 - 1  # model calls
  np.testing.assert_allclose(samplers.Euler(4).timesteps(TIME_SCALE), [1, 0.75, 0.5, 0.25, 0])


def test_velocity_target_and_predict_start_invert_each_other():
  diffusion = flow_model(time_shift=2.0)
  keys = jax.random.split(jax.random.key(1), 2)
  x_start = jax.random.normal(keys[0], (3, FRAMES, SIZE, SIZE, 1))
  noise = jax.random.normal(keys[1], x_start.shape)
  u = jnp.array([0.1, 0.5, 0.9])
  t = 2 * u / (1 + u)
  x_t = diffusion.q_sample(x_start, u, noise)
  np.testing.assert_allclose(
    x_t, (1 - t)[:, None, None, None, None] * x_start + t[:, None, None, None, None] * noise
  )
  target = diffusion.training_target(x_start, u, noise)
  np.testing.assert_allclose(target, noise - x_start)
  np.testing.assert_allclose(diffusion.predict_start(x_t, u, target), x_start, atol=1e-5)


def test_time_sampling_uniform_and_logit_normal():
  key = jax.random.key(3)
  uniform = np.asarray(FlowSchedule().sample_times(key, (20000,)))
  assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
  logit = FlowSchedule(time_sampling='logit_normal', logit_normal_mean=0.5, logit_normal_scale=0.8)
  u = np.asarray(logit.sample_times(key, (20000,)))
  z = np.log(u / (1 - u))
  assert abs(z.mean() - 0.5) < 0.02 and abs(z.std() - 0.8) < 0.02
  np.testing.assert_allclose(
    FlowSchedule(shift=3.0).noise_level(jnp.array([0, 0.5, 1])), [0, 0.75, 1]
  )


def test_exact_velocity_has_the_least_loss():
  diffusion = flow_model(loss_type='l2')
  x_start = jnp.asarray(MU)[None] + jnp.zeros((4, 1, 1, 1, 1))
  noise = jnp.zeros_like(x_start)
  u = jnp.array([0.1, 0.3, 0.6, 0.9])
  # At the data's mean with no noise the exact velocity is -mu... and the target -mu too.
  assert float(diffusion.p_losses(x_start, u, noise)) < 1e-8


def test_samplers_refuse_the_other_process():
  with pytest.raises(ValueError, match='the ddim sampler cannot sample a flow-matching model'):
    samplers.get_sampler('ddim', 1000, flow=True)
  with pytest.raises(ValueError, match='the euler sampler cannot sample a Gaussian model'):
    samplers.get_sampler('euler', 1000)
  assert samplers.get_sampler(None, 1000, flow=True) == samplers.Euler(50)
  assert samplers.get_sampler('heun', 1000, 8, flow=True) == samplers.Heun(8)
  with pytest.raises(ValueError, match='cannot sample a flow-matching model.*: use euler or heun'):
    flow_model().sample(jax.random.key(0), batch_size=1, sampler=samplers.DDIM(5))


def test_flow_refuses_min_snr_weighting():
  with pytest.raises(ValueError, match="loss_weighting='min_snr' is for the Gaussian"):
    flow_model(loss_weighting='min_snr')
