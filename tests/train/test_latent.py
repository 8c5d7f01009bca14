"""Diffusion on a video autoencoder's latents (diffusion.vae): training, exact resume,
the autoencoder's record in the checkpoint, sampling and the checks around them.

The autoencoder is the tiny diffusers fixture tests/fixtures/vae/wan_like (8x
spatial, 4x temporal compression, 4 latent channels): 5 frames of 16x16 RGB are
latents of 2 x 2 x 2 x 4.
"""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
from conftest import TINY_DIT
from flax import nnx

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict
from video_diffusion.config.vae import LATENTS_RECORD
from video_diffusion.eval.evaluate import training_clips
from video_diffusion.inference.checkpoint import load_params, sample_checkpoint
from video_diffusion.inference.sampling import SamplingError
from video_diffusion.train import loop as trainer
from video_diffusion.train.setup import TrainingError
from video_diffusion.vae import latent

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'vae'
WEIGHTS = 'diffusion_pytorch_model.safetensors'


def copy_vae(tmp_path, name='wan_like', **config_changes):
  """A copy of a diffusers fixture folder, its config.json changed."""
  folder = tmp_path / f'{name}-copy'
  folder.mkdir()
  shutil.copy(FIXTURES / name / WEIGHTS, folder / WEIGHTS)
  config = json.loads((FIXTURES / name / 'config.json').read_text()) | config_changes
  (folder / 'config.json').write_text(json.dumps(config))
  return folder


def latent_config(results, vae, **diffusion_keys):
  return config_from_dict(
    {
      'unet': dict(channels=3),
      'dit': dict(TINY_DIT['dit'], patch_size=1),
      'diffusion': TINY_DIT['diffusion']
      | dict(channels=3, image_size=16, num_frames=5, vae=str(vae))
      | diffusion_keys,
      'trainer': dict(
        results_folder=str(results),
        train_batch_size=2,
        train_num_steps=4,
        checkpoint_every_steps=2,
        save_and_sample_every=4,
        num_sample_rows=1,
        data_workers=0,
        step_start_ema=1,
        update_ema_every=1,
        max_to_keep=None,
      ),
    }
  )


def checkpoint_state(cfg, step):
  """(params leaves, saved config) of a run's checkpoint `step`."""
  folder = pathlib.Path(cfg.trainer.results_folder) / 'checkpoints'
  with Checkpointer(str(folder), read_only=True) as ckpt:
    saved = ckpt.restore_config(step)
  return load_params(cfg, str(folder), step=step), saved


def with_steps(cfg, steps):
  return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, train_num_steps=steps))


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """A flow DiT trained 4 steps on the latents of wan_like (own statistics)."""
  cfg = latent_config(tmp_path_factory.mktemp('straight'), FIXTURES / 'wan_like')
  assert trainer.train(cfg).checkpoint_steps == [2, 4]
  return cfg


def test_the_model_sees_latent_sizes_and_the_checkpoint_records_the_autoencoder(straight):
  model, saved = checkpoint_state(straight, 4)
  record = saved[LATENTS_RECORD]
  space = latent.LatentSpace.load(str(FIXTURES / 'wan_like'))
  assert record['fingerprint'] == space.fingerprint
  np.testing.assert_allclose(record['mean'], [0.1, -0.2, 0.3, -0.4])  # the config's own
  np.testing.assert_allclose(record['std'], [1.5, 0.5, 2.0, 1.0])
  assert model.latents is not None
  # patch_size 1: the DiT's input projection reads the 4 latent channels.
  kernels = [v for k, v in _flat(model.params).items() if 'patch' in k and k.endswith('kernel')]
  assert kernels and kernels[0].shape[-2] == 4
  # Latents are not bounded: the sampler's x0 estimates are not clipped to [-1, 1].
  diffusion = nnx.merge(model.graphdef, model.params, model.constants)
  assert diffusion.video_shape == (2, 2, 2, 4)
  np.testing.assert_array_equal(diffusion.clip_x0(np.full((1, 2, 2, 2, 4), 3.0)), 3.0)


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}'
    out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
  return out


