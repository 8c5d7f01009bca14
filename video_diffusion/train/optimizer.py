"""The optimiser of a run: Adam on a warm-up and cosine-decay schedule."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from video_diffusion.config import TrainerConfig


def learning_rate_schedule(t: TrainerConfig) -> optax.Schedule:
  """train_lr, with linear warm-up over warmup_steps (step s gets (s+1)/warmup of it)
  and, from lr_decay_start_step, cosine decay over lr_decay_steps to
  train_lr * lr_decay_coeff, constant after."""
  lr = t.train_lr

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    rate = jnp.asarray(lr, jnp.float32)
    if t.lr_decay_start_step is not None:
      progress = jnp.clip((count - t.lr_decay_start_step) / t.lr_decay_steps, 0.0, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      rate = lr * (t.lr_decay_coeff + (1.0 - t.lr_decay_coeff) * cosine)
    if t.warmup_steps:
      rate = rate * jnp.minimum(1.0, (count + 1.0) / t.warmup_steps)
    return rate

  return schedule


def make_optimizer(t: TrainerConfig) -> optax.GradientTransformation:
  """Adam (torch defaults: b1 0.9, b2 0.999, eps 1e-8) on the schedule, after
  clipping to max_grad_norm when set."""
  adam = optax.adam(learning_rate_schedule(t))
  if t.max_grad_norm is None:
    return adam
  return optax.chain(optax.clip_by_global_norm(t.max_grad_norm), adam)
