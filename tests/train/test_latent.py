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
from conftest import latent_config
from flax import nnx
from test_cotrain import image_folder

from video_diffusion import cli
from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config.vae import LATENTS_RECORD
from video_diffusion.data import video_io
from video_diffusion.data.errors import DataError
from video_diffusion.data.sources import make_source
from video_diffusion.data.spec import DataSpec
from video_diffusion.eval.evaluate import held_out_clips, training_clips
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


def assert_same_params(cfg_a, cfg_b, step, atol=0.0):
  """Two runs' checkpoint `step` hold the same params (bit for bit with atol 0)."""
  a, _ = checkpoint_state(cfg_a, step)
  b, _ = checkpoint_state(cfg_b, step)
  for (path, x), y in zip(_flat(a.params).items(), _flat(b.params).values()):
    if atol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, err_msg=path)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)


def test_a_resumed_latent_run_is_bit_identical(tmp_path, straight):
  split = latent_config(tmp_path / 'split', FIXTURES / 'wan_like')
  trainer.train(with_steps(split, 2))
  trainer.train(split, resume_step=-1)
  assert_same_params(straight, split, 4)


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
  # --interpolate: the last 4 frames are encoded after the first 1 + 4j, as if they
  # followed them; 2 latent frames leave none to generate.
  ending = np.random.default_rng(1).uniform(0, 1, (6, 16, 16, 3)).astype(np.float32)
  request = space.sampling_request(first=given, last=ending)
  both = np.concatenate([given[-1:], ending[-4:]])[None]
  encoded = latent.unnormalize_img(space.encode_videos(space.params, latent.normalize_img(both)))
  np.testing.assert_allclose(request['first'], encoded[0, :1], atol=1e-5)
  np.testing.assert_allclose(request['last'], encoded[0, 1:], atol=1e-5)
  with pytest.raises(SamplingError, match='leave none of the 2 to generate'):
    sample_checkpoint(straight, folder, batch_size=1, first=given, last=ending)
  with pytest.raises(SamplingError, match='give at least 4'):
    sample_checkpoint(straight, folder, batch_size=1, first=given, last=ending[:3])


def test_a_gaussian_unet3d_measures_missing_statistics_and_samples(tmp_path):
  """An autoencoder without latents_mean/std: the run measures them on the first
  training clips and keeps them in its checkpoints; an eps Unet3D samples too."""
  vae = copy_vae(tmp_path, latents_mean=None, latents_std=None)
  unet = dict(dim=8, dim_mults=[1], attn_heads=2, attn_dim_head=8)
  cfg = latent_config(
    tmp_path / 'run', vae, unet=unet, backbone='unet3d', objective='eps', timesteps=10
  )
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


def other_autoencoder(tmp_path):
  """wan_like with the same sizes and other weights and statistics."""
  other = copy_vae(tmp_path, latents_mean=[0.0] * 4)
  weights = other / WEIGHTS
  data = bytearray(weights.read_bytes())
  data[-8:] = b'\x00\x00\x80\x3f\x00\x00\x80\x3f'  # the last two floats of the last tensor: 1.0
  weights.write_bytes(bytes(data))
  return other


def test_another_autoencoder_is_refused(tmp_path, straight):
  other = other_autoencoder(tmp_path)
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


@pytest.fixture(scope='module')
def latent_shards(tmp_path_factory):
  """A folder of 8 RGB 5-frame GIFs of 16x16, and `prepare --vae` shards of their
  posterior moments under wan_like."""
  root = tmp_path_factory.mktemp('shards')
  (root / 'videos').mkdir()
  for k, clip in enumerate(np.random.default_rng(3).integers(0, 256, (8, 5, 16, 16, 3))):
    video_io.write_gif(root / 'videos' / f'{k}.gif', clip.astype(np.uint8))
  argv = ['prepare', str(root / 'videos'), str(root / 'moments'), '--num-frames', '5']
  argv += ['--image-size', '16', '--channels', '3', '--shards', '2']
  cli.main(argv + ['--vae', str(FIXTURES / 'wan_like')])
  return root


def shard_config(results, dataset, vae=FIXTURES / 'wan_like', **diffusion_keys):
  cfg = latent_config(results, vae, **diffusion_keys)
  return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, dataset_path=dataset))


def test_prepare_packs_the_posterior_moments_of_each_clip(latent_shards):
  source = make_source(DataSpec.from_config(shard_config('r', str(latent_shards / 'moments'))))
  space = latent.LatentSpace.load(str(FIXTURES / 'wan_like'))
  assert source.latents == {
    'vae': str(FIXTURES / 'wan_like'),
    'fingerprint': space.fingerprint,
    'stored': 'moments',
    'shape': [2, 2, 2, 8],
  }
  videos = training_clips(shard_config('r', str(latent_shards / 'videos')), 8)
  assert videos.shape == (8, 5, 16, 16, 3)
  posterior = space.posterior(space.params, videos[5:6])
  expected = np.concatenate([posterior.mean, posterior.logvar], axis=-1)[0]
  assert source[5]['video'].dtype == np.float32
  np.testing.assert_allclose(source[5]['video'], expected, atol=1e-5)


