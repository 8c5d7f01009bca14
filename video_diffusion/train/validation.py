"""The validation loss: the model's own loss on held-out clips at fixed noise levels.

Every call sees the same clips, the same noise (from a key of its own, not the
training's) and the same `trainer.val_times` evenly spaced times, so the loss
moves only with the weights: a cheap signal of sample quality between FVDs.
The online weights are measured (as maxdiffusion does), like the training loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from video_diffusion.conditions import encoding as conditioning
from video_diffusion.config import Config
from video_diffusion.diffusion.pixels import model_input
from video_diffusion.eval.evaluate import held_out_clips
from video_diffusion.parallel import sharding

# Folded into the run's seed for the validation noise: a stream of its own.
NOISE_STREAM = 0x76616C


def validation_times(num_times: int, timesteps: int, flow: bool) -> np.ndarray:
  """`num_times` evenly spaced times, the midpoints of equal parts of the time
  range: integers in [0, timesteps) for a Gaussian model, u in (0, 1) for a flow one."""
  u = (np.arange(num_times) + 0.5) / num_times
  if flow:
    return u.astype(np.float32)
  return np.floor(u * timesteps).astype(np.int32)


def time_label(t) -> str:
  """How a time appears in metric names: 'val_loss_t62', 'val_loss_t0.0625'."""
  return f'{t:g}' if isinstance(t, (float, np.floating)) else str(int(t))


def make_validation_loss(graphdef: nnx.GraphDef, constants, times) -> Callable:
  """The pure `validation_loss(params, videos, cond, key) -> (per_time (k,), mean)`
  of uint8 videos (b, f, h, w, c): p_losses at each of `times` for the whole
  batch, with the noise drawn from `key` (the same at every time), the true
  condition (none dropped) and no frames given."""
  times = jnp.asarray(times)

  def validation_loss(params, videos, cond, key):
    model = nnx.merge(graphdef, params, constants)
    x_start = model_input(videos)
    noise = jax.random.normal(key, x_start.shape, x_start.dtype)
    batch = videos.shape[0]
    kwargs = {} if cond is None else {'null_mask': jnp.zeros((batch,), bool)}

    def at(t):
      return model.p_losses(x_start, jnp.full((batch,), t), noise, cond=cond, **kwargs)

    per_time = jax.lax.map(at, times)  # one time at a time: the memory of one forward pass
    return per_time, jnp.mean(per_time)

  return validation_loss


class Validator:
  """The validation loss of params over `mesh`: held-out clips and their
  conditions loaded once, then one compiled call per use; returns the metrics
  {'val_loss', 'val_loss_t<time>', ...} (floats, on every process)."""

  def __init__(
    self,
    cfg: Config,
    graphdef,
    constants,
    param_shardings,
    mesh: Mesh,
    text_encoder,
    encode: Callable | None = None,
  ):
    """`encode` maps the held-out clips (uint8, sharded) to what the model
    diffuses (a latent model's LatentEncoder.means); None: the clips themselves."""
    t, d = cfg.trainer, cfg.diffusion
    count = t.val_batch_size or t.train_batch_size
    sharding.check_batch(count, mesh)  # MeshError, a ValueError

    def need(size):
      return (
        f'the validation loss needs its last {count} as held-out clips: lower '
        'trainer.val_batch_size, or pass a larger dataset'
      )

    videos, raw_cond, self.description = held_out_clips(cfg, count, seed=t.seed, need=need)
    batch = sharding.batch_sharding(mesh)
    self.videos = sharding.global_array(videos, batch)
    if encode is not None:
      self.videos = encode(self.videos)
    cond = None if raw_cond is None else conditioning.model_condition(cfg, raw_cond, text_encoder)
    self.cond = None if cond is None else sharding.global_array(cond, batch)
    key = jax.random.fold_in(jax.random.key(t.seed), NOISE_STREAM)
    replicated = sharding.replicated(mesh)
    self.key_data = sharding.global_array(jax.random.key_data(key), replicated)
    times = validation_times(t.val_times, d.timesteps, d.is_flow)
    self.names = [f'val_loss_t{time_label(x)}' for x in times]
    loss = make_validation_loss(graphdef, constants, times)
    self.compiled = jax.jit(
      lambda params, videos, cond, key_data: loss(
        params, videos, cond, jax.random.wrap_key_data(key_data)
      ),
      in_shardings=(param_shardings, batch, None if self.cond is None else batch, replicated),
      out_shardings=(replicated, replicated),
    )

  def __call__(self, params) -> dict[str, float]:
    per_time, mean = jax.device_get(self.compiled(params, self.videos, self.cond, self.key_data))
    return {'val_loss': float(mean), **{n: float(v) for n, v in zip(self.names, per_time)}}
