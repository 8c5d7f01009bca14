"""Image-video co-training: image stacks in every batch, kept apart in every backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from video_diffusion.config import ConfigError, config_from_dict
from video_diffusion.data import loader as data_loader
from video_diffusion.data.errors import DataError
from video_diffusion.data.prepare import prepare
from video_diffusion.data.spec import DataSpec
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.train import step as train_step_lib
from video_diffusion.train.state import init_train_state

UNET = {'dim': 8, 'dim_mults': [1, 2], 'channels': 1, 'attn_heads': 2, 'attn_dim_head': 8}
DIT = {'width': 32, 'depth': 2, 'heads': 2, 'patch_size': 2}


def config(backbone='unet3d', attention='factorised', unet=None, **trainer):
  """A tiny 4-frame 8x8 grey config of `backbone` with these trainer keys."""
  return config_from_dict(
    {
      'unet': {**UNET, **(unet or {})},
      'dit': {**DIT, 'attention': attention},
      'diffusion': {
        'backbone': backbone,
        'image_size': 8,
        'num_frames': 4,
        'channels': 1,
        'timesteps': 10,
        'loss_type': 'l2',
      },
      'trainer': {
        'train_batch_size': 4,
        'gradient_accumulate_every': 1,
        'data_workers': 0,
        **trainer,
      },
    }
  )


def randomised(model):
  """Every parameter moved by noise (the DiT's zero-initialised layers would hide mixing)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(params))))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), params)
  return nnx.merge(graphdef, params, rest)


@pytest.mark.parametrize(
  'backbone, attention', [('unet3d', None), ('dit', 'factorised'), ('dit', 'full')]
)
def test_the_frames_of_an_image_stack_do_not_depend_on_each_other(backbone, attention):
  """Under the image mask the train step gives image stacks, changing one frame changes
  that frame's output only; a video's other frames do change."""
  graphdef, params, constants = split_diffusion(config(backbone, attention or 'factorised'))
  model = randomised(nnx.merge(graphdef, params, constants)).denoise_fn
  call = nnx.jit(lambda m, x, t, images: m(x, t, image_mask=images))
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 1))
  t = jnp.array([3, 7])
  images = jnp.array([True, False])
  a = call(model, x, t, images)
  for frame in range(4):
    b = call(model, x.at[:, frame].add(1.0), t, images)
    others = [f for f in range(4) if f != frame]
    np.testing.assert_allclose(a[0, others], b[0, others], atol=1e-5)
    assert np.abs(a[0, frame] - b[0, frame]).max() > 1e-3
    assert np.abs(a[1, others] - b[1, others]).max() > 1e-3


def test_image_stacks_ignore_their_condition_in_the_train_step():
  """The step gives image stacks the null condition: their labels change nothing."""
  cfg = config(unet={'num_classes': 3}, cond_drop_prob=0.0)
  graphdef, params, constants = split_diffusion(cfg)
  options = train_step_lib.StepOptions.from_config(cfg)
  step = jax.jit(train_step_lib.make_train_step(graphdef, constants, optax.sgd(0.1), options))
  state = init_train_state(params, optax.sgd(0.1), seed=0)
  videos = np.random.default_rng(0).integers(0, 256, (4, 4, 8, 8, 1), np.uint8)
  images = jnp.array([False, False, True, True])
  a, _ = step(state, videos, jnp.array([0, 1, 2, 2]), images)
  b, _ = step(state, videos, jnp.array([0, 1, 0, 1]), images)
  c, _ = step(state, videos, jnp.array([0, 1, 0, 1]), jnp.zeros(4, bool))
  same = [
    np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))
  ]
  assert all(same)
  assert not all(
    np.array_equal(p, q) for p, q in zip(jax.tree.leaves(b.params), jax.tree.leaves(c.params))
  )


def image_folder(root, count=12):
  """Grey images whose pixels all read 20 * k, in two class folders."""
  for k in range(count):
    (root / f'c{k % 2}').mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16), 20 * k, np.uint8)).save(root / f'c{k % 2}' / f'{k}.png')
  return root


@pytest.mark.parametrize('packed', [False, True])
def test_batches_carry_the_image_fraction_as_stacks_of_independent_images(tmp_path, packed):
  images = image_folder(tmp_path / 'images')
  if packed:
    spec = DataSpec.from_config(config())
    prepare(str(images), str(tmp_path / 'packed'), DataSpec(None, (1, 8, 8, 1), seed=0), 2)
    images = tmp_path / 'packed'
  cfg = config(image_dataset_path=str(images), image_fraction=0.5)
  spec = DataSpec.from_config(cfg)
  plain = data_loader.make_loader(DataSpec.from_config(config()), seed=0)
  mixed = data_loader.make_loader(spec, seed=0)
  values = set()
  for a, b in zip(plain, mixed):
    np.testing.assert_array_equal(b['image'], [False, False, True, True])
    np.testing.assert_array_equal(a['video'][:2], b['video'][:2])  # the videos as without
    for stack in b['video'][2:]:
      frames = [int(frame[0, 0, 0]) for frame in stack]
      assert all(v % 20 == 0 and np.all(f == v) for v, f in zip(frames, stack))
      values |= set(frames)
    if len(values) > 6:
      break
  assert len(values) > 6  # independent draws from the 12 images


def test_cotraining_settings_are_checked(tmp_path):
  with pytest.raises(ConfigError, match='needs both trainer.image_dataset_path'):
    config(image_fraction=0.5)
  with pytest.raises(ConfigError, match='temporal_patch_size 2 mixes'):
    config_from_dict(
      {
        'diffusion': {'backbone': 'dit'},
        'dit': {'temporal_patch_size': 2},
        'trainer': {'image_dataset_path': 'x', 'image_fraction': 0.5},
      }
    )
  cfg = config(image_dataset_path=str(image_folder(tmp_path / 'i')), image_fraction=0.1)
  with pytest.raises(DataError, match='makes 0 image stacks'):
    data_loader.make_loader(DataSpec.from_config(cfg), seed=0)


@pytest.mark.slow
def test_cotraining_trains_and_resumes_exactly(tmp_path):
  from test_training import assert_same_state, with_steps

  from video_diffusion.train import loop as trainer

  keys = dict(
    image_dataset_path=str(image_folder(tmp_path / 'images')),
    image_fraction=0.25,
    checkpoint_every_steps=2,
    save_and_sample_every=1000,
    max_to_keep=None,
  )
  # the DiT compiles faster than the Unet3D (whose masking is checked above)
  whole = config('dit', results_folder=str(tmp_path / 'whole'), train_num_steps=4, **keys)
  result = trainer.train(whole)
  assert result.checkpoint_steps == [2, 4] and np.isfinite(result.loss)
  split = config('dit', results_folder=str(tmp_path / 'split'), train_num_steps=2, **keys)
  trainer.train(split)
  trainer.train(with_steps(split, 4), resume_step=-1)
  assert_same_state(whole, split, 4)