def test_latent_shards_train_as_their_videos_do_without_the_encoder(
  tmp_path, latent_shards, monkeypatch
):
  """Two steps on the videos (encoded on the fly, posterior means) and on their
  shards give the same weights; on shards the encoder is never called, and a
  resumed shard run (posterior samples) is bit-identical."""
  videos = shard_config(tmp_path / 'v', str(latent_shards / 'videos'), vae_posterior='mean')
  trainer.train(with_steps(videos, 2))
  assert held_out_clips(videos, 2)[0].dtype == np.uint8

  def no_encoder(*args, **kwargs):
    raise AssertionError('the encoder ran on latent shards')

  shards = str(latent_shards / 'moments')
  monkeypatch.setattr(latent.LatentSpace, 'posterior', no_encoder)
  packed = shard_config(tmp_path / 'p', shards, vae_posterior='mean')
  trainer.train(with_steps(packed, 2))
  assert_same_params(videos, packed, 2, atol=1e-5)
  # FVD and validation clips of latent shards are cut from the videos they came from.
  np.testing.assert_array_equal(held_out_clips(packed, 2)[0], held_out_clips(videos, 2)[0])

  straight = shard_config(tmp_path / 's', shards)
  trainer.train(straight)
  split = shard_config(tmp_path / 'split', shards)
  trainer.train(with_steps(split, 2))
  trainer.train(split, resume_step=-1)
  assert_same_params(straight, split, 4)


def test_latent_shards_of_another_autoencoder_or_a_pixel_model_are_refused(tmp_path, latent_shards):
  shards = str(latent_shards / 'moments')
  pixel = shard_config(tmp_path / 'px', shards)
  pixel = dataclasses.replace(pixel, diffusion=dataclasses.replace(pixel.diffusion, vae=None))
  with pytest.raises(TrainingError, match='holds the latents of .* set diffusion.vae'):
    trainer.train(pixel)
  other = shard_config(tmp_path / 'o', shards, vae=other_autoencoder(tmp_path))
  with pytest.raises(TrainingError, match='prepare the shards again'):
    trainer.train(other)
  flipped = shard_config(tmp_path / 'f', shards)
  flipped = dataclasses.replace(
    flipped, trainer=dataclasses.replace(flipped.trainer, random_flip=True)
  )
  with pytest.raises(DataError, match='random_flip: false'):
    trainer.train(flipped)


def test_cotraining_encodes_each_image_of_a_stack_alone(tmp_path):
  """Image stacks' latent frames are their first frames encoded one by one (so they
  stay independent), videos are encoded whole; a co-training latent run trains."""
  space = latent.LatentSpace.load(str(FIXTURES / 'wan_like'))
  stacks = np.random.default_rng(1).integers(0, 256, (2, 5, 16, 16, 3), np.uint8)
  latents = np.asarray(space.encode_batch(space.params, stacks, np.array([True, False])))
  assert latents.shape == (2, 2, 2, 2, 4)
  for frame in range(2):
    alone = space.encode_videos(space.params, stacks[:1, frame : frame + 1])
    np.testing.assert_allclose(latents[0, frame], alone[0, 0], atol=1e-5)
  np.testing.assert_allclose(latents[1:], space.encode_videos(space.params, stacks[1:]), atol=1e-5)
  cfg = latent_config(tmp_path / 'run', FIXTURES / 'wan_like')
  images = image_folder(tmp_path / 'images')
  trainer_keys = dict(image_dataset_path=str(images), image_fraction=0.5, train_num_steps=2)
  cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, **trainer_keys))
  assert trainer.train(cfg).checkpoint_steps == [2]


def test_frames_larger_than_a_tile_decode_tile_by_tile(monkeypatch):
  """Sampled latents of frames beyond the autoencoder's 256-pixel tiles decode in
  tiles (diffusers' enable_tiling), so large videos stay within memory."""
  from video_diffusion.vae import wan

  calls = []
  tiled = wan.tiled_decode
  monkeypatch.setattr(wan, 'tiled_decode', lambda *a, **k: calls.append(1) or tiled(*a, **k))
  space = latent.LatentSpace.load(str(FIXTURES / 'wan_like'))
  decode = latent.decoder(space)
  assert decode(np.zeros((1, 1, 2, 2, 4), np.float32)).shape == (1, 1, 16, 16, 3)
  assert calls == []
  assert decode(np.zeros((1, 1, 40, 40, 4), np.float32)).shape == (1, 1, 320, 320, 3)
  assert calls == [1]


def test_eval_scores_decoded_videos_against_pixel_clips(straight, monkeypatch):
  """`eval` of a latent checkpoint samples latents, decodes them and scores the
  videos against held-out pixel clips (I3D stood in for by channel means here;
  tests/eval runs the real one)."""
  from video_diffusion.diffusion.samplers import get_sampler
  from video_diffusion.eval import evaluate

  seen = []

  def features(videos, label=''):
    seen.append((label, videos.shape, videos.dtype.kind))
    return np.asarray(videos, np.float64).mean(axis=(1, 2, 3))

  monkeypatch.setattr(evaluate.fvd, 'FeatureExtractor', lambda: features)
  folder = str(pathlib.Path(straight.trainer.results_folder) / 'checkpoints')
  euler = get_sampler('euler', straight.diffusion.timesteps, 2, flow=True)
  result = evaluate.evaluate_checkpoint(
    straight,
    folder,
    step=None,
    ema=True,
    sampler=euler,
    sampler_name='euler',
    num_videos=4,
    batch_size=2,
  )
  assert [shape for _, shape, _ in seen] == [(4, 5, 16, 16, 3)] * 3
  assert seen[-1][0] == 'generated I3D' and seen[-1][2] == 'f'  # decoded, in [0, 1]
  assert result['step'] == 4 and np.isfinite(result['fvd']) and result['fvd'] > 0
