"""Run configs: the schema of the unet, diffusion, dit, trainer, vae and
vae_trainer sections, and loading, validating and writing YAML. JAX-free."""

from video_diffusion.config.loading import (
  ConfigError,
  config_from_dict,
  config_keys,
  config_of_checkpoint,
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
from video_diffusion.config.vae import VAEConfig, VAETrainerConfig, vae_run_problem

__all__ = [
  'SECTIONS',
  'Config',
  'ConfigError',
  'DiTConfig',
  'DiffusionConfig',
  'TrainerConfig',
  'UnetConfig',
  'VAEConfig',
  'VAETrainerConfig',
  'config_from_dict',
  'config_keys',
  'config_of_checkpoint',
  'config_to_dict',
  'dump_config',
  'load_config',
  'markdown_table',
  'resolved_checkpoint_dir',
  'vae_run_problem',
]
