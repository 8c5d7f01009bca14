"""Gaussian diffusion of video-diffusion-pytorch 0.7.0: schedule, losses, sampling.

Videos are channels-last (batch, frames, height, width, channels). Data in
[0, 1] is normalised to [-1, 1] for training, as in the reference; samples
come back in [0, 1].
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
      'posterior_mean_coef2': ((1.0 - alphas_cumprod_prev) * np.sqrt(alphas)
                               / (1.0 - alphas_cumprod)),
  }
  return {name: value.astype(np.float32) for name, value in buffers.items()}


def normalize_img(x):
  return x * 2 - 1


def unnormalize_img(x):
  return (x + 1) * 0.5


def _extract(buffer: Buffer, t: jax.Array, ndim: int) -> jax.Array:
  """buffer[t] shaped (batch, 1, ..., 1) to broadcast against an ndim-array."""
  return buffer[...][t].reshape((-1,) + (1,) * (ndim - 1))


class GaussianDiffusion(nnx.Module):
  """Wraps a denoiser (Unet3D) with the reference's diffusion process.

  `diffusion(videos, key)` is the training loss for videos in [0, 1] of shape
  (batch, num_frames, image_size, image_size, channels).
  """

  def __init__(self, denoise_fn: nnx.Module, *, image_size: int, num_frames: int,
               channels: int = 3, timesteps: int = 1000, loss_type: str = 'l1',
               beta_schedule: str = 'cosine', use_dynamic_thres: bool = False,
               dynamic_thres_percentile: float = 0.9, text_use_bert_cls: bool = False):
    if loss_type not in ('l1', 'l2'):
      raise ValueError(f"loss_type={loss_type!r}: use 'l1' or 'l2'.")
    if beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f'beta_schedule={beta_schedule!r}: use one of {sorted(BETA_SCHEDULES)}.')
    self.denoise_fn = denoise_fn
    self.image_size = image_size
    self.num_frames = num_frames
    self.channels = channels
    self.num_timesteps = int(timesteps)
    self.loss_type = loss_type
    self.use_dynamic_thres = use_dynamic_thres
    self.dynamic_thres_percentile = dynamic_thres_percentile
    self.text_use_bert_cls = text_use_bert_cls
    for name, value in schedule_buffers(BETA_SCHEDULES[beta_schedule](timesteps)).items():
      setattr(self, name, Buffer(jnp.asarray(value)))

  @property
  def video_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of one video."""
    return (self.num_frames, self.image_size, self.image_size, self.channels)

  def q_mean_variance(self, x_start, t):
    n = x_start.ndim
    return (_extract(self.sqrt_alphas_cumprod, t, n) * x_start,
            1.0 - _extract(self.alphas_cumprod, t, n),
            _extract(self.log_one_minus_alphas_cumprod, t, n))

  def q_sample(self, x_start, t, noise):
    """Diffuses x_start (in [-1, 1]) to time t with the given noise."""
    n = x_start.ndim
    return (_extract(self.sqrt_alphas_cumprod, t, n) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, n) * noise)

  def predict_start_from_noise(self, x_t, t, noise):
    n = x_t.ndim
    return (_extract(self.sqrt_recip_alphas_cumprod, t, n) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, n) * noise)

  def q_posterior(self, x_start, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    n = x_t.ndim
    mean = (_extract(self.posterior_mean_coef1, t, n) * x_start
            + _extract(self.posterior_mean_coef2, t, n) * x_t)
    return (mean, _extract(self.posterior_variance, t, n),
            _extract(self.posterior_log_variance_clipped, t, n))

  def clip_x0(self, x_recon):
    """Static clipping to [-1, 1], or dynamic thresholding (Imagen) if configured."""
    if not self.use_dynamic_thres:
      return jnp.clip(x_recon, -1.0, 1.0)
    flat = jnp.abs(x_recon.reshape(x_recon.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, self.dynamic_thres_percentile, axis=-1), 1.0)
    s = s.reshape((-1,) + (1,) * (x_recon.ndim - 1))
    return jnp.clip(x_recon, -s, s) / s

  def p_mean_variance(self, x, t, *, clip_denoised: bool = True, cond=None,
                      cond_scale: float = 1.0):
    """Model mean, posterior variance and log-variance of p(x_{t-1} | x_t)."""
    eps = self.denoise_fn.forward_with_cond_scale(x, t, cond=cond, cond_scale=cond_scale)
    x_recon = self.predict_start_from_noise(x, t, eps)
    if clip_denoised:
      x_recon = self.clip_x0(x_recon)
    return self.q_posterior(x_recon, x, t)

  def p_sample(self, x, t, key, *, cond=None, cond_scale: float = 1.0,
               clip_denoised: bool = True):
    """One ancestral step x_t -> x_{t-1}; no noise where t == 0."""
    mean, _, log_variance = self.p_mean_variance(
        x, t, clip_denoised=clip_denoised, cond=cond, cond_scale=cond_scale)
    noise = jax.random.normal(key, x.shape, x.dtype)
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return mean + nonzero * jnp.exp(0.5 * log_variance) * noise

  def _denoise_from(self, img, start_t: int, key, cond=None, cond_scale: float = 1.0):
    """Ancestral steps from time start_t - 1 down to 0 in one compiled loop."""
    batch = img.shape[0]

    def step(i, carry):
      x, k = carry
      k, step_key = jax.random.split(k)
      t = jnp.full((batch,), start_t - 1 - i, jnp.int32)
      return self.p_sample(x, t, step_key, cond=cond, cond_scale=cond_scale), k

    img, _ = jax.lax.fori_loop(0, start_t, step, (img, key))
    return img

  def p_sample_loop(self, shape, key, *, cond=None, cond_scale: float = 1.0):
    """Full ancestral sampling from pure noise; returns videos in [0, 1]."""
    noise_key, loop_key = jax.random.split(key)
    img = jax.random.normal(noise_key, shape)
    return unnormalize_img(self._denoise_from(img, self.num_timesteps, loop_key,
                                              cond, cond_scale))

  def sample(self, key, *, cond=None, cond_scale: float = 1.0, batch_size: int = 16):
    """Samples videos (batch, frames, size, size, channels) in [0, 1]."""
    batch_size = cond.shape[0] if cond is not None else batch_size
    return self.p_sample_loop((batch_size,) + self.video_shape, key,
                              cond=cond, cond_scale=cond_scale)

  def interpolate(self, x1, x2, key, *, t: int | None = None, lam: float = 0.5):
    """Mixes two videos (in [-1, 1]) diffused to time t and denoises the mix."""
    if x1.shape != x2.shape:
      raise ValueError(f'interpolate needs equal shapes, got {x1.shape} and {x2.shape}.')
    t = self.num_timesteps - 1 if t is None else t
    k1, k2, loop_key = jax.random.split(key, 3)
    t_batched = jnp.full((x1.shape[0],), t, jnp.int32)
    xt1 = self.q_sample(x1, t_batched, jax.random.normal(k1, x1.shape))
    xt2 = self.q_sample(x2, t_batched, jax.random.normal(k2, x2.shape))
    return self._denoise_from((1 - lam) * xt1 + lam * xt2, t, loop_key)

  def p_losses(self, x_start, t, noise, *, cond=None, key=None, **kwargs):
    """Loss of the denoiser at times t for x_start in [-1, 1] and the given noise."""
    x_noisy = self.q_sample(x_start, t, noise)
    x_recon = self.denoise_fn(x_noisy, t, cond, key=key, **kwargs)
    diff = noise - x_recon
    return jnp.mean(jnp.abs(diff) if self.loss_type == 'l1' else jnp.square(diff))

  def __call__(self, x, key, *, cond=None, **kwargs):
    """Training loss for videos x in [0, 1] at random times with random noise."""
    expected = self.video_shape
    if x.ndim != 5 or tuple(x.shape[1:]) != expected:
      raise ValueError(f'videos must be (batch, {", ".join(map(str, expected))}) '
                       f'(batch, frames, height, width, channels); got {tuple(x.shape)}.')
    t_key, noise_key, model_key = jax.random.split(key, 3)
    t = jax.random.randint(t_key, (x.shape[0],), 0, self.num_timesteps)
    noise = jax.random.normal(noise_key, x.shape, x.dtype)
    return self.p_losses(normalize_img(x), t, noise, cond=cond, key=model_key, **kwargs)