def test_a_resumed_latent_run_is_bit_identical(tmp_path, straight):
  split = latent_config(tmp_path / 'split', FIXTURES / 'wan_like')
  trainer.train(with_steps(split, 2))
  trainer.train(split, resume_step=-1)
  a, _ = checkpoint_state(straight, 4)
  b, _ = checkpoint_state(split, 4)
  for (path, x), y in zip(_flat(a.params).items(), _flat(b.params).values()):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def test_sampling_decodes_videos_of_the_pixel_size(straight):
  folder = str(pathlib.Path(straight.trainer.results_folder) / 'checkpoints')
  videos, step = sample_checkpoint(straight, folder, batch_size=2, ema=True)
  assert step == 4
  assert videos.shape == (2, 5, 16, 16, 3)
  assert 0.0 <= videos.min() and videos.max() <= 1.0
  assert (pathlib.Path(straight.trainer.results_folder) / 'samples' / 'sample-4.gif').exists()


def test_given_frames_are_encoded_and_longer_videos_extend_in_latent_frames(straight):
  """--prime's frames are cut to 1 + 4j and encoded: the causal decoder gives back
  their own reconstruction first; --num-frames 9 samples 3 latent frames (the model's 2,
  extended by one)."""
  folder = str(pathlib.Path(straight.trainer.results_folder) / 'checkpoints')
  given = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
  videos, _ = sample_checkpoint(straight, folder, batch_size=1, first=given, num_frames=9)
  assert videos.shape == (1, 9, 16, 16, 3)
  space = load_params(straight, folder).latents
  latents = space.sampling_request(first=given)['first']  # the last frame of the 3 alone
  assert latents.shape == (1, 2, 2, 4)
  again = latent.decoder(space)(latents[None])
  np.testing.assert_allclose(videos[0, 0], again[0, 0], atol=1e-5)
  with pytest.raises(SamplingError, match='1 \\+ 4k'):
    sample_checkpoint(straight, folder, batch_size=1, num_frames=8)
  with pytest.raises(SamplingError, match='--interpolate is not supported'):
    sample_checkpoint(straight, folder, batch_size=1, first=given, last=given)


def test_a_gaussian_model_measures_missing_statistics_and_samples(tmp_path):
  """An autoencoder without latents_mean/std: the run measures them on the first
  training clips and keeps them in its checkpoints; an eps model samples too."""
  vae = copy_vae(tmp_path, latents_mean=None, latents_std=None)
  cfg = latent_config(tmp_path / 'run', vae, objective='eps', timesteps=10)
  trainer.train(with_steps(cfg, 2))
  model, saved = checkpoint_state(cfg, 2)
  record = saved[LATENTS_RECORD]
  clips = training_clips(cfg, latent.STATS_CLIPS, seed=cfg.trainer.seed)
  measured = latent.measure_stats(latent.LatentSpace.load(str(vae)), clips, 2, cfg.trainer.seed)
  np.testing.assert_allclose(record['mean'], measured.mean, rtol=1e-5)
  np.testing.assert_allclose(record['std'], measured.std, rtol=1e-5)
  assert np.all(np.abs(record['mean']) > 1e-4)  # measured, not zeros
  np.testing.assert_allclose(model.latents.mean, record['mean'])
  videos, _ = sample_checkpoint(cfg, str(tmp_path / 'run' / 'checkpoints'), batch_size=1)
  assert videos.shape == (1, 5, 16, 16, 3)


def test_another_autoencoder_is_refused(tmp_path, straight):
  other = copy_vae(tmp_path, latents_mean=[0.0] * 4)  # the same sizes, other statistics
  weights = other / WEIGHTS
  data = bytearray(weights.read_bytes())
  data[-8:] = b'\x00\x00\x80\x3f\x00\x00\x80\x3f'  # the last two floats of the last tensor: 1.0
  weights.write_bytes(bytes(data))
  folder = str(pathlib.Path(straight.trainer.results_folder) / 'checkpoints')
  cfg = dataclasses.replace(
    straight, diffusion=dataclasses.replace(straight.diffusion, vae=str(other))
  )
  with pytest.raises(SamplingError, match='holds other weights'):
    sample_checkpoint(cfg, folder, batch_size=1)
  pixel = dataclasses.replace(straight, diffusion=dataclasses.replace(straight.diffusion, vae=None))
  with pytest.raises(SamplingError, match='set diffusion.vae'):
    sample_checkpoint(pixel, folder, batch_size=1)


def test_pixel_sizes_the_autoencoder_cannot_take_stop_the_run(tmp_path):
  cfg = latent_config(tmp_path / 'frames', FIXTURES / 'wan_like', num_frames=6)
  with pytest.raises(TrainingError, match='set it to 9'):
    trainer.train(cfg)
  cfg = latent_config(tmp_path / 'size', FIXTURES / 'wan_like', image_size=20)
  with pytest.raises(TrainingError, match='image_size 20 is not a multiple'):
    trainer.train(cfg)
