"""The pure training step: loss, gradient accumulation, clipping, Adam, EMA.

`make_train_step(...)` returns `train_step(state, videos, cond=None) ->
(state, metrics)`, a pure function for `jax.jit` (donate the state). Videos
are uint8 (batch, frames, height, width, channels), channels-last; cond is
None, int class labels (batch,) or float vectors (batch, cond_dim) (text
already embedded). The batch holds `accumulate` micro-batches whose gradients
are averaged into one update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from video_diffusion.config import Config
from video_diffusion.config.schema import default_cond_frames
from video_diffusion.diffusion.pixels import model_input
from video_diffusion.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The trainer settings the step depends on (hashable, static under jit)."""

  accumulate: int = 1
  ema_decay: float = 0.995
  step_start_ema: int = 2000
  update_ema_every: int = 10
  prob_focus_present: float = 0.0
  cond_drop_prob: float = 0.0
  frame_conditioning: bool = False
  cond_frames_prob_none: float = 0.2
  cond_frames_prob_interpolate: float = 0.3
  max_cond_frames: int = 1
  cotrain: bool = False  # batches carry image stacks (trainer.image_fraction)

  @classmethod
  def from_config(cls, cfg: Config) -> StepOptions:
    t, d = cfg.trainer, cfg.diffusion
    return cls(
      accumulate=t.gradient_accumulate_every,
      ema_decay=t.ema_decay,
      step_start_ema=t.step_start_ema,
      update_ema_every=t.update_ema_every,
      prob_focus_present=t.prob_focus_present,
      cond_drop_prob=t.cond_drop_prob,
      frame_conditioning=d.frame_conditioning,
      cond_frames_prob_none=t.cond_frames_prob_none,
      cond_frames_prob_interpolate=t.cond_frames_prob_interpolate,
      max_cond_frames=t.max_cond_frames or default_cond_frames(d.num_frames),
      cotrain=t.image_fraction > 0,
    )


def frame_mask(key: jax.Array, num_frames: int, o: StepOptions) -> jax.Array:
  """(num_frames,) bool, True at the frames given clean: none (probability
  cond_frames_prob_none), the first and last k (interpolation), or the first k
  (prediction); k uniform in [1, max_cond_frames] (halved for interpolation)."""
  kind_key, count_key = jax.random.split(key)
  u = jax.random.uniform(kind_key)
  k = jax.random.randint(count_key, (), 1, o.max_cond_frames + 1)
  index = jnp.arange(num_frames)
  predict = index < k
  if num_frames < 3:
    interpolate = predict
  else:
    half = jnp.maximum(1, k // 2)
    interpolate = (index < half) | (index >= num_frames - half)
  none = jnp.zeros((num_frames,), bool)
  return jnp.where(
    u < o.cond_frames_prob_none,
    none,
    jnp.where(u < o.cond_frames_prob_none + o.cond_frames_prob_interpolate, interpolate, predict),
  )


def example_noise(keys: jax.Array, video_shape, sample_times: Callable, o: StepOptions) -> dict:
  """Per-video random draws from one key per video, so the draws of a video do
  not depend on how the batch is split into micro-batches: time 't' (drawn by
  the schedule's `sample_times(key, shape)`), 'noise',
  temporal attention 'focus' mask, condition dropping 'null' and the known
  frames 'frames' (all False without frame_conditioning)."""

  def draw(key):
    t_key, noise_key, focus_key, null_key, frames_key = jax.random.split(key, 5)
    frames = (
      frame_mask(frames_key, video_shape[0], o)
      if o.frame_conditioning
      else jnp.zeros((video_shape[0],), bool)
    )
    return {
      't': sample_times(t_key, ()),
      'noise': jax.random.normal(noise_key, video_shape),
      'focus': jax.random.uniform(focus_key) < o.prob_focus_present,
      'null': jax.random.uniform(null_key) < o.cond_drop_prob,
      'frames': frames,
    }

  return jax.vmap(draw)(keys)


def update_ema(ema_params, params, step: jax.Array, o: StepOptions):
  """The reference's EMA after optimiser step `step` (0-based): every
  update_ema_every steps, copy the params before step_start_ema, else
  ema * decay + params * (1 - decay)."""
  updating = step % o.update_ema_every == 0
  copying = step < o.step_start_ema

  def one(ema, p):
    averaged = ema * o.ema_decay + p * (1.0 - o.ema_decay)
    return jnp.where(updating, jnp.where(copying, p, averaged), ema)

  return jax.tree.map(one, ema_params, params)


def accumulate_gradients(grad_fn: Callable, params, parts: list[tuple]):
  """(values, gradients) of `grad_fn(params, *part) -> (value, grads)` averaged over
  the micro-batches `parts` (a value may be a pytree, each leaf averaged).

  A Python loop, unrolled at trace time: XLA on CPU runs convolutions inside
  a while loop (lax.scan) about 5x slower.
  """
  grads, values = None, []
  for part in parts:
    value, g = grad_fn(params, *part)
    grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    values.append(value)
  grads = jax.tree.map(lambda g: g / len(parts), grads)
  return jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *values), grads


