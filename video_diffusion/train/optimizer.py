"""The optimiser of a run: Adam on a warm-up and cosine-decay schedule.

Equal settings give the same optax objects (cached), so that a second run in one
process (a notebook, the tests) finds its compiled train step (setup.py) again.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import optax

from video_diffusion.config import TrainerConfig


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The trainer keys the schedule and the optimiser read."""

  train_lr: float
  warmup_steps: int
  lr_decay_start_step: int | None
  lr_decay_steps: int | None
  lr_decay_coeff: float
  max_grad_norm: float | None

  @classmethod
  def of(cls, t: TrainerConfig) -> OptimizerSettings:
    return cls(**{f.name: getattr(t, f.name) for f in dataclasses.fields(cls)})


def learning_rate_schedule(t: TrainerConfig) -> optax.Schedule:
  """train_lr, with linear warm-up over warmup_steps (step s gets (s+1)/warmup of it)
  and, from lr_decay_start_step, cosine decay over lr_decay_steps to
  train_lr * lr_decay_coeff, constant after."""
  return _schedule(OptimizerSettings.of(t))


def make_optimizer(t: TrainerConfig) -> optax.GradientTransformation:
  """Adam (torch defaults: b1 0.9, b2 0.999, eps 1e-8) on the schedule, after
  clipping to max_grad_norm when set."""
  return _optimizer(OptimizerSettings.of(t))


@functools.lru_cache(maxsize=16)
def _schedule(s: OptimizerSettings) -> optax.Schedule:
  lr = s.train_lr

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    rate = jnp.asarray(lr, jnp.float32)
    if s.lr_decay_start_step is not None:
      progress = jnp.clip((count - s.lr_decay_start_step) / s.lr_decay_steps, 0.0, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      rate = lr * (s.lr_decay_coeff + (1.0 - s.lr_decay_coeff) * cosine)
    if s.warmup_steps:
      rate = rate * jnp.minimum(1.0, (count + 1.0) / s.warmup_steps)
    return rate

  return schedule


@functools.lru_cache(maxsize=16)
def _optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
  adam = optax.adam(_schedule(s))
  if s.max_grad_norm is None:
    return adam
  return optax.chain(optax.clip_by_global_norm(s.max_grad_norm), adam)
