"""Wan 2.1 VAE: float32 parity with diffusers 0.42.1's AutoencoderKLWan, no torch.

The fixtures (tests/fixtures/vae, written by tools/make_vae_fixtures.py) are
diffusers folders of small configs with every parameter perturbed, with the
inputs and diffusers' outputs; and the state-dict names and shapes of the full
Wan 2.1 VAE.
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from video_diffusion.vae import VAEConfig, WanVAE, load_vae
from video_diffusion.vae import wan as wan_module
from video_diffusion.vae.loading import diffusers_key_map, to_our_layout

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'vae'
CONFIG_NAMES = ['wan_like', 'attn_one_temporal']
ATOL = 1e-4


@pytest.fixture(scope='module', params=CONFIG_NAMES)
def case(request):
  """(name, the loaded WanVAE, diffusers' inputs and outputs)."""
  folder = FIXTURES / request.param
  with np.load(folder / 'expected.npz') as data:
    expected = {k: data[k] for k in data.files}
  return request.param, load_vae(folder), expected


def test_torch_is_not_needed():
  assert 'torch' not in sys.modules


def test_encode_matches_diffusers(case):
  _, vae, expected = case
  posterior = vae.posterior(expected['videos'])
  assert posterior.mean.shape == expected['mean'].shape
  np.testing.assert_allclose(posterior.mean, expected['mean'], rtol=0, atol=ATOL)
  np.testing.assert_allclose(posterior.logvar, expected['logvar'], rtol=0, atol=ATOL)
  np.testing.assert_array_equal(vae.encode(expected['videos']), posterior.mean)
  sample = posterior.sample(jax.random.key(0))
  noise = (sample - posterior.mean) / posterior.std
  assert sample.shape == posterior.mean.shape and 0.5 < float(noise.std()) < 1.5


def test_decode_matches_diffusers(case):
  name, vae, expected = case
  decoded = vae.decode(expected['latents'])
  assert decoded.shape == expected['decoded'].shape
  np.testing.assert_allclose(decoded, expected['decoded'], rtol=0, atol=ATOL)
  if name == 'attn_one_temporal':  # its outputs reach diffusers' clamp to [-1, 1]
    assert np.abs(expected['decoded']).max() == 1.0


def test_each_kind_of_chunk_compiles_once(case):
  """A longer video reuses the compiled later-chunk function (and so does a fresh model)."""
  _, vae, expected = case
  videos = np.concatenate([expected['videos'], expected['videos'][:, 1:5]], axis=1)  # 13 frames
  before = wan_module._encode_chunk._cache_size()
  mean = vae.encode(videos)
  assert mean.shape[1] == vae.config.latent_frames(13)
  np.testing.assert_allclose(mean[:, : expected['mean'].shape[1]], expected['mean'], atol=ATOL)
  fresh = WanVAE(vae.config, rngs=nnx.Rngs(0))
  assert fresh.encode(expected['videos']).shape == expected['mean'].shape
  assert wan_module._encode_chunk._cache_size() == before


def test_latent_statistics_come_from_the_config(case):
  name, vae, _ = case
  config = json.loads((FIXTURES / name / 'config.json').read_text())
  if config['latents_mean'] is None:
    assert vae.latents_mean is None and vae.latents_std is None
  else:
    np.testing.assert_array_equal(vae.latents_mean, np.float32(config['latents_mean']))
    np.testing.assert_array_equal(vae.latents_std, np.float32(config['latents_std']))


def test_key_map_covers_exactly_the_wan21_state_dict():
  """Built abstractly (no weights), the full Wan 2.1 VAE's parameters map one to one
  onto diffusers' state-dict names, with the same shapes after the layout change."""
  config = VAEConfig.from_json(FIXTURES / 'wan21_config.json')
  model = nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
  keys = diffusers_key_map(model)
  theirs = {
    name: tuple(shape)
    for name, shape in json.loads((FIXTURES / 'wan21_state_dict_keys.json').read_text())
  }
  assert sorted(set(theirs) - set(keys)) == [], 'diffusers tensors without a parameter'
  assert sorted(set(keys) - set(theirs)) == [], 'parameters diffusers does not have'
  assert {n: s for n, (_, s) in keys.items()} == theirs
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert {path for path, _ in keys.values()} == set(params)
  for name, (path, shape) in keys.items():
    ours = to_our_layout(np.broadcast_to(np.float32(0), shape), path)
    assert ours.shape == params[path].get_value().shape, name
  assert len(model.latents_mean) == len(model.latents_std) == config.z_dim == 16
