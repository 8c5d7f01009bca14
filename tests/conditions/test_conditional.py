"""Conditional models end to end: class, text and vector conditions, frame
conditioning (prediction, interpolation, longer videos), every objective.

Tiny models train two steps in this process (trainer.train), then sample.py's
command runs in this process too (cli.main), so compilations are shared.
"""

import dataclasses

import numpy as np
import pytest
from conftest import FIXTURES

from video_diffusion import cli
from video_diffusion.conditions import encoding as conditioning
from video_diffusion.config import config_from_dict
from video_diffusion.data import video_io
from video_diffusion.train import loop as trainer

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

TINY_BERT = FIXTURES / 'tiny_bert'


def tiny(tmp, unet=None, diffusion=None, trainer_keys=None):
  data = {
    'unet': dict(
      dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8, **(unet or {})
    ),
    'diffusion': dict(
      image_size=8, num_frames=4, channels=1, timesteps=8, loss_type='l2', **(diffusion or {})
    ),
    'trainer': dict(
      train_batch_size=2,
      gradient_accumulate_every=1,
      train_num_steps=2,
      checkpoint_every_steps=2,
      save_and_sample_every=2,
      num_sample_rows=2,
      data_workers=0,
      results_folder=str(tmp / 'results'),
      **(trainer_keys or {}),
    ),
  }
  return config_from_dict(data)


def sample_cli(cfg, tmp, *flags):
  """sample.py on cfg's run; returns the frames of each sample_{i}.gif."""
  config = tmp / 'run.yaml'
  from video_diffusion.config import dump_config

  dump_config(cfg, config)
  out = tmp / 'out'
  cli.main(
    [
      'sample',
      '--config',
      str(config),
      '--output-path',
      str(out),
      '--load-ema-params',
      '--batch-size',
      '2',
      *map(str, flags),
    ]
  )
  return [video_io.read_video(out / f'sample_{i}.gif') for i in (1, 2)]


@pytest.fixture(scope='module')
def class_run(tmp_path_factory):
  """Class-conditional, frame-conditioned, v-prediction with min-SNR weights."""
  tmp = tmp_path_factory.mktemp('class')
  cfg = tiny(
    tmp,
    unet={'num_classes': 10},
    diffusion={'frame_conditioning': True, 'objective': 'v', 'loss_weighting': 'min_snr'},
    trainer_keys={'cond_drop_prob': 0.5, 'cond_scale': 2.0},
  )
  return cfg, tmp, trainer.train(cfg)


def test_class_conditional_training_writes_conditional_samples(class_run):
  cfg, tmp, result = class_run
  assert result.step == 2 and np.isfinite(result.loss)
  grid = video_io.read_video(tmp / 'results' / 'samples' / 'sample-2.gif')
  assert grid.shape[0] == 4


def test_prime_continues_a_clip_and_extends_it(class_run, tmp_path):
  cfg, _, _ = class_run
  clip = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  video_io.write_gif(tmp_path / 'clip.gif', clip)
  videos = sample_cli(
    cfg,
    tmp_path,
    '--sampler',
    'ddim',
    '--steps',
    3,
    '--class',
    3,
    7,
    '--prime',
    tmp_path / 'clip.gif',
    '--num-cond-frames',
    2,
    '--num-frames',
    7,
  )
  for video in videos:
    assert video.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(video[:2], clip[-2:])  # the clip's last two frames


def test_interpolate_fills_between_two_clips(class_run, tmp_path):
  cfg, _, _ = class_run
  rng = np.random.default_rng(1)
  a, b = (rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8) for _ in range(2))
  video_io.write_gif(tmp_path / 'a.gif', a)
  video_io.write_gif(tmp_path / 'b.gif', b)
  videos = sample_cli(
    cfg,
    tmp_path,
    '--sampler',
    'dpmpp',
    '--steps',
    3,
    '--interpolate',
    tmp_path / 'a.gif',
    tmp_path / 'b.gif',
  )
  for video in videos:
    assert video.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(video[0], a[-1])
    np.testing.assert_array_equal(video[-1], b[0])


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--class', 12], '--class 12 is out of range: the model has 10 classes'),
    (['--text', 'a cat'], '--text given but this model takes --class'),
    (['--sampler', 'ddpm', '--steps', 3], 'ddpm walks all 8 timesteps'),
    (['--recon-guidance', 2], '--recon-guidance is for models trained without'),
    (['--prime', 'no/such.gif'], 'no/such.gif'),
  ],
)
def test_bad_sampling_requests_are_one_clear_error(class_run, tmp_path, capsys, flags, message):
  cfg, _, _ = class_run
  with pytest.raises(SystemExit) as info:
    sample_cli(cfg, tmp_path, *flags)
  assert info.value.code == 2
  assert message in capsys.readouterr().err


