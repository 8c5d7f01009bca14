"""Compiled samplers: ancestral DDPM, DDIM and DPM-Solver++(2M) for the Gaussian
objectives; Euler and Heun for flow matching.

Each sampler is a small class with the times it visits and one `step` from
x_t to x_{t_next} given the model's x0 estimate. `sample_loop` runs any of
them inside one jax.lax.fori_loop (no Python per step), and the model call,
classifier-free guidance and known frames (prediction, interpolation,
reconstruction guidance) live in one shared denoiser made by `make_denoiser`.
Videos are channels-last (batch, frames, height, width, channels) in [-1, 1]
inside, [0, 1] at `sample`'s edges. Gaussian times are integers, -1 meaning
"no noise" (alpha_bar 1); flow times are floats from 1 (noise) to 0 (data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from video_diffusion.config import registry
from video_diffusion.config.registry import SamplerInfo, sampler_misfit
from video_diffusion.config.registry import default_sampler as default_sampler_name
from video_diffusion.diffusion.pixels import normalize_img, unnormalize_img
from video_diffusion.diffusion.schedule import NoiseSchedule

Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_t, t, key) -> x0


def _even_times(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly spaced integer times from num_timesteps - 1 down to 0, then -1.

  Ending the grid at t = 0 (the least noise the model knows) rather than
  jumping from a coarse t to -1 keeps the variance of fine detail: the last
  step returns the model's x0 estimate, which averages over what the noise at
  its time hides.
  """
  if steps == 1:
    return np.array([num_timesteps - 1, -1], np.int32)
  times = np.linspace(0, num_timesteps - 1, steps).round().astype(np.int32)[::-1]
  return np.append(times, -1).astype(np.int32)


def _quadratic_times(num_timesteps: int, steps: int) -> np.ndarray:
  """Like _even_times with t spaced as (linspace)^2, or evenly where that repeats a time."""
  if steps == 1:
    return _even_times(num_timesteps, steps)
  times = np.round(np.linspace(0, np.sqrt(num_timesteps - 1), steps) ** 2).astype(np.int32)
  if len(np.unique(times)) < steps:
    return _even_times(num_timesteps, steps)
  return np.append(times[::-1], -1).astype(np.int32)