def apply_gradients(
  state: TrainState,
  loss: jax.Array,
  grads,
  tx: optax.GradientTransformation,
  options: StepOptions,
  schedule: optax.Schedule | None = None,
) -> tuple[TrainState, dict]:
  """The optimiser step and EMA update of `grads`; a non-finite loss or gradient
  leaves the state as it was (the loop stops on metrics['finite']). Returns
  (state, metrics: loss, grad_norm, finite and, given the schedule, lr)."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = update_ema(state.ema_params, params, state.step, options)
  stepped = TrainState(
    step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state, rng=state.rng
  )
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'finite': finite}
  if schedule is not None:
    metrics['lr'] = schedule(state.step)
  return new_state, metrics


def make_train_step(
  graphdef: nnx.GraphDef,
  constants,
  tx: optax.GradientTransformation,
  options: StepOptions,
  schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
  """The pure train step of the model split as (graphdef, params, constants)."""

  def micro_loss(params, videos, cond, draws):
    model = nnx.merge(graphdef, params, constants)
    x_start = model_input(videos)
    kwargs = {}
    if options.prob_focus_present:  # else the masked attention path is skipped
      kwargs['focus_present_mask'] = draws['focus']
    if 'images' in draws:
      kwargs['image_mask'] = draws['images']
    if cond is not None:
      kwargs['null_mask'] = draws['null']
    if options.frame_conditioning:
      kwargs['frame_mask'] = draws['frames']
    return model.p_losses(x_start, draws['t'], draws['noise'], cond=cond, **kwargs)

  grad_fn = jax.value_and_grad(micro_loss)

  def train_step(
    state: TrainState,
    videos: jax.Array,
    cond: jax.Array | None = None,
    images: jax.Array | None = None,
  ) -> tuple[TrainState, dict]:
    """One optimiser step on uint8 videos (b, f, h, w, c); `images` (bool (b,))
    flags the stacks of independent images of co-training: their frames are
    kept apart (the model's image_mask) and their condition is the null one,
    with no given frames."""
    batch = videos.shape[0]
    if batch % options.accumulate:
      raise ValueError(
        f'batch of {batch} videos does not split into {options.accumulate} equal micro-batches'
      )
    model = nnx.merge(graphdef, state.params, constants)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    draws = example_noise(
      jax.random.split(key, batch), videos.shape[1:], model.schedule.sample_times, options
    )
    if images is not None:
      draws['images'] = images
      draws['null'] = draws['null'] | images
      draws['frames'] = draws['frames'] & ~images[:, None]

    size = batch // options.accumulate
    parts = [
      (
        videos[i * size : (i + 1) * size],
        None if cond is None else cond[i * size : (i + 1) * size],
        jax.tree.map(lambda a, i=i: a[i * size : (i + 1) * size], draws),
      )
      for i in range(options.accumulate)
    ]
    loss, grads = accumulate_gradients(grad_fn, state.params, parts)
    return apply_gradients(state, loss, grads, tx, options, schedule)

  return train_step