def test_text_conditional_model_trains_and_samples(tmp_path):
  cfg = tiny(
    tmp_path,
    unet={'use_bert_text_cond': True, 'cond_dim': 16},
    diffusion={'objective': 'x0'},
    trainer_keys={'text_encoder_path': str(TINY_BERT), 'text_max_length': 16},
  )
  result = trainer.train(cfg)
  assert result.step == 2 and np.isfinite(result.loss)
  videos = sample_cli(
    cfg,
    tmp_path,
    '--sampler',
    'ddim',
    '--steps',
    2,
    '--text',
    'a small red digit',
    '--text',
    'the big blue digit',
  )
  assert all(v.shape == (4, 8, 8, 1) for v in videos)


def test_text_encoder_width_must_match_the_model(tmp_path):
  cfg = tiny(
    tmp_path,
    unet={'use_bert_text_cond': True},
    trainer_keys={'text_encoder_path': str(TINY_BERT), 'text_max_length': 16},
  )
  with pytest.raises(
    trainer.TrainingError,
    match='makes 16-wide embeddings but the model takes 768; set unet.cond_dim: 16',
  ):
    trainer.train(cfg)
  no_path = dataclasses.replace(
    cfg, trainer=dataclasses.replace(cfg.trainer, text_encoder_path=None)
  )
  with pytest.raises(trainer.TrainingError, match='needs trainer.text_encoder_path'):
    trainer.train(no_path)


def test_vector_conditions_from_the_command_line(tmp_path):
  cfg = tiny(tmp_path, unet={'cond_dim': 10})
  vectors = np.eye(10, dtype=np.float32)[:3]
  np.save(tmp_path / 'c.npy', vectors)
  raw = conditioning.requested_condition(cfg, 4, cond_path=str(tmp_path / 'c.npy'))
  np.testing.assert_array_equal(raw, vectors[[0, 1, 2, 0]])
  with pytest.raises(conditioning.ConditionError, match=r'expected \(n, 10\) floats'):
    np.save(tmp_path / 'bad.npy', np.zeros((2, 3)))
    conditioning.requested_condition(cfg, 4, cond_path=str(tmp_path / 'bad.npy'))
  with pytest.raises(conditioning.ConditionError, match='pass --cond FILE.npy'):
    conditioning.requested_condition(cfg, 4)
  plain = tiny(tmp_path)
  with pytest.raises(conditioning.ConditionError, match='this model is unconditional'):
    conditioning.requested_condition(plain, 4, labels=[1])


def test_class_labels_steer_the_unet_and_guidance_is_one_batched_pair():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from video_diffusion import Unet3D

  unet = Unet3D(
    dim=8,
    dim_mults=(1,),
    channels=1,
    attn_heads=2,
    attn_dim_head=8,
    num_classes=10,
    rngs=nnx.Rngs(0),
  )
  x = jax.random.normal(jax.random.key(0), (2, 2, 4, 4, 1))
  t = jnp.array([3, 5])
  labels = jnp.array([3, 7])

  @nnx.jit
  def outputs(unet, x, t, labels):
    return (
      unet(x, t, labels),
      unet(x, t, labels[::-1]),
      unet(x, t, labels, null_cond_prob=1.0),
      unet(x, t, labels[::-1], null_cond_prob=1.0),
      unet.forward_with_cond_scale(x, t, labels, cond_scale=3.0),
    )

  out, swapped, null, null_swapped, guided = outputs(unet, x, t, labels)
  assert not np.allclose(out, swapped, atol=1e-5)
  np.testing.assert_allclose(null, null_swapped, atol=1e-6)
  np.testing.assert_allclose(guided, null + 3.0 * (out - null), atol=1e-5)
