"""The names a config accepts are exactly those the registries implement."""

import dataclasses

import pytest

from video_diffusion.config import DiffusionConfig, DiTConfig, TrainerConfig
from video_diffusion.diffusion.factory import BACKBONES
from video_diffusion.diffusion.objectives import LOSS_WEIGHTINGS, LOSSES, OBJECTIVES
from video_diffusion.diffusion.samplers import SAMPLERS
from video_diffusion.diffusion.schedule import BETA_SCHEDULES, TIME_SAMPLINGS
from video_diffusion.models.dit import ATTENTIONS, POSITIONS


def choices(cls, key):
  (field,) = [f for f in dataclasses.fields(cls) if f.name == key]
  return set(field.metadata['check'].allowed)


@pytest.mark.parametrize(
  'cls, key, registry',
  [
    (DiffusionConfig, 'objective', OBJECTIVES),
    (DiffusionConfig, 'beta_schedule', BETA_SCHEDULES),
    (DiffusionConfig, 'loss_type', LOSSES),
    (DiffusionConfig, 'loss_weighting', LOSS_WEIGHTINGS),
    (TrainerConfig, 'eval_sampler', SAMPLERS),
    (DiffusionConfig, 'backbone', BACKBONES),
    (DiffusionConfig, 'time_sampling', TIME_SAMPLINGS),
    (DiTConfig, 'attention', ATTENTIONS),
    (DiTConfig, 'positions', POSITIONS),
  ],
)
def test_config_choices_match_the_registry(cls, key, registry):
  assert choices(cls, key) == set(registry)
