"""Run configs: the schema of the unet, diffusion, dit and trainer sections, and
loading, validating and writing YAML. JAX-free."""

from video_diffusion.config.loading import (
  ConfigError,
  config_from_dict,
  config_keys,
  config_to_dict,
  dump_config,
  load_config,
  markdown_table,
  resolved_checkpoint_dir,
)
from video_diffusion.config.schema import (
  SECTIONS,
  Config,
  DiffusionConfig,
  DiTConfig,
  TrainerConfig,
  UnetConfig,
)

__all__ = [
  'SECTIONS',
  'Config',
  'ConfigError',
  'DiTConfig',
  'DiffusionConfig',
  'TrainerConfig',
  'UnetConfig',
  'config_from_dict',
  'config_keys',
  'config_to_dict',
  'dump_config',
  'load_config',
  'markdown_table',
  'resolved_checkpoint_dir',
]
