"""Samplers on an analytic case: Gaussian data, whose exact denoiser has a closed form.

For x0 ~ N(mu, s^2) per pixel and x_t = a x0 + sigma eps (a^2 = alpha_bar_t,
sigma^2 = 1 - a^2), E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu).
With that denoiser a correct sampler draws from N(mu, s^2) again, whatever the
objective (eps, x0 or v) the denoiser reports in.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from video_diffusion.diffusion import GaussianDiffusion, samplers
from video_diffusion.diffusion.schedule import cosine_beta_schedule, schedule_buffers

# Compiled with XLA's optimisations (tests/conftest.py): the 1000-step DDPM runs take
# half the time fused, and these tiny graphs compile quickly either way.
pytestmark = pytest.mark.optimized

FRAMES, SIZE = 2, 2
TIMESTEPS = 1000
NUM = 10000


class ExactDenoiser(nnx.Module):
  """Bayes-optimal denoiser of N(mu, s^2) data, or of videos whose frames all
  equal one N(mu, s^2) image (`tied_frames`), reporting in `objective`."""

  def __init__(self, mu, s, objective, alphas_cumprod, tied_frames=False):
    self.mu, self.s = jnp.asarray(mu), jnp.asarray(s)
    self.objective = objective
    self.alphas_cumprod = jnp.asarray(alphas_cumprod)
    self.tied_frames = tied_frames

  def __call__(self, x, t, cond=None, **kwargs):
    a2 = self.alphas_cumprod[t][:, None, None, None, None]
    a, var = jnp.sqrt(a2), 1.0 - a2
    frames = x.shape[1] if self.tied_frames else 1
    obs = x.mean(1, keepdims=True) if self.tied_frames else x
    x0 = self.mu + a * self.s**2 / (a2 * self.s**2 + var / frames) * (obs - a * self.mu)
    x0 = jnp.broadcast_to(x0, x.shape)
    eps = (x - a * x0) / jnp.sqrt(var)
    return {'eps': eps, 'x0': x0, 'v': a * eps - jnp.sqrt(var) * x0}[self.objective]

  def forward_with_cond_scale(self, x, t, cond=None, cond_scale=1.0, **kwargs):
    return self(x, t, cond)


ALPHAS_CUMPROD = schedule_buffers(cosine_beta_schedule(TIMESTEPS))['alphas_cumprod']


def gaussian_diffusion(objective, mu, s, tied_frames=False, **kwargs):
  denoiser = ExactDenoiser(mu, s, objective, ALPHAS_CUMPROD, tied_frames)
  return GaussianDiffusion(
    denoiser,
    image_size=SIZE,
    num_frames=FRAMES,
    channels=1,
    timesteps=TIMESTEPS,
    objective=objective,
    **kwargs,
  )


MU = np.linspace(-0.4, 0.4, FRAMES * SIZE * SIZE).reshape(FRAMES, SIZE, SIZE, 1)
STD = np.linspace(0.3, 0.6, FRAMES * SIZE * SIZE).reshape(FRAMES, SIZE, SIZE, 1)[::-1]

SAMPLERS = {
  'ddpm-1000': samplers.DDPM(),
  'ddim-50': samplers.DDIM(50),
  'ddim-100-eta1': samplers.DDIM(100, eta=1.0),
  'dpmpp-20': samplers.DPMSolverPP(20),
}


@pytest.mark.parametrize('objective', ['eps', 'x0', 'v'])
@pytest.mark.parametrize(
  'name',
  [
    pytest.param(name, marks=pytest.mark.slow) if name.startswith('ddpm') else name
    for name in SAMPLERS
  ],
)  # the 1000-step DDPM runs are slow: left out of `make test-fast`
def test_sampler_draws_the_data_distribution(objective, name):
  diffusion = gaussian_diffusion(objective, MU, STD)
  run = jax.jit(
    lambda key: samplers.sample(
      diffusion, SAMPLERS[name], key, (NUM, FRAMES, SIZE, SIZE, 1), clip_denoised=False
    )
  )
  x = np.asarray(run(jax.random.key(0))) * 2 - 1  # back to the data's [-1, 1] scale
  # Standard errors over 10000 draws: mean <= 0.6 / 100 = 0.006, std <= 0.6 / 141 = 0.0042.
  # Tolerance: mean within 0.025 per pixel; std within 10% per pixel, 5% on average
  # (measured: DDPM-1000 0.5% on average, DPM-Solver++-20 1%, DDIM-50 3%, DDIM-100 eta 1 4%).
  ratio = x.std(0) / STD
  np.testing.assert_allclose(x.mean(0), MU, atol=0.025)
  np.testing.assert_allclose(ratio, 1.0, atol=0.10)
  assert abs(ratio - 1).mean() < 0.05


def test_the_check_catches_a_wrong_denoiser():
  """Guards the test above: a denoiser of data twice as wide gives the wrong spread."""
  diffusion = gaussian_diffusion('x0', MU, STD * 2)
  x = (
    np.asarray(
      jax.jit(
        lambda key: samplers.sample(
          diffusion, samplers.DDIM(20), key, (NUM, FRAMES, SIZE, SIZE, 1), clip_denoised=False
        )
      )(jax.random.key(0))
    )
    * 2
    - 1
  )
  assert abs(x.std(0) - STD).mean() > 0.05


@pytest.mark.parametrize('objective', ['eps', 'x0', 'v'])
def test_training_target_and_predict_start_invert_each_other(objective):
  diffusion = gaussian_diffusion(objective, MU, STD)
  keys = jax.random.split(jax.random.key(1), 2)
  x_start = jax.random.normal(keys[0], (3, FRAMES, SIZE, SIZE, 1))
  noise = jax.random.normal(keys[1], x_start.shape)
  t = jnp.array([0, 50, 99])
  x_t = diffusion.q_sample(x_start, t, noise)
  target = diffusion.training_target(x_start, t, noise)
  np.testing.assert_allclose(diffusion.predict_start(x_t, t, target), x_start, atol=2e-3)


def test_min_snr_weights_follow_hang_et_al():
  t = jnp.array([0, 30, 60, 99])
  for objective in ('eps', 'x0', 'v'):
    diffusion = gaussian_diffusion(objective, MU, STD, loss_weighting='min_snr', min_snr_gamma=5.0)
    a = np.asarray(diffusion.alphas_cumprod[...], np.float64)[np.asarray(t)]
    snr = a / (1 - a)
    expected = {
      'eps': np.minimum(snr, 5) / snr,
      'x0': np.minimum(snr, 5),
      'v': np.minimum(snr, 5) / (snr + 1),
    }[objective]
    np.testing.assert_allclose(diffusion.loss_weight(t), expected, rtol=1e-4)
  plain = gaussian_diffusion('eps', MU, STD)
  np.testing.assert_array_equal(plain.loss_weight(t), np.ones(4))


def test_exact_denoiser_has_zero_loss_in_every_objective():
  for objective in ('eps', 'x0', 'v'):
    diffusion = gaussian_diffusion(objective, MU, STD, loss_type='l2')
    x_start = jnp.asarray(MU)[None] + jnp.zeros((4, 1, 1, 1, 1))  # the mean: no x0 error
    t = jnp.array([0, 10, 50, 99])
    noise = jnp.zeros_like(x_start)
    assert float(diffusion.p_losses(x_start, t, noise)) < 1e-8


def tied(std=0.3):
  """Videos whose two frames are one N(0.2, std^2) image."""
  mu = np.full((FRAMES, SIZE, SIZE, 1), 0.2)
  return gaussian_diffusion('eps', mu, np.full_like(mu, std), tied_frames=True)


def test_known_frames_come_back_exactly_and_condition_the_others():
  diffusion = tied()
  known = np.zeros((NUM, FRAMES, SIZE, SIZE, 1), np.float32)
  known[:, 0] = np.linspace(0.2, 0.8, NUM)[:, None, None, None]  # [0, 1] scale
  mask = np.zeros((NUM, FRAMES), bool)
  mask[:, 0] = True

  def run(recon_guidance):
    return np.asarray(
      jax.jit(
        lambda key: samplers.sample(
          diffusion,
          samplers.DDIM(25),
          key,
          known.shape,
          known=known,
          frame_mask=mask,
          recon_guidance=recon_guidance,
          clip_denoised=False,
        )
      )(jax.random.key(2))
    )

  plain, guided = run(0.0), run(5.0)
  for out in (plain, guided):
    np.testing.assert_array_equal(out[:, 0], known[:, 0])
  # The true conditional makes frame 1 equal frame 0. Replacement alone gets
  # part of the way; reconstruction guidance (Ho et al. 2022, eq. 7) closer.
  err_plain = np.abs(plain[:, 1] - known[:, 0]).mean()
  err_guided = np.abs(guided[:, 1] - known[:, 0]).mean()
  unconditional = np.abs(
    np.asarray(
      jax.jit(
        lambda key: samplers.sample(
          diffusion, samplers.DDIM(25), key, known.shape, clip_denoised=False
        )
      )(jax.random.key(2))
    )[:, 1]
    - known[:, 0]
  ).mean()
  assert err_guided < 0.5 * err_plain < 0.5 * unconditional, (err_guided, err_plain, unconditional)


def test_sampler_choice_is_checked():
  assert samplers.get_sampler('ddpm', 100) == samplers.DDPM()
  assert samplers.get_sampler('ddim', 100) == samplers.DDIM(50)
  assert samplers.get_sampler('dpmpp', 100, steps=7) == samplers.DPMSolverPP(7)
  with pytest.raises(ValueError, match='ddpm walks all 100 timesteps'):
    samplers.get_sampler('ddpm', 100, steps=10)
  with pytest.raises(ValueError, match=r'steps must be in \[1, 100\]'):
    samplers.get_sampler('ddim', 100, steps=500)
  with pytest.raises(ValueError, match="unknown sampler 'lms'"):
    samplers.get_sampler('lms', 100)
  with pytest.raises(ValueError, match='eta is a setting of the ddim sampler, not of dpmpp'):
    samplers.get_sampler('dpmpp', 100, eta=1.0)


def test_timesteps_are_descending_and_end_without_noise():
  for sampler in (samplers.DDPM(), samplers.DDIM(7), samplers.DPMSolverPP(1)):
    times = sampler.timesteps(TIMESTEPS)
    assert times[0] == TIMESTEPS - 1 and times[-1] == -1
    assert np.all(np.diff(times) < 0)
  assert len(samplers.DDIM(7).timesteps(TIMESTEPS)) == 8
