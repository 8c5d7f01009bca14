"""The noise schedule of the reference: betas, their cumulative products and
the forward and posterior processes built on them.

`NoiseSchedule(name, timesteps)` holds the reference's buffers (computed in
float64, stored float32) and answers the questions the loss and the samplers
ask at integer times t (batch,). A new schedule is one function added to
BETA_SCHEDULES.
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
