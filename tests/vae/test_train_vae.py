"""train-vae end to end on a tiny VAE: it learns, resumes bit-identically (after a
stop signal too, in a subprocess), logs its held-out PSNR/SSIM and GIFs, and
load_vae reproduces a checkpoint's reconstructions."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict, config_to_dict
from video_diffusion.reporting.run_log import read_metrics
from video_diffusion.train import vae_loop
from video_diffusion.train.optimizer import make_optimizer
from video_diffusion.train.preemption import PREEMPTED_EXIT_STATUS, Preempted
from video_diffusion.train.setup import TrainingError
from video_diffusion.train.state import init_train_state
from video_diffusion.vae import load_vae
from video_diffusion.vae.training import split_vae

pytestmark = pytest.mark.slow  # trains models, and a subprocess

TINY = {
  'unet': dict(channels=1),
  'diffusion': dict(image_size=16, num_frames=5, channels=1),
  'vae': dict(
    base_dim=4,
    dim_mult=[1, 2],
    z_dim=4,
    num_res_blocks=1,
    temperal_downsample=[True],
    in_channels=1,
    out_channels=1,
  ),
  'vae_trainer': dict(eval_num_videos=2),
  'trainer': dict(
    train_batch_size=2,
    gradient_accumulate_every=1,
    train_lr=1e-3,
    train_num_steps=4,
    checkpoint_every_steps=2,
    data_workers=0,
    step_start_ema=1,
    update_ema_every=1,
    ema_decay=0.9,
    max_to_keep=None,
  ),
}


def tiny_data(results, **trainer_keys):
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer'].update(results_folder=str(results), **trainer_keys)
  return data


def tiny_config(results, **trainer_keys):
  return config_from_dict(tiny_data(results, **trainer_keys))


def with_steps(cfg, steps):
  return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, train_num_steps=steps))


def restore(cfg, step):
  _, params, _ = split_vae(cfg.vae, 0, abstract=True)
  tx = make_optimizer(cfg.trainer)
  target = jax.eval_shape(lambda p: init_train_state(p, tx, 0), params)
  folder = os.path.join(cfg.trainer.results_folder, 'checkpoints')
  with Checkpointer(folder, read_only=True) as ckpt:
    return ckpt.restore(step, target)


def assert_same_state(a_cfg, b_cfg, step):
  """Checkpoint `step` of two runs is bit-identical, data position included."""
  a_state, a_data, _ = restore(a_cfg, step)
  b_state, b_data, _ = restore(b_cfg, step)
  assert int(a_state.step) == int(b_state.step) == step
  assert a_data == b_data
  for (path, a), b in zip(jax.tree.leaves_with_path(a_state), jax.tree.leaves(b_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The tiny VAE trained 4 steps without a stop (checkpoints 2 and 4), with TensorBoard."""
  results = tmp_path_factory.mktemp('straight')
  cfg = tiny_config(results, tensorboard_dir=str(results / 'tb'))
  assert vae_loop.train_vae(cfg).checkpoint_steps == [2, 4]
  return cfg


def test_the_loss_goes_down_on_a_fixed_batch():
  from video_diffusion.data.synthetic import moving_digits
  from video_diffusion.train.step import StepOptions
  from video_diffusion.train.vae_step import make_vae_train_step

  cfg = tiny_config('unused', train_lr=3e-3)
  graphdef, params, rest = split_vae(cfg.vae, 0)
  tx = make_optimizer(cfg.trainer)
  options = StepOptions.from_config(cfg)
  step = jax.jit(make_vae_train_step(graphdef, rest, tx, options, cfg.vae_trainer))
  clips = [moving_digits(0, i, num_frames=5, image_size=16, channels=1) for i in range(2)]
  videos = np.stack([clip['video'] for clip in clips])
  state, losses = init_train_state(params, tx, 0), []
  for _ in range(8):
    state, metrics = step(state, videos)
    losses.append(float(metrics['loss']))
    assert np.isclose(metrics['loss'], metrics['recon_loss'] + 1e-6 * metrics['kl'])
  assert losses[-1] < 0.8 * losses[0], losses


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path, straight):
  split = tiny_config(tmp_path / 'split', train_num_steps=2)
  assert vae_loop.train_vae(split).checkpoint_steps == [2]
  assert vae_loop.train_vae(with_steps(split, 4), resume_step=-1).checkpoint_steps == [2, 4]
  assert_same_state(straight, split, 4)
  state, _, config = restore(straight, 4)
  assert config['model'] == 'vae' and config['vae']['base_dim'] == 4
  leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params))
  assert any(not np.array_equal(p, e) for p, e in leaves)  # the EMA is its own


def test_a_sigterm_checkpoints_the_step_and_resume_continues_exactly(
  tmp_path, straight, monkeypatch
):
  one_step = vae_loop._VAERun.train_one_step

  def step_with_sigterm(run):
    if run.step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 3 is in flight
    return one_step(run)

  monkeypatch.setattr(vae_loop._VAERun, 'train_one_step', step_with_sigterm)
  cfg = tiny_config(tmp_path)
  with pytest.raises(Preempted, match=r'^SIGTERM: stopped at step 3, which is'):
    vae_loop.train_vae(cfg)
  monkeypatch.setattr(vae_loop._VAERun, 'train_one_step', one_step)
  assert vae_loop.train_vae(cfg, resume_step=-1).checkpoint_steps == [2, 3, 4]
  assert_same_state(straight, cfg, 4)


