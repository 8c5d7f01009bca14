"""train.py / sample.py / video-diffusion end to end in subprocesses, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from video_diffusion.data import video_io

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

TINY = {
  'unet': dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8),
  'diffusion': dict(image_size=16, num_frames=4, channels=1, timesteps=8, loss_type='l2'),
  'trainer': dict(
    train_batch_size=2,
    gradient_accumulate_every=1,
    train_num_steps=4,
    checkpoint_every_steps=2,
    save_and_sample_every=4,
    num_sample_rows=2,
    data_workers=0,
    step_start_ema=2,
    update_ema_every=1,
    max_to_keep=2,
    add_loss_plot=True,
    profile_flush_step=3,
  ),
}


def read_scalars(logdir):
  """{tag: [(step, value)]} read by TensorBoard's own reader."""
  acc = EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def run(script, *args, cwd=ROOT, check=True):
  proc = subprocess.run(
    [sys.executable, script, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
  )
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A tiny config trained 4 steps through train.py (shared by the tests below)."""
  root = tmp_path_factory.mktemp('cli')
  results = root / 'results'
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer'].update(results_folder=str(results), tensorboard_dir=str(results / 'tb'))
  config = root / 'tiny.yaml'
  config.write_text(yaml.safe_dump(data))
  proc = run('train.py', '--config', config, '--rng_seed', 3)
  return config, results, proc


def test_train_writes_checkpoints_logs_plot_and_sample_grid(tiny_run):
  config, results, proc = tiny_run
  assert 'trained to step 4' in proc.stdout
  assert 'step 4/4' in proc.stderr and 'loss' in proc.stderr
  assert sorted(os.listdir(results / 'checkpoints')) == ['2', '4']
  records = [json.loads(line) for line in (results / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert all({'loss', 'lr', 'grad_norm', 'step_time'} <= r.keys() for r in records)
  assert (results / 'loss_curve.png').stat().st_size > 1000
  scalars = read_scalars(results / 'tb')
  assert [step for step, _ in scalars['train/loss']] == [1, 2, 3, 4]
  np.testing.assert_allclose(
    [v for _, v in scalars['train/loss']], [r['loss'] for r in records], rtol=1e-6
  )
  saved = yaml.safe_load((results / 'config.yaml').read_text())
  assert saved['trainer']['seed'] == 3  # --rng_seed
  grid = video_io.read_video(results / 'samples' / 'sample-4.gif')
  assert grid.shape[:3] == (4, 2 * 16 + 1, 2 * 16 + 1)
  assert (results / 'samples' / 'loss-4.png').stat().st_size > 1000  # add_loss_plot
  traces = [f for _, _, files in os.walk(results / 'profile') for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces  # profile_flush_step


def test_resume_continues_from_the_newest_checkpoint(tiny_run):
  config, results, _ = tiny_run
  proc = run(
    'train.py',
    '--config',
    config,
    '--resume_step',
    -1,
    '--rng_seed',
    3,
    'trainer.train_num_steps=6',
  )
  assert 'trained to step 6' in proc.stdout
  assert sorted(os.listdir(results / 'checkpoints')) == ['4', '6']  # max_to_keep 2
  steps = [
    json.loads(line)['step'] for line in (results / 'metrics.jsonl').read_text().splitlines()
  ]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_sample_writes_one_gif_per_video_and_a_grid(tiny_run, tmp_path):
  config, results, _ = tiny_run
  out = tmp_path / 'out'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'video_diffusion',
      'sample',
      '--checkpoint-path',
      str(results / 'checkpoints'),
      '--step',
      '4',
      '--output-path',
      str(out),
      '--config',
      str(config),
      '--load-ema-params',
      '--batch-size',
      '4',
      '--seed',
      '1',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'EMA weights' in proc.stdout
  assert sorted(os.listdir(out)) == ['grid.gif'] + [f'sample_{i}.gif' for i in range(1, 5)]
  video = video_io.read_video(out / 'sample_1.gif')
  assert video.shape == (4, 16, 16, 1) and video.dtype == np.uint8
  assert video.std() > 0  # not a blank image
  grid = video_io.read_video(out / 'grid.gif')
  assert grid.shape == (4, 33, 33, 1)


def test_sample_of_a_missing_step_lists_the_steps_available(tiny_run, tmp_path):
  config, results, _ = tiny_run
  proc = run(
    'sample.py',
    '--checkpoint-path',
    results / 'checkpoints',
    '--step',
    5,
    '--output-path',
    tmp_path,
    '--config',
    config,
    check=False,
  )
  assert proc.returncode == 2
  assert 'no checkpoint for step 5' in proc.stderr and 'steps available: ' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_sample_with_another_model_config_is_refused(tiny_run, tmp_path):
  config, results, _ = tiny_run
  proc = run(
    'sample.py',
    '--checkpoint-path',
    results / 'checkpoints',
    '--config',
    config,
    'unet.dim=16',
    '--output-path',
    tmp_path,
    check=False,
  )
  assert proc.returncode == 2
  assert 'unet.dim=8 in the checkpoint, 16 in the config' in proc.stderr


@pytest.mark.parametrize(
  'overrides, message',
  [
    (['trainer.train_lr=abc'], 'trainer.train_lr must be a float'),
    (['trainer.train_lrr=1e-4'], 'unknown key trainer.train_lrr; did you mean trainer.train_lr?'),
    (['trainer.num_frames=7'], 'trainer.num_frames is 7 but diffusion.num_frames is 4'),
    (['unet.channels=3'], 'unet.channels is 3 but diffusion.channels is 1'),
    (['trainer.dataset_path=/nonexistent/clips'], '/nonexistent/clips'),
  ],
)
def test_bad_config_or_data_is_one_clear_error(tmp_path, overrides, message):
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer']['results_folder'] = str(tmp_path / 'results')
  config = tmp_path / 'c.yaml'
  config.write_text(yaml.safe_dump(data))
  proc = run('train.py', '--config', config, *overrides, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'results' / 'checkpoints').exists() or not os.listdir(
    tmp_path / 'results' / 'checkpoints'
  )


def test_empty_video_folder_is_an_error_naming_it(tmp_path):
  (tmp_path / 'clips').mkdir()
  proc = run(
    'train.py',
    '--config',
    ROOT / 'configs' / 'config.yaml',
    f'trainer.dataset_path={tmp_path / "clips"}',
    f'trainer.results_folder={tmp_path / "r"}',
    check=False,
  )
  assert proc.returncode == 2
  assert str(tmp_path / 'clips') in proc.stderr and 'Traceback' not in proc.stderr


def test_missing_config_file_and_help():
  proc = run('train.py', '--config', 'no/such.yaml', check=False)
  assert proc.returncode == 2 and 'no/such.yaml: config file not found' in proc.stderr
  for script in ('train.py', 'sample.py'):
    text = run(script, '--help').stdout
    flags = (
      ['--config', '--rng_seed', '--resume_step']
      if script == 'train.py'
      else [
        '--checkpoint-path',
        '--step',
        '--output-path',
        '--config',
        '--seed',
        '--load-ema-params',
        '--batch-size',
      ]
    )
    assert all(flag in text for flag in flags), text
  text = subprocess.run(
    [sys.executable, '-m', 'video_diffusion', '--help'], cwd=ROOT, capture_output=True, text=True
  ).stdout
  assert 'train' in text and 'sample' in text


def test_sample_continues_a_clip_with_reconstruction_guidance(tiny_run, tmp_path):
  """An unconditional model (no frame_conditioning) continues a clip by
  replacement with reconstruction guidance, extended past its 4 frames."""
  config, results, _ = tiny_run
  clip = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  video_io.write_gif(tmp_path / 'clip.gif', clip)
  out = tmp_path / 'out'
  run(
    'sample.py',
    '--checkpoint-path',
    results / 'checkpoints',
    '--config',
    config,
    '--output-path',
    out,
    '--batch-size',
    2,
    '--sampler',
    'ddim',
    '--steps',
    3,
    '--prime',
    tmp_path / 'clip.gif',
    '--num-cond-frames',
    2,
    '--recon-guidance',
    2,
    '--num-frames',
    6,
  )
  video = video_io.read_video(out / 'sample_2.gif')
  assert video.shape == (6, 16, 16, 1)
  np.testing.assert_array_equal(video[:2], clip[1:])
