"""The pure training step of the Wan VAE: its loss over micro-batches, Adam, EMA.

`make_vae_train_step(...)` returns `train_step(state, videos) -> (state,
metrics)` for `jax.jit` (donate the state); videos are uint8 (batch, frames,
height, width, channels). Accumulation, the optimiser update, the EMA and the
non-finite guard are the diffusion step's (train.step).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax
from flax import nnx

from video_diffusion.config import VAETrainerConfig
from video_diffusion.diffusion.pixels import uint8_to_model_range
from video_diffusion.train.state import TrainState
from video_diffusion.train.step import StepOptions, accumulate_gradients, apply_gradients
from video_diffusion.vae.training import vae_loss


def make_vae_train_step(
  graphdef: nnx.GraphDef,
  rest,
  tx: optax.GradientTransformation,
  options: StepOptions,
  vt: VAETrainerConfig,
  schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
  """The pure train step of the VAE split as (graphdef, params, rest). The
  posterior sample of micro-batch i is drawn from fold_in(key of the step, i)."""

  def micro_loss(params, videos, key):
    vae = nnx.merge(graphdef, params, rest)
    return vae_loss(vae, uint8_to_model_range(videos), key, vt.loss_type, vt.kl_weight)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def train_step(state: TrainState, videos: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser step on uint8 videos (b, f, h, w, c)."""
    batch = videos.shape[0]
    if batch % options.accumulate:
      raise ValueError(
        f'batch of {batch} videos does not split into {options.accumulate} equal micro-batches'
      )
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    size = batch // options.accumulate
    parts = [
      (videos[i * size : (i + 1) * size], jax.random.fold_in(key, i))
      for i in range(options.accumulate)
    ]
    (loss, terms), grads = accumulate_gradients(grad_fn, state.params, parts)
    state, metrics = apply_gradients(state, loss, grads, tx, options, schedule)
    return state, {**metrics, **terms}

  return train_step