def test_the_command_survives_sigterm_and_resumes(tmp_path, straight):
  """train-vae in a subprocess: SIGTERM after a step saves it and exits 143 with
  one `preempted:` line; --resume_step -1 continues to the straight run's step 4."""
  data = tiny_data(tmp_path / 'run', train_num_steps=1000, checkpoint_every_steps=1000)
  config = tmp_path / 'run.yaml'
  config.write_text(yaml.safe_dump(data))
  metrics = tmp_path / 'run' / 'metrics.jsonl'
  argv = [sys.executable, '-m', 'video_diffusion', 'train-vae', '--config', str(config)]
  proc = subprocess.Popen(
    argv + ['--resume_step', '-1'], cwd=ROOT, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 600
  while proc.poll() is None and time.monotonic() < deadline:
    if metrics.exists() and read_metrics(metrics):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == PREEMPTED_EXIT_STATUS, err[-3000:]
  assert 'Traceback' not in err
  (line,) = [line for line in err.splitlines() if line.startswith('preempted:')]
  assert 'continue with --resume_step -1' in line
  stopped = read_metrics(metrics)[-1]['step']
  assert 1 <= stopped < 4, 'stopped too late to resume to step 4'
  with Checkpointer(str(tmp_path / 'run' / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == [stopped]
  done = subprocess.run(
    argv + ['--resume_step', '-1', 'trainer.train_num_steps=4'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'trained to step 4' in done.stdout
  assert_same_state(straight, config_from_dict(data), 4)


def test_held_out_psnr_ssim_and_gifs_are_logged(straight):
  results = straight.trainer.results_folder
  records = read_metrics(os.path.join(results, 'metrics.jsonl'))
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  scored = {r['step']: r for r in records if 'val_psnr' in r}
  assert sorted(scored) == [2, 4]
  for r in scored.values():
    assert 0 < r['val_psnr'] < 100 and -1 <= r['val_ssim'] <= 1
    assert {'recon_loss', 'kl', 'lr', 'grad_norm', 'step_time'} < r.keys()
  for step in (2, 4):
    assert os.path.isfile(os.path.join(results, 'samples', f'reconstruction-{step}.gif'))
  assert os.path.isfile(os.path.join(results, 'loss_curve.png'))
  acc = EventAccumulator(os.path.join(results, 'tb'))
  acc.Reload()
  assert [e.step for e in acc.Scalars('val/psnr')] == [2, 4]
  assert [e.step for e in acc.Scalars('train/recon_loss')] == [1, 2, 3, 4]
  image = acc.Images('samples/reconstruction')[-1]
  # 2 clips in a 2 x 1 grid, each 16 x 32 (clip | reconstruction), 5 frames 8 a row
  assert image.step == 4 and (image.width, image.height) == (5 * 32, 2 * 16 + 1)


def test_load_vae_reproduces_the_checkpoints_reconstructions(straight):
  from video_diffusion.eval.reconstruction import HeldOutReconstructions

  folder = os.path.join(straight.trainer.results_folder, 'checkpoints')
  vae = load_vae(folder)
  assert vae.config == straight.vae
  scores, _ = HeldOutReconstructions(straight, 2, seed=straight.trainer.seed)(vae)
  logged = read_metrics(os.path.join(straight.trainer.results_folder, 'metrics.jsonl'))[-1]
  assert scores['psnr'] == pytest.approx(logged['val_psnr'], rel=1e-5)
  assert scores['ssim'] == pytest.approx(logged['val_ssim'], rel=1e-5, abs=1e-6)
  state, _, _ = restore(straight, 2)
  ema = load_vae(os.path.join(folder, '2'), ema=True)
  from flax import nnx

  loaded = jax.tree.leaves(nnx.to_pure_dict(nnx.state(ema, nnx.Param)))
  expected = jax.tree.leaves(state.ema_params)
  assert all(np.array_equal(a, b) for a, b in zip(loaded, expected))


def test_load_vae_refuses_a_diffusion_checkpoint(tmp_path):
  import jax.numpy as jnp
  import optax

  cfg = tiny_config(tmp_path)
  with Checkpointer(str(tmp_path / 'checkpoints')) as ckpt:
    state = init_train_state({'w': jnp.zeros(2)}, optax.sgd(0.1), 0)
    ckpt.save(state, data_state={}, config=config_to_dict(cfg))
  with pytest.raises(ValueError, match='holds the checkpoints of a diffusion model'):
    load_vae(tmp_path / 'checkpoints')


def test_resuming_with_another_vae_is_refused(tmp_path, straight):
  other = tiny_data(straight.trainer.results_folder)
  other['vae']['base_dim'] = 8
  with pytest.raises(TrainingError, match=r'vae.base_dim=4 in the checkpoint, 8 in the config'):
    vae_loop.train_vae(config_from_dict(other), resume_step=-1)