class Sampler:
  """One sampler: the times it visits and its update rule, and what get_sampler
  and the config know of it (name, flow, default_steps, has_eta)."""

  name: str
  flow = False  # True: walks a flow-matching model's FlowSchedule
  default_steps: int | None = None  # steps when none are asked for; None = every timestep
  has_eta = False  # True: takes get_sampler's eta (noise)

  @classmethod
  def build(cls, num_timesteps: int, steps: int | None, eta: float) -> Sampler:
    """This sampler with `steps` steps for a model of `num_timesteps` (eta is 0
    unless has_eta): cls(steps) once the steps fit."""
    cls.check_steps(num_timesteps, steps)
    return cls(steps)

  @classmethod
  def check_steps(cls, num_timesteps: int, steps: int) -> None:
    """ValueError unless steps >= 1, and for a Gaussian model at most its timesteps."""
    if cls.flow:
      if steps < 1:
        raise ValueError(f'steps must be >= 1, got {steps}')
    elif not 1 <= steps <= num_timesteps:
      raise ValueError(
        f'steps must be in [1, {num_timesteps}] (the model has {num_timesteps} '
        f'timesteps), got {steps}'
      )

  def timesteps(self, num_timesteps: int) -> np.ndarray:
    """Descending integer times, the last one -1."""
    raise NotImplementedError

  def init(self, x: jax.Array):
    """The memory carried between steps (multistep solvers)."""
    return ()

  def step(self, schedule: NoiseSchedule, x, x0, t, t_next, key, memory):
    """x_t -> x_{t_next} given the x0 estimate; returns (x_next, memory)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DDPM(Sampler):
  """The reference's ancestral sampler over every timestep (from `start` - 1,
  default all of them), drawing from the posterior q(x_{t-1} | x_t, x0)."""

  start: int | None = None
  name = 'ddpm'

  @classmethod
  def build(cls, num_timesteps, steps, eta):
    if steps is not None and steps != num_timesteps:
      raise ValueError(
        f'ddpm walks all {num_timesteps} timesteps of the model, not {steps}; '
        'for fewer ancestral steps use the ddim sampler with eta 1'
      )
    return cls()

  def timesteps(self, num_timesteps):
    start = num_timesteps if self.start is None else self.start
    return np.arange(start - 1, -2, -1, dtype=np.int32)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    t_batch = jnp.full((x.shape[0],), t)
    mean, _, log_variance = schedule.q_posterior(x0, x, t_batch)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return mean + (t > 0) * jnp.exp(0.5 * log_variance) * noise, memory


@dataclasses.dataclass(frozen=True)
class DDIM(Sampler):
  """DDIM (Song et al. 2021) over `steps` evenly spaced times; eta 0 is
  deterministic, eta 1 ancestral-like."""

  name = 'ddim'
  default_steps = 50
  has_eta = True
  steps: int = default_steps
  eta: float = 0.0

  @classmethod
  def build(cls, num_timesteps, steps, eta):
    cls.check_steps(num_timesteps, steps)
    return cls(steps, eta)

  def timesteps(self, num_timesteps):
    return _even_times(num_timesteps, self.steps)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    a, a_next = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    sigma = self.eta * jnp.sqrt((1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_next - sigma**2, 0.0))
    noise = jax.random.normal(key, x.shape, x.dtype)
    return jnp.sqrt(a_next) * x0 + direction * eps + sigma * noise, memory


@dataclasses.dataclass(frozen=True)
class DPMSolverPP(Sampler):
  """DPM-Solver++(2M) (Lu et al. 2022), data prediction, over `steps` times
  spaced quadratically (DPM-Solver's time_quadratic: denser at low noise);
  first order on the first and the last step."""

  name = 'dpmpp'
  default_steps = 20
  steps: int = default_steps

  def timesteps(self, num_timesteps):
    return _quadratic_times(num_timesteps, self.steps)

  def init(self, x):
    return jnp.zeros_like(x), jnp.ones((), x.dtype), jnp.zeros((), bool)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    x0_prev, h_prev, have_prev = memory
    a, a_next = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
    final = t_next < 0  # sigma_next = 0: the step lands on the x0 estimate
    log_snr = 0.5 * (jnp.log(a) - jnp.log1p(-a))
    log_snr_next = 0.5 * (jnp.log(a_next) - jnp.log1p(-jnp.where(final, 0.5, a_next)))
    h = jnp.where(final, 1.0, log_snr_next - log_snr)
    r = h_prev / h
    second_order = have_prev & ~final
    data = jnp.where(second_order, (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev, x0)
    sigma_ratio = jnp.where(final, 0.0, jnp.sqrt((1.0 - a_next) / (1.0 - a)))
    decay = jnp.where(final, 1.0, -jnp.expm1(-h))
    x_next = sigma_ratio * x + jnp.sqrt(a_next) * decay * data
    return x_next, (x0, h.astype(x.dtype), jnp.ones((), bool))


def _velocity(schedule, x, x0, u):
  """The flow's velocity (x_t - x0) / t at time u, from the x0 estimate."""
  return (x - x0) / schedule.noise_level(u)


@dataclasses.dataclass(frozen=True)
class Euler(Sampler):
  """Euler's method on the flow's ODE over `steps` even steps of u from 1 to 0
  (the schedule's timestep shift spaces the noise levels)."""

  name = 'euler'
  flow = True
  default_steps = 50
  steps: int = default_steps

  def timesteps(self, num_timesteps):
    return np.linspace(1.0, 0.0, self.steps + 1, dtype=np.float32)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    dt = schedule.noise_level(t_next) - schedule.noise_level(t)
    return x + dt * _velocity(schedule, x, x0, t), memory


@dataclasses.dataclass(frozen=True)
class Heun(Sampler):
  """Heun's method (2nd order, Karras et al. 2022) over `steps` even steps of u:
  an Euler prediction, then the average of the velocities at both ends; the
  last step (to the data, where the velocity is unknown) is Euler's. Each step
  is two loop iterations, the corrector revisiting its end time: 2 steps - 1
  model calls."""

  name = 'heun'
  flow = True
  default_steps = 20
  steps: int = default_steps

  def timesteps(self, num_timesteps):
    grid = np.linspace(1.0, 0.0, self.steps + 1, dtype=np.float32)
    return np.concatenate([grid[:1], np.repeat(grid[1:-1], 2), grid[-1:]])

  def init(self, x):
    return jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros((), jnp.float32), jnp.zeros((), bool)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    x_start, d_start, t_start, correcting = memory
    d = _velocity(schedule, x, x0, t)
    level = schedule.noise_level(t)
    predicted = x + (schedule.noise_level(t_next) - level) * d
    corrected = x_start + (level - schedule.noise_level(t_start)) * 0.5 * (d_start + d)
    x_next = jnp.where(correcting, corrected, predicted)
    return x_next, (x, d, jnp.asarray(t, jnp.float32), ~correcting & (t_next > 0))


# name -> class; config.registry.SAMPLERS has each one's flow and default_steps (for the config).
SAMPLERS: dict[str, type[Sampler]] = {c.name: c for c in (DDPM, DDIM, DPMSolverPP, Euler, Heun)}


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
  """Makes sampler class `cls` known by cls.name to get_sampler, the config
  (trainer.eval_sampler) and the CLI (--sampler); usable as a class decorator."""
  SAMPLERS[cls.name] = cls
  registry.SAMPLERS[cls.name] = SamplerInfo(flow=cls.flow, default_steps=cls.default_steps)
  return cls


def default_sampler(flow: bool) -> Sampler:
  """The sampler of a model when none is named (config.registry.default_sampler)."""
  return SAMPLERS[default_sampler_name(flow)]()


def get_sampler(
  name: str | None,
  num_timesteps: int,
  steps: int | None = None,
  eta: float = 0.0,
  *,
  flow: bool = False,
) -> Sampler:
  """The sampler `name` (a key of SAMPLERS; None = the model's default) with
  `steps` steps (default: its default_steps), for a flow-matching model if
  `flow` else a Gaussian one; eta for the samplers that take it (has_eta)."""
  name = default_sampler_name(flow) if name is None else name
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampler {name!r}: use one of {", ".join(SAMPLERS)}')
  misfit = sampler_misfit(name, flow)
  if misfit:
    raise ValueError(misfit)
  if eta < 0:
    raise ValueError(f'eta must be >= 0, got {eta}')
  cls = SAMPLERS[name]
  if eta and not cls.has_eta:
    takers = ' or '.join(n for n, c in SAMPLERS.items() if c.has_eta)
    raise ValueError(f'eta is a setting of the {takers} sampler, not of {name}: drop it')
  return cls.build(num_timesteps, cls.default_steps if steps is None else steps, eta)


def sample_loop(
  schedule: NoiseSchedule, sampler: Sampler, x: jax.Array, key: jax.Array, denoise: Denoiser
) -> jax.Array:
  """Runs `sampler` from x (noise at its first time) in one fori_loop; returns
  the final x in [-1, 1] (unclipped beyond what the denoiser does)."""
  if sampler.flow != schedule.continuous:
    raise ValueError(sampler_misfit(sampler.name, schedule.continuous))
  times = sampler.timesteps(schedule.num_timesteps)
  t_now, t_next = jnp.asarray(times[:-1]), jnp.asarray(times[1:])
  batch = x.shape[0]

  def body(i, carry):
    x, memory = carry
    model_key, step_key = jax.random.split(jax.random.fold_in(key, i))
    x0 = denoise(x, jnp.full((batch,), t_now[i]), model_key)
    return sampler.step(schedule, x, x0, t_now[i], t_next[i], step_key, memory)

  x, _ = jax.lax.fori_loop(0, len(times) - 1, body, (x, sampler.init(x)))
  return x


def make_denoiser(
  diffusion,
  *,
  cond=None,
  cond_scale: float = 1.0,
  known=None,
  frame_mask=None,
  recon_guidance: float = 0.0,
  clip_denoised: bool = True,
) -> Denoiser:
  """The x0 estimate every sampler uses: model call with guidance, and the
  known frames (known in [-1, 1], frame_mask (batch, frames) True where known).

  A model trained with frame_conditioning is given the known frames. Any
  other model samples them by replacement (the known frames noised to time t
  replace x_t's), optionally with reconstruction guidance of weight
  `recon_guidance` (Ho et al. 2022, eq. 7).
  """
  if known is None or diffusion.frame_conditioning:
    if recon_guidance:
      raise ValueError(
        'reconstruction guidance needs known frames and a model trained '
        'without diffusion.frame_conditioning (which is given them directly)'
      )
    return lambda x, t, key: diffusion.denoise(
      x,
      t,
      cond=cond,
      cond_scale=cond_scale,
      known=known,
      frame_mask=frame_mask,
      clip_denoised=clip_denoised,
    )

  given = frame_mask[:, :, None, None, None]

  def predict(x, t):
    return diffusion.denoise(x, t, cond=cond, cond_scale=cond_scale, clip_denoised=False)

  def denoise(x, t, key):
    noised = diffusion.q_sample(known, t, jax.random.normal(key, x.shape, x.dtype))
    x = jnp.where(given, noised, x)
    if recon_guidance:
      x0, pullback = jax.vjp(lambda x: predict(x, t), x)
      (grad,) = pullback(-2.0 * jnp.where(given, known - x0, 0.0))  # d||x_a - x0_a||^2 / dx
      weight = recon_guidance * diffusion.schedule.signal_scale(t) / 2
      x0 = x0 - weight[:, None, None, None, None] * jnp.where(given, 0.0, grad)
    else:
      x0 = predict(x, t)
    if clip_denoised:
      x0 = diffusion.clip_x0(x0)
    return jnp.where(given, known, x0)

  return denoise


def sample(
  diffusion,
  sampler: Sampler,
  key: jax.Array,
  shape,
  *,
  cond=None,
  cond_scale: float = 1.0,
  known=None,
  frame_mask=None,
  recon_guidance: float = 0.0,
  clip_denoised: bool = True,
  sharding=None,
) -> jax.Array:
  """Videos of `shape` (batch, frames, h, w, c) in [0, 1] from pure noise.

  known: (batch, frames, h, w, c) in [0, 1] with frame_mask (batch, frames)
  True at the frames to keep (prediction, interpolation, extension); those
  frames come back exactly as given. sharding: how to lay the videos out over
  devices (under jit), e.g. sharding.batch_sharding(mesh).
  """
  noise_key, loop_key = jax.random.split(key)
  x = jax.random.normal(noise_key, shape)
  if sharding is not None:
    x = jax.lax.with_sharding_constraint(x, sharding)
  if known is not None:
    if frame_mask is None:
      raise ValueError('known frames need a frame_mask (batch, frames) saying which are known')
    known = jnp.asarray(known, x.dtype)
  denoise = make_denoiser(
    diffusion,
    cond=cond,
    cond_scale=cond_scale,
    known=None if known is None else normalize_img(known),
    frame_mask=frame_mask,
    recon_guidance=recon_guidance,
    clip_denoised=clip_denoised,
  )
  videos = unnormalize_img(sample_loop(diffusion.schedule, sampler, x, loop_key, denoise))
  if known is not None:
    videos = jnp.where(frame_mask[:, :, None, None, None], known, videos)
  return videos
