"""Noise schedules: how a clean video x0 is noised to time t, and what the loss
and the samplers ask of it.

`NoiseSchedule(name, timesteps)` is the reference's discrete schedule: betas,
their cumulative products (buffers computed in float64, stored float32) and the
forward and posterior processes, at integer times t (batch,). A new beta
schedule is one function added to BETA_SCHEDULES.

`FlowSchedule` is flow matching's (rectified flow): x_t = (1 - t) x0 + t eps at
continuous times in [0, 1]. A new way to draw training times is one function
added to TIME_SAMPLINGS.

Both answer `sample_times` (training times), `model_time` (the network's time
input), `q_sample` and `signal_scale`; `continuous` says which samplers fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> np.ndarray:
  """Cosine schedule (Nichol & Dhariwal), float64, betas clipped to 0.9999."""
  x = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
  alphas_cumprod = np.cos(((x / timesteps) + s) / (1 + s) * np.pi * 0.5) ** 2
  alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
  betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
  return np.clip(betas, 0, 0.9999)


def linear_beta_schedule(timesteps: int) -> np.ndarray:
  """Linear schedule of DDPM (1e-4 to 0.02 at 1000 steps, rescaled), float64."""
  scale = 1000 / timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)


BETA_SCHEDULES = {'cosine': cosine_beta_schedule, 'linear': linear_beta_schedule}


BUFFER_NAMES = (
  'betas',
  'alphas_cumprod',
  'alphas_cumprod_prev',
  'sqrt_alphas_cumprod',
  'sqrt_one_minus_alphas_cumprod',
  'log_one_minus_alphas_cumprod',
  'sqrt_recip_alphas_cumprod',
  'sqrt_recipm1_alphas_cumprod',
  'posterior_variance',
  'posterior_log_variance_clipped',
  'posterior_mean_coef1',
  'posterior_mean_coef2',
)


class Buffer(nnx.Variable):
  """A constant array of the model state (not trained)."""


def schedule_buffers(betas: np.ndarray) -> dict[str, np.ndarray]:
  """The reference's registered buffers, computed in float64, cast to float32."""
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  buffers = {
    'betas': betas,
    'alphas_cumprod': alphas_cumprod,
    'alphas_cumprod_prev': alphas_cumprod_prev,
    'sqrt_alphas_cumprod': np.sqrt(alphas_cumprod),
    'sqrt_one_minus_alphas_cumprod': np.sqrt(1.0 - alphas_cumprod),
    'log_one_minus_alphas_cumprod': np.log(1.0 - alphas_cumprod),
    'sqrt_recip_alphas_cumprod': np.sqrt(1.0 / alphas_cumprod),
    'sqrt_recipm1_alphas_cumprod': np.sqrt(1.0 / alphas_cumprod - 1),
    'posterior_variance': posterior_variance,
    'posterior_log_variance_clipped': np.log(np.maximum(posterior_variance, 1e-20)),
    'posterior_mean_coef1': betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
    'posterior_mean_coef2': (
      (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
    ),
  }
  return {name: value.astype(np.float32) for name, value in buffers.items()}


class NoiseSchedule(nnx.Module):
  """A discrete variance-preserving schedule: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
  with a_t = alphas_cumprod[t], t in [0, num_timesteps)."""

  continuous = False

  def __init__(self, name: str = 'cosine', timesteps: int = 1000):
    if name not in BETA_SCHEDULES:
      raise ValueError(f'beta_schedule={name!r}: use one of {sorted(BETA_SCHEDULES)}.')
    self.num_timesteps = int(timesteps)
    for key, value in schedule_buffers(BETA_SCHEDULES[name](timesteps)).items():
      setattr(self, key, Buffer(jnp.asarray(value)))

  def at(self, name: str, t: jax.Array, ndim: int) -> jax.Array:
    """Buffer `name` at times t (batch,), shaped (batch, 1, ..., 1) for ndim-arrays."""
    return getattr(self, name)[...][t].reshape((-1,) + (1,) * (ndim - 1))

  def alpha_bar(self, t: jax.Array) -> jax.Array:
    """Cumulative alpha at integer times t; 1 (no noise) at t = -1."""
    return jnp.where(t >= 0, self.alphas_cumprod[...][jnp.maximum(t, 0)], 1.0)

  def sample_times(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Training times: integers uniform in [0, num_timesteps)."""
    return jax.random.randint(key, shape, 0, self.num_timesteps)

  def model_time(self, t: jax.Array) -> jax.Array:
    """The network's time input: the integer time itself, as the reference."""
    return t

  def signal_scale(self, t: jax.Array) -> jax.Array:
    """The factor of x0 in x_t: sqrt(alpha_bar_t)."""
    return jnp.sqrt(self.alpha_bar(t))

  def snr(self, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio a_t / (1 - a_t) at times t (batch,)."""
    alpha_bar = self.alphas_cumprod[...][t]
    return alpha_bar / (1.0 - alpha_bar)

  def q_sample(self, x_start, t, noise):
    """Diffuses x_start (in [-1, 1]) to time t with the given noise."""
    n = x_start.ndim
    return (
      self.at('sqrt_alphas_cumprod', t, n) * x_start
      + self.at('sqrt_one_minus_alphas_cumprod', t, n) * noise
    )

  def q_posterior(self, x_start, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (
      self.at('posterior_mean_coef1', t, n) * x_start + self.at('posterior_mean_coef2', t, n) * x_t
    )
    return (
      mean,
      self.at('posterior_variance', t, n),
      self.at('posterior_log_variance_clipped', t, n),
    )


def _uniform_times(key, shape, mean, scale):
  return jax.random.uniform(key, shape)


def _logit_normal_times(key, shape, mean, scale):
  """sigmoid(N(mean, scale^2)): denser at mid noise (Esser et al. 2024)."""
  return jax.nn.sigmoid(mean + scale * jax.random.normal(key, shape))


# name -> (key, shape, mean, scale) -> training times in [0, 1]
TIME_SAMPLINGS = {'uniform': _uniform_times, 'logit_normal': _logit_normal_times}


class FlowSchedule(nnx.Module):
  """Flow matching: x_t = (1 - t) x0 + t eps, from clean data at t = 0 to noise at 1.

  Times passed around (drawn for the loss, visited by the samplers) are u in
  [0, 1]; the noise level is t = shift u / (1 + (shift - 1) u), the timestep
  shift of Esser et al. 2024 (shift > 1 spends more time at high noise; 1 is
  the identity). The network sees t * time_scale, the range of the Gaussian
  models' integer times.
  """

  continuous = True

  def __init__(
    self,
    time_scale: int = 1000,
    time_sampling: str = 'uniform',
    logit_normal_mean: float = 0.0,
    logit_normal_scale: float = 1.0,
    shift: float = 1.0,
  ):
    if time_sampling not in TIME_SAMPLINGS:
      raise ValueError(f'time_sampling={time_sampling!r}: use one of {", ".join(TIME_SAMPLINGS)}.')
    if shift <= 0:
      raise ValueError(f'time_shift must be > 0, got {shift}.')
    self.num_timesteps = int(time_scale)
    self.time_sampling = time_sampling
    self.logit_normal_mean = float(logit_normal_mean)
    self.logit_normal_scale = float(logit_normal_scale)
    self.shift = float(shift)

  def noise_level(self, u: jax.Array) -> jax.Array:
    """The noise level t of time u (the timestep shift)."""
    u = jnp.asarray(u, jnp.float32)
    return self.shift * u / (1.0 + (self.shift - 1.0) * u)

  def level_at(self, u: jax.Array, ndim: int) -> jax.Array:
    """noise_level(u) for u (batch,), shaped (batch, 1, ..., 1) for ndim-arrays."""
    return self.noise_level(u).reshape((-1,) + (1,) * (ndim - 1))

  def sample_times(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Training times u in [0, 1] drawn as time_sampling says."""
    draw = TIME_SAMPLINGS[self.time_sampling]
    return draw(key, shape, self.logit_normal_mean, self.logit_normal_scale)

  def model_time(self, u: jax.Array) -> jax.Array:
    """The network's time input: the noise level times time_scale."""
    return self.noise_level(u) * self.num_timesteps

  def signal_scale(self, u: jax.Array) -> jax.Array:
    """The factor of x0 in x_t: 1 - t."""
    return 1.0 - self.noise_level(u)

  def q_sample(self, x_start, u, noise):
    """Moves x_start (in [-1, 1]) toward the noise to time u."""
    t = self.level_at(u, x_start.ndim)
    return (1.0 - t) * x_start + t * noise
