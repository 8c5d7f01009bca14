"""The names a config accepts are exactly those the registries implement, and the
JAX-free tables of config.registry say of each what its implementation says."""

import dataclasses

import pytest

from video_diffusion.config import SECTIONS, DiffusionConfig, DiTConfig, TrainerConfig, registry
from video_diffusion.diffusion import factory, objectives, samplers, schedule
from video_diffusion.models.dit import ATTENTIONS, POSITIONS


def choices(cls, key):
  (field,) = [f for f in dataclasses.fields(cls) if f.name == key]
  return set(field.metadata['check'].allowed)


@pytest.mark.parametrize(
  'cls, key, registry_',
  [
    (DiffusionConfig, 'objective', objectives.OBJECTIVES),
    (DiffusionConfig, 'beta_schedule', schedule.BETA_SCHEDULES),
    (DiffusionConfig, 'loss_type', objectives.LOSSES),
    (DiffusionConfig, 'loss_weighting', objectives.LOSS_WEIGHTINGS),
    (TrainerConfig, 'eval_sampler', samplers.SAMPLERS),
    (DiffusionConfig, 'backbone', factory.BACKBONES),
    (DiffusionConfig, 'time_sampling', schedule.TIME_SAMPLINGS),
    (DiTConfig, 'attention', ATTENTIONS),
    (DiTConfig, 'positions', POSITIONS),
  ],
)
def test_config_choices_match_the_registry(cls, key, registry_):
  assert choices(cls, key) == set(registry_)


def test_the_jax_free_tables_match_the_registries():
  assert registry.SAMPLERS == {
    name: registry.SamplerInfo(flow=c.flow, default_steps=c.default_steps)
    for name, c in samplers.SAMPLERS.items()
  }
  assert registry.OBJECTIVES == {
    name: registry.ObjectiveInfo(flow=o.continuous) for name, o in objectives.OBJECTIVES.items()
  }
  assert list(registry.LOSS_WEIGHTINGS) == list(objectives.LOSS_WEIGHTINGS)
  assert list(registry.LOSSES) == list(objectives.LOSSES)
  assert list(registry.BETA_SCHEDULES) == list(schedule.BETA_SCHEDULES)
  assert list(registry.TIME_SAMPLINGS) == list(schedule.TIME_SAMPLINGS)
  assert list(registry.BACKBONES) == list(factory.BACKBONES)
  for name, info in registry.BACKBONES.items():  # a backbone's own section is a config section
    assert info.section is None or info.section in SECTIONS, name


def test_each_default_step_count_is_what_get_sampler_uses():
  for name, c in samplers.SAMPLERS.items():
    sampler = samplers.get_sampler(name, 1000, flow=c.flow)
    assert type(sampler) is c
    assert getattr(sampler, 'steps', None) == registry.SAMPLERS[name].default_steps
