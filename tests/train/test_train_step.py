"""The pure train step: accumulation, EMA, schedule, clipping, non-finite guard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_DIT

from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.diffusion.schedule import NoiseSchedule
from video_diffusion.train import step as ts
from video_diffusion.train.optimizer import learning_rate_schedule, make_optimizer
from video_diffusion.train.state import init_train_state

# The step does not depend on the backbone: a tiny DiT compiles in a fraction of the
# Unet3D's time (the Unet3D's step runs in tests/models and tests/parallel).
TINY = {
  'unet': dict(channels=1),
  'dit': TINY_DIT['dit'],
  'diffusion': dict(
    backbone='dit', image_size=8, num_frames=3, channels=1, timesteps=20, loss_type='l2'
  ),
  'trainer': dict(train_batch_size=2, gradient_accumulate_every=2),
}


SGD = optax.sgd(1.0)  # the update is then minus the gradient itself


@pytest.fixture(scope='module')
def tiny_model():
  return split_diffusion(config_from_dict(TINY))


@pytest.fixture(scope='module')
def sgd_steps(tiny_model):
  """Compiled SGD train steps with 1 and 2 micro-batches (shared: compiles are slow)."""
  graphdef, _, constants = tiny_model
  return {
    k: jax.jit(ts.make_train_step(graphdef, constants, SGD, ts.StepOptions(accumulate=k)))
    for k in (1, 2)
  }


def _videos(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8, 1), dtype=np.uint8)


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_accumulation_equals_one_step_on_the_concatenated_batch(tiny_model, sgd_steps):
  _, params, _ = tiny_model
  state = init_train_state(params, SGD, seed=3)
  videos = _videos(4)
  one_state, one_metrics = sgd_steps[1](state, videos)
  two_state, two_metrics = sgd_steps[2](state, videos)
  grad_scale = _max_diff(one_state.params, params)
  assert grad_scale > 1e-3  # the step really moved the params
  np.testing.assert_allclose(two_metrics['loss'], one_metrics['loss'], rtol=1e-5)
  np.testing.assert_allclose(two_metrics['grad_norm'], one_metrics['grad_norm'], rtol=1e-5)
  assert _max_diff(two_state.params, one_state.params) < 1e-5 * grad_scale
  # Micro-batches of a different batch are not the same step.
  other_state, _ = sgd_steps[2](state, _videos(4, seed=1))
  assert _max_diff(other_state.params, one_state.params) > 1e-3 * grad_scale


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_noise_draws_differ_between_steps_and_seeds(tiny_model, sgd_steps):
  _, params, _ = tiny_model
  videos = _videos(2)
  s1, m1 = sgd_steps[1](init_train_state(params, SGD, seed=0), videos)
  _, m2 = sgd_steps[1](s1, videos)
  _, m3 = sgd_steps[1](init_train_state(params, SGD, seed=1), videos)
  assert int(s1.step) == 1
  assert float(m1['loss']) != float(m2['loss'])
  assert float(m1['loss']) != float(m3['loss'])


def test_non_finite_loss_leaves_the_state_unchanged(tiny_model, sgd_steps):
  _, params, _ = tiny_model
  broken = jax.tree.map(lambda p: p.at[...].set(jnp.nan) if p.ndim >= 2 else p, params)
  state = init_train_state(broken, SGD, seed=0)
  new_state, metrics = sgd_steps[1](state, _videos(2))
  assert not bool(metrics['finite'])
  assert int(new_state.step) == 0
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ema_copies_before_step_start_ema_then_averages():
  options = ts.StepOptions(ema_decay=0.9, step_start_ema=4, update_ema_every=2)
  ema = {'w': jnp.array([1.0, 2.0])}
  params = {'w': jnp.array([3.0, 6.0])}
  copied = ts.update_ema(ema, params, jnp.int32(2), options)
  np.testing.assert_array_equal(copied['w'], [3.0, 6.0])
  skipped = ts.update_ema(ema, params, jnp.int32(3), options)
  np.testing.assert_array_equal(skipped['w'], [1.0, 2.0])
  averaged = ts.update_ema(ema, params, jnp.int32(4), options)
  np.testing.assert_allclose(
    averaged['w'], [1.0 * 0.9 + 3.0 * 0.1, 2.0 * 0.9 + 6.0 * 0.1], rtol=1e-6
  )


def _trainer(**kw):
  return config_from_dict({'trainer': kw}).trainer


def test_learning_rate_schedule_constant_decay_and_warmup():
  constant = learning_rate_schedule(_trainer(train_lr=2e-4))
  assert float(constant(0)) == pytest.approx(2e-4) and float(constant(10**6)) == pytest.approx(2e-4)
  decay = learning_rate_schedule(
    _trainer(train_lr=1.0, lr_decay_start_step=10, lr_decay_steps=20, lr_decay_coeff=0.1)
  )
  for step, expected in [
    (0, 1.0),
    (10, 1.0),
    (20, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))),
    (30, 0.1),
    (1000, 0.1),
  ]:
    assert float(decay(step)) == pytest.approx(expected, rel=1e-5), step
  warm = learning_rate_schedule(_trainer(train_lr=1.0, warmup_steps=4))
  assert [float(warm(s)) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_optimizer_clips_to_max_grad_norm():
  grads = {'w': jnp.array([3.0, 4.0])}  # norm 5
  tx = make_optimizer(_trainer(train_lr=1e-3, max_grad_norm=1.0))
  _, opt_state = tx.update(grads, tx.init(grads), grads)
  adam_state = opt_state[1][0]
  np.testing.assert_allclose(adam_state.mu['w'], 0.1 * np.array([0.6, 0.8]), rtol=1e-6)
  unclipped = make_optimizer(_trainer(train_lr=1e-3))
  _, opt_state = unclipped.update(grads, unclipped.init(grads), grads)
  np.testing.assert_allclose(opt_state[0].mu['w'], [0.3, 0.4], rtol=1e-6)


TEN_STEPS = NoiseSchedule('cosine', 10)


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_example_noise_is_per_video_and_honours_its_probabilities():
  keys = jax.random.split(jax.random.key(0), 2000)
  options = ts.StepOptions(prob_focus_present=0.3, cond_drop_prob=0.2)
  draws = ts.example_noise(keys, (2, 3, 3, 1), TEN_STEPS.sample_times, options)
  t = draws['t']
  assert t.shape == (2000,) and int(t.min()) == 0 and int(t.max()) == 9
  assert abs(float(draws['focus'].mean()) - 0.3) < 0.04
  assert abs(float(draws['null'].mean()) - 0.2) < 0.04
  assert abs(float(draws['noise'].std()) - 1.0) < 0.02
  assert not bool(draws['frames'].any())  # no frame_conditioning
  first4 = ts.example_noise(keys[:4], (2, 3, 3, 1), TEN_STEPS.sample_times, options)
  for name in draws:
    np.testing.assert_array_equal(first4[name], draws[name][:4])
  never = ts.example_noise(keys[:50], (1,), TEN_STEPS.sample_times, ts.StepOptions())
  assert not bool(never['focus'].any()) and not bool(never['null'].any())


@pytest.mark.slow  # compile-heavy; left out of `make test-fast`
def test_frame_masks_mix_generation_prediction_and_interpolation():
  options = ts.StepOptions(
    frame_conditioning=True,
    cond_frames_prob_none=0.2,
    cond_frames_prob_interpolate=0.3,
    max_cond_frames=4,
  )
  masks = np.asarray(
    ts.example_noise(
      jax.random.split(jax.random.key(1), 3000), (8, 2, 2, 1), TEN_STEPS.sample_times, options
    )['frames']
  )
  known = masks.sum(1)
  none = known == 0
  prefix = np.array([m[:k].all() and not m[k:].any() for m, k in zip(masks, known)]) & ~none
  both_ends = masks[:, 0] & masks[:, -1] & ~prefix
  assert abs(none.mean() - 0.2) < 0.03
  assert abs(both_ends.mean() - 0.3) < 0.03
  assert abs(prefix.mean() - 0.5) < 0.03
  assert (none | prefix | both_ends).all()
  assert known.max() == 4 and not masks.all(1).any()  # something is always left to generate
  assert sorted(set(known[prefix])) == [1, 2, 3, 4]
