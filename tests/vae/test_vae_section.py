"""The config's vae and vae_trainer sections (no JAX): a diffusers config.json is a
valid vae section, its keys are checked, and train-vae's own rules are written once."""

import json
import pathlib

import pytest
import yaml

from video_diffusion.checkpointing.checkpointer import model_mismatch
from video_diffusion.config import (
  ConfigError,
  VAEConfig,
  config_from_dict,
  config_of_checkpoint,
  config_to_dict,
  dump_config,
  load_config,
  vae_run_problem,
)
from video_diffusion.config.vae import MODEL_KIND

ROOT = pathlib.Path(__file__).resolve().parents[2]
WAN21 = ROOT / 'tests' / 'fixtures' / 'vae' / 'wan21_config.json'
GREY = {
  'unet': {'channels': 1},
  'diffusion': {'image_size': 16, 'num_frames': 5, 'channels': 1},
  'vae': {'dim_mult': [1, 2], 'temperal_downsample': [True], 'in_channels': 1, 'out_channels': 1},
}


def grey(**vae):
  data = {k: dict(v) for k, v in GREY.items()}
  data['vae'].update(vae)
  return config_from_dict(data)


def test_a_diffusers_config_json_is_a_vae_section(tmp_path):
  raw = json.loads(WAN21.read_text())
  cfg = config_from_dict({'vae': raw})
  assert cfg.vae == VAEConfig.from_json(WAN21)
  assert cfg.vae.temperal_downsample == (False, True, True) and len(cfg.vae.latents_std) == 16
  path = tmp_path / 'run.yaml'
  path.write_text(yaml.safe_dump({'vae': raw}))
  assert load_config(path).vae == cfg.vae
  assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg  # metadata keys dropped
  defaults = config_from_dict({}).vae  # Wan 2.1's sizes, no latent statistics
  assert defaults == VAEConfig.from_dict({**raw, 'latents_mean': None, 'latents_std': None})


@pytest.mark.parametrize(
  'body, message',
  [
    ({'base_dim': 0}, 'vae.base_dim must be > 0, got 0'),
    ({'dim_mult': [1, 'x']}, 'vae.dim_mult must be a list of ints'),
    ({'temperal_downsample': [0, 1, 1]}, 'vae.temperal_downsample must be a list of bools'),
    ({'latents_mean': [0.1, '.nan']}, 'vae.latents_mean must be a list of numbers'),
    ({'attn_scales': 0.5}, 'vae.attn_scales must be a list of numbers'),
    ({'temperal_downsample': [True]}, 'needs a flag for each of the 3 downsamplings'),
    ({'is_residual': True}, 'only Wan 2.1'),
    ({'_class_name': 'AutoencoderKL'}, "config is for 'AutoencoderKL'"),
    ({'clip_output': True}, 'unknown key vae.clip_output'),
  ],
)
def test_bad_vae_keys_name_the_key(body, message):
  with pytest.raises(ConfigError, match=None) as error:
    config_from_dict({'vae': body})
  assert message in str(error.value)


def test_vae_trainer_keys():
  cfg = config_from_dict({'vae_trainer': {'loss_type': 'l2', 'kl_weight': 0}})
  assert cfg.vae_trainer.loss_type == 'l2' and cfg.vae_trainer.kl_weight == 0.0
  with pytest.raises(ConfigError, match=r"vae_trainer.loss_type must be one of 'l1', 'l2'"):
    config_from_dict({'vae_trainer': {'loss_type': 'l3'}})
  with pytest.raises(ConfigError, match='vae_trainer.kl_weight must be >= 0'):
    config_from_dict({'vae_trainer': {'kl_weight': -1.0}})


def test_what_train_vae_needs_of_a_config():
  assert vae_run_problem(grey()) is None
  assert 'vae.in_channels (3) must equal diffusion.channels (1)' in vae_run_problem(
    grey(in_channels=3)
  )
  assert 'vae.out_channels (3)' in vae_run_problem(grey(out_channels=3))
  four = config_from_dict({**GREY, 'diffusion': {**GREY['diffusion'], 'num_frames': 4}})
  assert 'diffusion.num_frames: the Wan VAE encodes 1 + 4k frames' in vae_run_problem(four)
  assert 'set it to 5' in vae_run_problem(four)
  odd = config_from_dict(
    {
      **GREY,
      'unet': {'channels': 1, 'dim_mults': [1]},  # the unet section is checked in every config
      'diffusion': {**GREY['diffusion'], 'image_size': 17},
    }
  )
  assert 'must be divisible by 2' in vae_run_problem(odd)
  assert 'vae.dropout (0.1) is not applied' in vae_run_problem(grey(dropout=0.1))
  wan_flags = grey(temperal_downsample=[False, True, True])  # 3 flags for 1 downsampling
  assert 'decodes the 5 frames to 9' in vae_run_problem(wan_flags)


def test_checkpoints_of_the_other_kind_and_other_vaes_do_not_match():
  diffusion = config_to_dict(grey())
  vae = {**diffusion, MODEL_KIND: 'vae'}
  assert model_mismatch(vae, vae) is None
  assert model_mismatch(vae, diffusion) == (
    'the checkpoint holds a diffusion model, the config describes a vae model'
  )
  wider = {**vae, 'vae': {**vae['vae'], 'base_dim': 8}}
  assert model_mismatch(vae, wider) == 'vae.base_dim=8 in the checkpoint, 96 in the config'
  other_unet = {**vae, 'unet': {**vae['unet'], 'dim': 8}}
  assert model_mismatch(vae, other_unet) is None  # a vae run's model is its vae section
  assert model_mismatch(diffusion, {**diffusion, 'vae': wider['vae']}) is None
  assert config_of_checkpoint(vae) == grey()
