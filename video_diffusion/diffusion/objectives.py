"""What the denoiser predicts (the objective) and how the loss weighs it.

An objective says what the network's output should be at (x_start, t,
noise) and how to read x0 back from an output; the loss (GaussianDiffusion)
and every sampler use the same two functions. A new objective is one class
added to OBJECTIVES; a new weighting, one entry of LOSS_WEIGHTINGS. The
Gaussian objectives go with a NoiseSchedule, flow matching with a FlowSchedule
(`continuous`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from video_diffusion.diffusion.schedule import FlowSchedule, NoiseSchedule


class Objective:
  """The training target of the denoiser and its inverse."""

  name: str
  continuous = False  # True: flow matching, on a FlowSchedule

  def target(self, schedule: NoiseSchedule, x_start, t, noise) -> jax.Array:
    """What the network should output for x_start noised with `noise` at time t."""
    raise NotImplementedError

  def predict_start(self, schedule: NoiseSchedule, x_t, t, output) -> jax.Array:
    """The x0 estimate of a network output at x_t, time t."""
    raise NotImplementedError

  def min_snr_weight(self, snr: jax.Array, gamma: float) -> jax.Array:
    """Min-SNR-gamma weights (Hang et al. 2023) of this target, per example."""
    raise NotImplementedError


class PredictNoise(Objective):
  """eps: the noise, as the reference."""

  name = 'eps'

  def target(self, schedule, x_start, t, noise):
    return noise

  def predict_start(self, schedule, x_t, t, output):
    n = x_t.ndim
    return (
      schedule.at('sqrt_recip_alphas_cumprod', t, n) * x_t
      - schedule.at('sqrt_recipm1_alphas_cumprod', t, n) * output
    )

  def min_snr_weight(self, snr, gamma):
    return jnp.minimum(snr, gamma) / snr


class PredictStart(Objective):
  """x0: the clean video."""

  name = 'x0'

  def target(self, schedule, x_start, t, noise):
    return x_start

  def predict_start(self, schedule, x_t, t, output):
    return output

  def min_snr_weight(self, snr, gamma):
    return jnp.minimum(snr, gamma)


class PredictVelocity(Objective):
  """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022)."""

  name = 'v'

  def target(self, schedule, x_start, t, noise):
    n = x_start.ndim
    return (
      schedule.at('sqrt_alphas_cumprod', t, n) * noise
      - schedule.at('sqrt_one_minus_alphas_cumprod', t, n) * x_start
    )

  def predict_start(self, schedule, x_t, t, output):
    n = x_t.ndim
    return (
      schedule.at('sqrt_alphas_cumprod', t, n) * x_t
      - schedule.at('sqrt_one_minus_alphas_cumprod', t, n) * output
    )

  def min_snr_weight(self, snr, gamma):
    return jnp.minimum(snr, gamma) / (snr + 1.0)


class PredictFlow(Objective):
  """flow: the velocity eps - x0 of x_t = (1 - t) x0 + t eps (flow matching,
  Lipman et al. 2023; rectified flow, Liu et al. 2023)."""

  name = 'flow'
  continuous = True

  def target(self, schedule: FlowSchedule, x_start, t, noise):
    return noise - x_start

  def predict_start(self, schedule: FlowSchedule, x_t, t, output):
    return x_t - schedule.level_at(t, x_t.ndim) * output

  def min_snr_weight(self, snr, gamma):
    raise ValueError("loss_weighting='min_snr' is for the Gaussian objectives (eps, x0, v).")


OBJECTIVES: dict[str, Objective] = {
  o.name: o for o in (PredictNoise(), PredictStart(), PredictVelocity(), PredictFlow())
}


def _no_weights(objective, schedule, t, gamma):
  return jnp.ones(t.shape, jnp.float32)


def _min_snr(objective, schedule, t, gamma):
  return objective.min_snr_weight(schedule.snr(t), gamma)


# name -> (objective, schedule, t (batch,), gamma) -> per-example loss weights (batch,)
LOSS_WEIGHTINGS = {'none': _no_weights, 'min_snr': _min_snr}

# name -> elementwise loss of (target - output)
LOSSES = {'l1': jnp.abs, 'l2': jnp.square}


def get_objective(name: str) -> Objective:
  """The objective `name` ('eps', 'x0', 'v' or 'flow')."""
  if name not in OBJECTIVES:
    raise ValueError(f'objective={name!r}: use one of {", ".join(OBJECTIVES)}.')
  return OBJECTIVES[name]
