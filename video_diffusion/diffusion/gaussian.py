"""Gaussian diffusion of video-diffusion-pytorch 0.7.0: schedule, targets, losses.

Videos are channels-last (batch, frames, height, width, channels). Data in
[0, 1] is normalised to [-1, 1] for training, as in the reference; samples
come back in [0, 1]. Beyond the reference: the network may predict eps, x0
or v, or be trained by flow matching (objective 'flow', on a FlowSchedule);
the loss may be min-SNR weighted; and with frame_conditioning one model
learns generation, prediction and interpolation (known frames are given clean
with a mask channel; the loss is on the other frames). The sampling loops are
in video_diffusion.diffusion.samplers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from video_diffusion.config import registry
from video_diffusion.diffusion import samplers
from video_diffusion.diffusion.objectives import LOSS_WEIGHTINGS, LOSSES, get_objective
from video_diffusion.diffusion.pixels import normalize_img
from video_diffusion.diffusion.schedule import BUFFER_NAMES, FlowSchedule, NoiseSchedule


class GaussianDiffusion(nnx.Module):
  """Wraps a denoiser (Unet3D) with the reference's diffusion process.

  `diffusion(videos, key)` is the training loss for videos in [0, 1] of shape
  (batch, num_frames, image_size, image_size, channels). objective 'flow'
  trains by flow matching on a FlowSchedule (time_sampling, logit_normal_mean,
  logit_normal_scale, time_shift; timesteps is then the scale of the network's
  time input). With frame_conditioning the denoiser takes channels + 1 input channels (the
  video with known frames clean, then the mask).
  """

  def __init__(
    self,
    denoise_fn: nnx.Module,
    *,
    image_size: int,
    num_frames: int,
    channels: int = 3,
    timesteps: int = 1000,
    loss_type: str = 'l1',
    beta_schedule: str = 'cosine',
    use_dynamic_thres: bool = False,
    dynamic_thres_percentile: float = 0.9,
    text_use_bert_cls: bool = False,
    objective: str = 'eps',
    loss_weighting: str = 'none',
    min_snr_gamma: float = 5.0,
    frame_conditioning: bool = False,
    time_sampling: str = 'uniform',
    logit_normal_mean: float = 0.0,
    logit_normal_scale: float = 1.0,
    time_shift: float = 1.0,
    clip_denoised: bool = True,
  ):
    if loss_type not in LOSSES:
      raise ValueError(f'loss_type={loss_type!r}: use one of {", ".join(LOSSES)}.')
    if loss_weighting not in LOSS_WEIGHTINGS:
      raise ValueError(
        f'loss_weighting={loss_weighting!r}: use one of {", ".join(LOSS_WEIGHTINGS)}.'
      )
    self.denoise_fn = denoise_fn
    self.image_size = image_size
    self.num_frames = num_frames
    self.channels = channels
    self.objective = get_objective(objective)
    if self.objective.continuous:
      if not registry.LOSS_WEIGHTINGS[loss_weighting].flow:
        fits = ' or '.join(repr(n) for n, w in registry.LOSS_WEIGHTINGS.items() if w.flow)
        raise ValueError(
          f'loss_weighting={loss_weighting!r} is for the Gaussian objectives; '
          f'flow matching weighs its times through time_sampling: use {fits}.'
        )
      self.schedule = FlowSchedule(
        timesteps, time_sampling, logit_normal_mean, logit_normal_scale, time_shift
      )
    else:
      self.schedule = NoiseSchedule(beta_schedule, timesteps)
    self.num_timesteps = self.schedule.num_timesteps
    self.loss_type = loss_type
    self.use_dynamic_thres = use_dynamic_thres
    self.dynamic_thres_percentile = dynamic_thres_percentile
    self.text_use_bert_cls = text_use_bert_cls
    self.loss_weighting = loss_weighting
    self.min_snr_gamma = float(min_snr_gamma)
    self.frame_conditioning = frame_conditioning
    self.clip_denoised = clip_denoised

  @property
  def video_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of one video."""
    return (self.num_frames, self.image_size, self.image_size, self.channels)

  @property
  def is_flow(self) -> bool:
    """True for a flow-matching model (continuous times in [0, 1])."""
    return self.schedule.continuous

  def alpha_bar(self, t: jax.Array) -> jax.Array:
    """Cumulative alpha at integer times t; 1 (no noise) at t = -1."""
    return self.schedule.alpha_bar(t)

  def q_sample(self, x_start, t, noise):
    """Noises x_start (in [-1, 1]) to time t with the given noise."""
    return self.schedule.q_sample(x_start, t, noise)

  def q_posterior(self, x_start, x_t, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    return self.schedule.q_posterior(x_start, x_t, t)

  def predict_start(self, x_t, t, model_output):
    """x0 from the network's output under the configured objective."""
    return self.objective.predict_start(self.schedule, x_t, t, model_output)

  def training_target(self, x_start, t, noise):
    """What the network should output for x_start noised with `noise` at time t."""
    return self.objective.target(self.schedule, x_start, t, noise)

  def loss_weight(self, t):
    """Per-example loss weights (batch,) of the configured loss weighting."""
    return LOSS_WEIGHTINGS[self.loss_weighting](
      self.objective, self.schedule, t, self.min_snr_gamma
    )

  def clip_x0(self, x_recon):
    """Static clipping to [-1, 1], or dynamic thresholding (Imagen) if configured;
    none for a model of unbounded values (clip_denoised=False: latents)."""
    if not self.clip_denoised:
      return x_recon
    if not self.use_dynamic_thres:
      return jnp.clip(x_recon, -1.0, 1.0)
    flat = jnp.abs(x_recon.reshape(x_recon.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, self.dynamic_thres_percentile, axis=-1), 1.0)
    s = s.reshape((-1,) + (1,) * (x_recon.ndim - 1))
    return jnp.clip(x_recon, -s, s) / s

  def model_input(self, x_t, known=None, frame_mask=None):
    """The denoiser's input: x_t, or with frame_conditioning the known frames
    (frame_mask (batch, frames) True) clean in x_t plus a mask channel."""
    if not self.frame_conditioning:
      if frame_mask is not None:
        raise ValueError(
          'known frames need a model trained with diffusion.frame_conditioning '
          '(or sampling by replacement; see video_diffusion.diffusion.samplers)'
        )
      return x_t
    if frame_mask is None:
      frame_mask = jnp.zeros(x_t.shape[:2], bool)
      known = jnp.zeros_like(x_t)
    m = frame_mask[:, :, None, None, None]
    x = jnp.where(m, known, x_t)
    return jnp.concatenate([x, jnp.broadcast_to(m, x.shape[:-1] + (1,)).astype(x.dtype)], -1)

  def denoise(
    self,
    x_t,
    t,
    *,
    cond=None,
    cond_scale: float = 1.0,
    known=None,
    frame_mask=None,
    clip_denoised: bool = True,
    **kwargs,
  ):
    """The model's x0 estimate at x_t (clipped as configured); known frames as given."""
    out = self.denoise_fn.forward_with_cond_scale(
      self.model_input(x_t, known, frame_mask),
      self.schedule.model_time(t),
      cond=cond,
      cond_scale=cond_scale,
      **kwargs,
    )
    x_recon = self.predict_start(x_t, t, out)
    if clip_denoised:
      x_recon = self.clip_x0(x_recon)
    if frame_mask is not None:
      x_recon = jnp.where(frame_mask[:, :, None, None, None], known, x_recon)
    return x_recon

  def p_mean_variance(
    self, x, t, *, clip_denoised: bool = True, cond=None, cond_scale: float = 1.0
  ):
    """Model mean, posterior variance and log-variance of p(x_{t-1} | x_t)."""
    x_recon = self.denoise(x, t, cond=cond, cond_scale=cond_scale, clip_denoised=clip_denoised)
    return self.q_posterior(x_recon, x, t)

  def sample(
    self, key, *, cond=None, cond_scale: float = 1.0, batch_size: int = 16, sampler=None, **kwargs
  ):
    """Samples videos (batch, frames, size, size, channels) in [0, 1] with `sampler`
    (default: the reference's ancestral DDPM over all timesteps, or Euler for a
    flow model); kwargs go to samplers.sample (known frames, reconstruction guidance)."""
    batch_size = cond.shape[0] if cond is not None else batch_size
    return samplers.sample(
      self,
      sampler or samplers.default_sampler(self.is_flow),
      key,
      (batch_size,) + self.video_shape,
      cond=cond,
      cond_scale=cond_scale,
      **kwargs,
    )

  def interpolate(self, x1, x2, key, *, t: int | None = None, lam: float = 0.5):
    """The reference's interpolate: mixes two videos (in [-1, 1]) diffused to
    time t and denoises the mix ancestrally; returns [-1, 1]."""
    if self.is_flow:
      raise ValueError('interpolate walks the Gaussian DDPM; this is a flow-matching model.')
    if x1.shape != x2.shape:
      raise ValueError(f'interpolate needs equal shapes, got {x1.shape} and {x2.shape}.')
    t = self.num_timesteps - 1 if t is None else t
    k1, k2, loop_key = jax.random.split(key, 3)
    t_batched = jnp.full((x1.shape[0],), t, jnp.int32)
    xt1 = self.q_sample(x1, t_batched, jax.random.normal(k1, x1.shape))
    xt2 = self.q_sample(x2, t_batched, jax.random.normal(k2, x2.shape))
    mixed = (1 - lam) * xt1 + lam * xt2
    return samplers.sample_loop(
      self.schedule, samplers.DDPM(start=t), mixed, loop_key, samplers.make_denoiser(self)
    )

  def p_losses(self, x_start, t, noise, *, cond=None, key=None, frame_mask=None, **kwargs):
    """Loss of the denoiser at times t for x_start in [-1, 1] and the given noise.

    frame_mask (batch, frames), with frame_conditioning: True frames are given
    clean and left out of the loss. The loss is the mean over the other
    elements of each video, weighted per video (loss_weighting), averaged.
    """
    x_noisy = self.q_sample(x_start, t, noise)
    model_in = self.model_input(x_noisy, x_start, frame_mask)
    out = self.denoise_fn(model_in, self.schedule.model_time(t), cond, key=key, **kwargs)
    diff = self.training_target(x_start, t, noise) - out
    err = LOSSES[self.loss_type](diff)
    err = err.reshape(err.shape[:2] + (-1,)).mean(-1)  # (batch, frames)
    if frame_mask is None:
      per_video = err.mean(-1)
    else:
      free = (~frame_mask).astype(err.dtype)
      per_video = (err * free).sum(-1) / jnp.maximum(free.sum(-1), 1.0)
    return jnp.mean(per_video * self.loss_weight(t))

  def __call__(self, x, key, *, cond=None, **kwargs):
    """Training loss for videos x in [0, 1] at random times with random noise."""
    expected = self.video_shape
    if x.ndim != 5 or tuple(x.shape[1:]) != expected:
      raise ValueError(
        f'videos must be (batch, {", ".join(map(str, expected))}) '
        f'(batch, frames, height, width, channels); got {tuple(x.shape)}.'
      )
    t_key, noise_key, model_key = jax.random.split(key, 3)
    t = self.schedule.sample_times(t_key, (x.shape[0],))
    noise = jax.random.normal(noise_key, x.shape, x.dtype)
    return self.p_losses(normalize_img(x), t, noise, cond=cond, key=model_key, **kwargs)


# The reference's buffers stay readable on the model (diffusion.alphas_cumprod, ...).
for _name in BUFFER_NAMES:
  setattr(GaussianDiffusion, _name, property(lambda self, n=_name: getattr(self.schedule, n)))
