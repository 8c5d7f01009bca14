"""The extension contract (docs/extending.md): a sampler and a backbone added
from outside the package, each registered once, reach config validation,
get_sampler, the checkpoint comparison and sample.py's command."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from video_diffusion import cli
from video_diffusion.checkpointing.checkpointer import Checkpointer, model_mismatch
from video_diffusion.config import (
  SECTIONS,
  ConfigError,
  config_from_dict,
  config_to_dict,
  dump_config,
  registry,
)
from video_diffusion.config.schema import config_key
from video_diffusion.data import video_io
from video_diffusion.diffusion import factory, samplers
from video_diffusion.models.conditioning import GuidedDenoiser
from video_diffusion.train.state import init_train_state


@dataclasses.dataclass(frozen=True)
class Mirror(samplers.Sampler):
  """Lands on minus the model's x0 estimate: its videos cannot be any real sampler's."""

  name = 'mirror'
  default_steps = 3
  steps: int = default_steps

  def timesteps(self, num_timesteps):
    times = np.linspace(num_timesteps - 1, 0, self.steps).round().astype(np.int32)
    return np.append(times, -1).astype(np.int32)

  def step(self, schedule, x, x0, t, t_next, key, memory):
    return -x0, memory


@dataclasses.dataclass(frozen=True)
class FlatConfig:
  """The section `flat` of the Flat backbone."""

  level: float = config_key(0.5, 'What Flat predicts everywhere at first.')


class Flat(GuidedDenoiser):
  """Predicts one learnt value everywhere, whatever it is given."""

  def __init__(self, out_dim: int, level: float):
    self.has_cond = False
    self.out_dim = out_dim
    self.level = nnx.Param(jnp.full((out_dim,), level, jnp.float32))

  def __call__(
    self,
    x,
    time,
    cond=None,
    null_cond_prob=0.0,
    focus_present_mask=None,
    prob_focus_present=0.0,
    *,
    key=None,
    null_mask=None,
    image_mask=None,
  ):
    return jnp.zeros(x.shape[:-1] + (self.out_dim,), jnp.float32) + self.level[...]


def build_flat(cfg, in_channels, dtype):
  return Flat(cfg.unet.out_dim or cfg.unet.channels, cfg.flat.level)


def check_flat(cfg):
  level = cfg.flat.level
  return None if -1 <= level <= 1 else f'flat.level must be in [-1, 1] (pixels), got {level}'


TABLES = [samplers.SAMPLERS, registry.SAMPLERS, factory.BACKBONES, registry.BACKBONES, SECTIONS]


@pytest.fixture
def registered():
  """Mirror and Flat registered, as an extension would; every table as it was afterwards."""
  saved = [dict(table) for table in TABLES]
  try:
    samplers.register_sampler(Mirror)
    factory.register_backbone(
      'flat', build_flat, section='flat', section_cls=FlatConfig, check=check_flat
    )
    yield
  finally:
    for table, before in zip(TABLES, saved, strict=True):
      table.clear()
      table.update(before)


def tiny(tmp_path, **flat):
  return config_from_dict(
    {
      'unet': {'channels': 1},
      'diffusion': {
        'backbone': 'flat',
        'objective': 'x0',
        'image_size': 8,
        'num_frames': 2,
        'channels': 1,
        'timesteps': 4,
      },
      'flat': flat,
      'trainer': {'eval_sampler': 'mirror', 'results_folder': str(tmp_path / 'results')},
    }
  )


def test_a_config_naming_them_validates_and_bad_names_list_them(registered, tmp_path):
  cfg = tiny(tmp_path, level=0.25)
  assert cfg.diffusion.backbone == 'flat' and cfg.trainer.eval_sampler == 'mirror'
  assert cfg.flat == FlatConfig(level=0.25)
  with pytest.raises(ConfigError, match=r"one of 'unet3d', 'dit', 'flat', got 'flot'"):
    config_from_dict({'diffusion': {'backbone': 'flot'}})
  with pytest.raises(ConfigError, match=r"'heun', 'mirror', got 'miror'"):
    config_from_dict({'trainer': {'eval_sampler': 'miror'}})
  with pytest.raises(ConfigError, match=r'flat\.level must be in \[-1, 1\] \(pixels\), got 3'):
    tiny(tmp_path, level=3)  # the backbone's own check
  with pytest.raises(ConfigError, match='the mirror sampler cannot sample a flow-matching'):
    config_from_dict({'diffusion': {'objective': 'flow'}, 'trainer': {'eval_sampler': 'mirror'}})


def test_get_sampler_gives_the_registered_class(registered):
  assert samplers.get_sampler('mirror', 4) == Mirror(steps=3)
  assert samplers.get_sampler('mirror', 4, steps=2) == Mirror(steps=2)
  with pytest.raises(ValueError, match=r'steps must be in \[1, 4\]'):
    samplers.get_sampler('mirror', 4, steps=5)
  with pytest.raises(ValueError, match='eta is a setting of the ddim sampler, not of mirror'):
    samplers.get_sampler('mirror', 4, eta=1.0)


def test_the_checkpoint_comparison_covers_the_backbones_own_section(registered, tmp_path):
  current = config_to_dict(tiny(tmp_path))
  saved = config_to_dict(tiny(tmp_path, level=0.75))
  assert model_mismatch(current, saved) == 'flat.level=0.75 in the checkpoint, 0.5 in the config'
  saved['flat']['level'] = 0.5
  saved['dit']['width'] = 8  # not a section of the Flat model
  assert model_mismatch(current, saved) is None


def test_sample_py_samples_with_them(registered, tmp_path):
  cfg = tiny(tmp_path, level=0.5)
  _, params, _ = factory.split_diffusion(cfg)
  with Checkpointer(str(tmp_path / 'ckpt')) as ckpt:
    ckpt.save(
      init_train_state(params, optax.sgd(0.1), 0), data_state={}, config=config_to_dict(cfg)
    )
  dump_config(cfg, tmp_path / 'run.yaml')
  out = tmp_path / 'out'
  cli.main(
    [
      'sample',
      '--config',
      str(tmp_path / 'run.yaml'),
      '--checkpoint-path',
      str(tmp_path / 'ckpt'),
      '--output-path',
      str(out),
      '--batch-size',
      '2',
      '--sampler',
      'mirror',
    ]
  )
  for i in (1, 2):
    video = video_io.read_video(out / f'sample_{i}.gif')
    assert video.shape[1:] == (8, 8, 1)  # the GIF keeps equal frames once
    # Flat's x0 estimate is 0.5 in [-1, 1]; Mirror lands on -0.5, pixel 0.25 * 255.
    # Any built-in sampler would land on the estimate itself (pixel 191).
    np.testing.assert_allclose(video, 64, atol=2)
