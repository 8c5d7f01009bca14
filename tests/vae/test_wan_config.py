"""Wan 2.1 VAE: diffusers config.json handling, folder detection and clear errors (no compiles)."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from video_diffusion.vae import VAEConfig, load_vae
from video_diffusion.vae.loading import VAEWeightsMismatchError

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'vae'
WEIGHTS = 'diffusion_pytorch_model.safetensors'


def copy_fixture(tmp_path, name='wan_like', **config_changes):
  """A copy of a fixture folder (without expected.npz), its config.json changed."""
  folder = tmp_path / name
  folder.mkdir()
  shutil.copy(FIXTURES / name / WEIGHTS, folder / WEIGHTS)
  config = json.loads((FIXTURES / name / 'config.json').read_text()) | config_changes
  (folder / 'config.json').write_text(json.dumps(config))
  return folder


def test_a_diffusers_config_json_is_read_as_is():
  raw = json.loads((FIXTURES / 'wan21_config.json').read_text())
  assert raw['_class_name'] == 'AutoencoderKLWan' and '_diffusers_version' in raw
  config = VAEConfig.from_json(FIXTURES / 'wan21_config.json')
  assert (config.base_dim, config.z_dim, config.num_res_blocks) == (96, 16, 2)
  assert config.dim_mult == (1, 2, 4, 4) and config.temperal_downsample == (False, True, True)
  assert config.latents_mean == tuple(raw['latents_mean']) and len(config.latents_std) == 16
  assert config == VAEConfig(latents_mean=raw['latents_mean'], latents_std=raw['latents_std'])
  assert VAEConfig().latents_mean is None  # absent: None


def test_frame_counts():
  wan = VAEConfig()
  assert [wan.latent_frames(f) for f in (1, 5, 9, 81)] == [1, 2, 3, 21]
  assert [wan.video_frames(t) for t in (1, 3, 21)] == [1, 9, 81]
  one = VAEConfig(dim_mult=(1, 2, 2), temperal_downsample=(True, False))
  assert (one.latent_frames(9), one.video_frames(5)) == (5, 9)
  for frames in (0, 2, 8, 10):
    with pytest.raises(ValueError, match=r'1 \+ 4k frames'):
      wan.latent_frames(frames)


def test_wan22_and_unknown_configs_are_rejected():
  for changes in (dict(is_residual=True), dict(patch_size=2)):
    with pytest.raises(ValueError, match=r'only Wan 2\.1'):
      VAEConfig(**changes)
  with pytest.raises(ValueError, match='unknown AutoencoderKLWan config keys'):
    VAEConfig.from_dict({'base_dim': 8, 'clip_output': True})
  with pytest.raises(ValueError, match="'AutoencoderKL'"):
    VAEConfig.from_dict({'_class_name': 'AutoencoderKL'})
  with pytest.raises(ValueError, match='at most 2 temporal'):
    VAEConfig(dim_mult=(1, 1, 1, 1), temperal_downsample=(True, True, True))
  with pytest.raises(ValueError, match='a flag for each'):
    VAEConfig(temperal_downsample=(False, True))


def test_wan22_folder_is_rejected(tmp_path):
  with pytest.raises(ValueError, match=r'only Wan 2\.1'):
    load_vae(copy_fixture(tmp_path, is_residual=True))


def test_bad_frame_counts_are_rejected_before_compiling():
  vae = load_vae(FIXTURES / 'wan_like')
  with pytest.raises(ValueError, match=r'1 \+ 4k frames .* got 8'):
    vae.encode(np.zeros((1, 8, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r'\(batch, frames, height, width, 3\)'):
    vae.encode(np.zeros((1, 9, 32, 32, 4), np.float32))
  with pytest.raises(ValueError, match=r'latents must be'):
    vae.decode(np.zeros((1, 3, 4, 4, 3), np.float32))


def test_missing_unexpected_and_misshaped_tensors_are_listed(tmp_path):
  folder = copy_fixture(tmp_path)
  tensors = load_file(folder / WEIGHTS)
  del tensors['decoder.conv_out.bias']
  tensors['encoder.extra.weight'] = np.zeros(3, np.float32)
  tensors['quant_conv.weight'] = tensors['quant_conv.weight'][:, :, 0]
  save_file(tensors, folder / WEIGHTS)
  with pytest.raises(VAEWeightsMismatchError) as error:
    load_vae(folder)
  message = str(error.value)
  assert '1 missing: decoder.conv_out.bias' in message
  assert '1 unexpected: encoder.extra.weight' in message
  assert 'quant_conv.weight (8, 8, 1, 1) (expected (8, 8, 1, 1, 1))' in message


def test_folders(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_vae(tmp_path / 'nothing')
  (tmp_path / 'checkpoint').mkdir()
  with pytest.raises(ValueError, match='not a diffusers AutoencoderKLWan folder'):
    load_vae(tmp_path / 'checkpoint')
  pipeline = tmp_path / 'pipeline'
  pipeline.mkdir()
  (pipeline / 'model_index.json').write_text('{}')
  (pipeline / 'vae').symlink_to(FIXTURES / 'attn_one_temporal')
  assert load_vae(pipeline).config.decoder_base_dim == 8


def test_bfloat16_and_sharded_weights_load(tmp_path):
  """safetensors.numpy cannot read bfloat16: those files go through safetensors.flax."""
  import jax.numpy as jnp
  import ml_dtypes
  from flax import nnx
  from safetensors.flax import save_file as save_flax

  folder = copy_fixture(tmp_path)
  tensors = load_file(folder / WEIGHTS)
  (folder / WEIGHTS).unlink()
  names = sorted(tensors)
  half = {n: jnp.asarray(tensors[n].astype(ml_dtypes.bfloat16)) for n in names[:10]}
  save_flax(half, folder / 'part-1.safetensors')
  save_file({n: tensors[n] for n in names[10:]}, folder / 'part-2.safetensors')
  weight_map = {n: f'part-{1 if i < 10 else 2}.safetensors' for i, n in enumerate(names)}
  (folder / f'{WEIGHTS}.index.json').write_text(json.dumps({'weight_map': weight_map}))
  ours = load_vae(folder)
  reference = load_vae(FIXTURES / 'wan_like')
  flat = lambda m: dict(nnx.to_flat_state(nnx.state(m, nnx.Param)))
  loaded, expected = flat(ours), flat(reference)
  assert loaded.keys() == expected.keys()
  differ = [p for p in loaded if not np.array_equal(loaded[p].get_value(), expected[p].get_value())]
  assert 0 < len(differ) <= 10  # only the bfloat16 ones are rounded
