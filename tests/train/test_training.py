"""The training loop in-process: exact resume, divergence stop, checkpoint safety."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import ROOT, TINY_DIT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict, dump_config
from video_diffusion.data.prepare import prepare
from video_diffusion.data.spec import DataSpec
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.reporting.run_log import read_metrics
from video_diffusion.train import loop as trainer
from video_diffusion.train.optimizer import make_optimizer
from video_diffusion.train.state import init_train_state

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

# The loop does not depend on the backbone: a tiny DiT (Gaussian, eps) compiles in
# a fraction of the Unet3D's time. The Unet3D's loop runs in tests/cli and tests/conditions.
TINY = {
  'unet': dict(channels=1),
  'dit': TINY_DIT['dit'],
  'diffusion': dict(
    backbone='dit', image_size=16, num_frames=4, channels=1, timesteps=10, loss_type='l2'
  ),
  'trainer': dict(
    train_batch_size=2,
    gradient_accumulate_every=2,
    train_num_steps=4,
    checkpoint_every_steps=2,
    save_and_sample_every=1000,
    data_workers=0,
    step_start_ema=1,
    update_ema_every=1,
    ema_decay=0.9,
    prob_focus_present=0.5,
    max_grad_norm=1.0,
    max_to_keep=None,
  ),
}


def tiny_config(results, **trainer_keys):
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer'].update(results_folder=str(results), **trainer_keys)
  return config_from_dict(data)


def restore(cfg, step):
  _, params, _ = split_diffusion(cfg, abstract=True)
  tx = make_optimizer(cfg.trainer)
  target = jax.eval_shape(lambda p: init_train_state(p, tx, 0), params)
  with Checkpointer(
    os.path.join(cfg.trainer.results_folder, 'checkpoints'), read_only=True
  ) as ckpt:
    return ckpt.restore(step, target)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The tiny config trained 4 steps without a stop (checkpoints 2 and 4)."""
  cfg = tiny_config(tmp_path_factory.mktemp('straight'))
  assert trainer.train(cfg).checkpoint_steps == [2, 4]
  return cfg


def assert_same_state(a_cfg, b_cfg, step):
  """The checkpoints of `step` of two runs are bit-identical, data state included."""
  a_state, a_data, _ = restore(a_cfg, step)
  b_state, b_data, _ = restore(b_cfg, step)
  assert int(a_state.step) == int(b_state.step) == step
  assert a_data == b_data
  leaves = jax.tree.leaves_with_path(a_state)
  assert len(leaves) == len(jax.tree.leaves(b_state))
  for (path, a), b in zip(leaves, jax.tree.leaves(b_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  return a_state


def with_steps(cfg, steps):
  return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, train_num_steps=steps))


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path, straight):
  split = tiny_config(tmp_path / 'split', train_num_steps=2)
  assert trainer.train(split).checkpoint_steps == [2]
  resumed = trainer.train(with_steps(split, 4), resume_step=-1)
  assert resumed.checkpoint_steps == [2, 4]

  a_state = assert_same_state(straight, split, 4)
  # The EMA really moved away from both the start and the params.
  a2, _, _ = restore(straight, 2)
  assert any(
    not np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a2.ema_params), jax.tree.leaves(a_state.ema_params))
  )
  assert any(
    not np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a_state.params), jax.tree.leaves(a_state.ema_params))
  )
  lines = (tmp_path / 'split' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 4


def test_validation_and_samples_are_logged_and_leave_training_unchanged(tmp_path, straight):
  """val_every logs the validation loss at fixed times (metrics.jsonl and TensorBoard),
  the sample grid goes to TensorBoard too, and neither moves the training by a bit."""
  cfg = tiny_config(
    tmp_path / 'val',
    val_every=2,
    val_times=3,
    val_batch_size=2,
    save_and_sample_every=4,
    num_sample_rows=1,
    tensorboard_dir=str(tmp_path / 'tb'),
  )
  trainer.train(cfg)
  assert_same_state(straight, cfg, 4)
  records = read_metrics(tmp_path / 'val' / 'metrics.jsonl')
  val = {r['step']: r for r in records if 'val_loss' in r}
  assert sorted(val) == [2, 4]
  names = ['val_loss_t1', 'val_loss_t5', 'val_loss_t8']  # midpoints of 3 parts of 10 steps
  for r in val.values():
    assert set(names) < r.keys() and all(np.isfinite(r[n]) for n in names)
    np.testing.assert_allclose(r['val_loss'], np.mean([r[n] for n in names]), rtol=1e-5)
  assert val[2]['val_loss'] != val[4]['val_loss']  # the weights moved, the clips and noise not

  acc = EventAccumulator(str(tmp_path / 'tb'))
  acc.Reload()
  for name in ['val_loss'] + names:
    tag = 'val/' + name.removeprefix('val_')
    logged = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in logged] == [2, 4], tag
    np.testing.assert_allclose([v for _, v in logged], [val[2][name], val[4][name]], rtol=1e-6)
  (image,) = acc.Images('samples/grid')
  assert image.step == 4 and (image.width, image.height) == (4 * 16, 16)  # 4 frames in a row


def test_training_on_packed_shards_resumes_bit_identically(tmp_path):
  """prepare -> train -> stop -> resume on ArrayRecord shards equals one straight run."""
  videos = np.random.default_rng(0).integers(0, 256, (10, 12, 16, 16), np.uint8)
  np.save(tmp_path / 'm.npy', videos)
  shards = str(tmp_path / 'shards')
  spec = DataSpec.from_config(tiny_config(tmp_path, dataset_path=str(tmp_path / 'm.npy')))
  prepare(str(tmp_path / 'm.npy'), shards, spec, 3)
  whole = tiny_config(tmp_path / 'whole', dataset_path=shards)
  assert trainer.train(whole).checkpoint_steps == [2, 4]
  split = tiny_config(tmp_path / 'split', dataset_path=shards, train_num_steps=2)
  trainer.train(split)
  trainer.train(with_steps(split, 4), resume_step=-1)
  assert_same_state(whole, split, 4)


@pytest.mark.parametrize(
  'signals, stopped_at',
  [((signal.SIGTERM,), 3), ((signal.SIGINT,), 3), ((signal.SIGINT, signal.SIGINT), 2)],
  ids=['SIGTERM', 'Ctrl-C', 'Ctrl-C twice'],
)
def test_a_stop_signal_checkpoints_and_resumes_exactly(
  tmp_path, straight, monkeypatch, signals, stopped_at
):
  """SIGTERM (a scheduler's) or Ctrl-C during step 3 (no checkpoint due) lets the
  step finish, checkpoints it and stops; a second Ctrl-C stops at once, keeping
  step 2. Resuming gives the uninterrupted run's step 4."""
  one_step = trainer._Run.train_one_step

  def step_with_signals(run):
    if run.step == 2:
      for signum in signals:  # arrive while step 3 is in flight
        os.kill(os.getpid(), signum)
    return one_step(run)

  monkeypatch.setattr(trainer._Run, 'train_one_step', step_with_signals)
  before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
  cfg = tiny_config(tmp_path)
  name = signal.Signals(signals[0]).name
  with pytest.raises(trainer.Preempted, match=rf'^{name}: stopped at step {stopped_at}, which is'):
    trainer.train(cfg)
  assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == before
  with Checkpointer(str(tmp_path / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == [2, 3][: stopped_at - 1]
  monkeypatch.setattr(trainer._Run, 'train_one_step', one_step)
  assert trainer.train(cfg, resume_step=-1).checkpoint_steps == sorted({2, stopped_at, 4})
  assert_same_state(straight, cfg, 4)


def damaged_copy(straight, folder):
  """The straight run's checkpoints copied to `folder`, with step 4's biggest params
  data file (of the database's `d/` folders, not its JSON metadata, which may be
  bigger when the arrays are split over several files) cut to half its length;
  returns (config of folder, the params folder, which is what orbax names: its
  arrays are entries of one database)."""
  source = os.path.join(straight.trainer.results_folder, 'checkpoints')
  shutil.copytree(source, folder / 'checkpoints')
  params = folder / 'checkpoints' / '4' / 'params'
  files = [p for p in params.rglob('*') if p.is_file() and p.parent.name == 'd']
  victim = max(files, key=lambda p: p.stat().st_size)
  with open(victim, 'r+b') as f:
    f.truncate(victim.stat().st_size // 2)
  return tiny_config(folder), folder / 'checkpoints' / '4' / 'params'


# orbax leaves the other reads of a failed restore as coroutines that raise when collected
QUIET_ORBAX = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@QUIET_ORBAX
def test_damaged_checkpoint_is_named_and_resume_falls_back(tmp_path, straight, capsys):
  cfg, victim = damaged_copy(straight, tmp_path)
  with pytest.raises(trainer.TrainingError, match=r'checkpoint step 4 in .* is damaged: ') as e:
    trainer.train(cfg, resume_step=4)
  assert f'{victim}/ is missing or cannot be read' in str(e.value)
  assert '--resume_step -1' in str(e.value)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '4']  # untouched

  capsys.readouterr()
  assert trainer.train(cfg, resume_step=-1).checkpoint_steps == [2, 4]  # steps 3-4 again
  err = capsys.readouterr().err
  assert f'warning: checkpoint step 4 in {tmp_path / "checkpoints"} is damaged: {victim}' in err
  assert 'resuming from the checkpoint before it' in err
  assert (tmp_path / 'checkpoints' / '4.damaged').is_dir()
  assert_same_state(straight, cfg, 4)


@QUIET_ORBAX
def test_sample_names_the_damaged_file(tmp_path, straight, capsys):
  from video_diffusion.cli import main

  cfg, victim = damaged_copy(straight, tmp_path)
  config = tmp_path / 'config.yaml'
  dump_config(cfg, config)
  with pytest.raises(SystemExit) as e:
    main(['sample', '--config', str(config), '--step', '4', '--batch-size', '1'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert f'error: checkpoint step 4 in {tmp_path / "checkpoints"} is damaged: {victim}' in err


def test_a_full_disk_stops_the_run_naming_the_folder(tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  save = ocp.CheckpointManager.save

  def save_until_full(manager, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_until_full)
  cfg = tiny_config(tmp_path)
  with pytest.raises(
    trainer.TrainingError,
    match=r'could not write the checkpoint of step 4 to .*: No space left on device; the '
    r'earlier checkpoints there are kept',
  ):
    trainer.train(cfg)
  with Checkpointer(str(tmp_path / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == [2]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path):
  cfg = tiny_config(tmp_path, train_lr=1e30, checkpoint_every_steps=1, max_grad_norm=None)
  with pytest.raises(trainer.TrainingDiverged, match=r'at step 2; .*last checkpoint \(step 1\)'):
    trainer.train(cfg)
  state, _, _ = restore(cfg, 1)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  with Checkpointer(str(tmp_path / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == [1]


def test_existing_checkpoints_are_not_overwritten_without_resume(tmp_path):
  cfg = tiny_config(tmp_path, train_num_steps=2)
  trainer.train(cfg)
  with pytest.raises(
    trainer.TrainingError,
    match=r'already holds checkpoints \(steps 2\).*'
    r'--resume_step -1',
  ):
    trainer.train(cfg)
  with pytest.raises(trainer.TrainingError, match=r'no checkpoint for step 7 .*steps available: 2'):
    trainer.train(cfg, resume_step=7)
  other = config_from_dict(
    {
      **{k: dict(v) for k, v in TINY.items()},
      'dit': dict(TINY['dit'], width=64),
      'trainer': dict(TINY['trainer'], results_folder=str(tmp_path)),
    }
  )
  with pytest.raises(trainer.TrainingError, match=r'dit.width=32 in the checkpoint, 64 in the'):
    trainer.train(other, resume_step=-1)


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from video_diffusion.checkpointing.checkpointer import Checkpointer
    from video_diffusion.train.step import TrainState

    def state(step, value):
      big = jnp.full((24 * 1024 * 1024,), value, jnp.float32)
      return TrainState(step=jnp.int32(step), params={'w': big}, ema_params={'w': big + 1},
                        opt_state={'m': big + 2}, rng=jnp.zeros((2,), jnp.uint32))

    ckpt = Checkpointer(sys.argv[1], max_to_keep=None)
    ckpt.save(state(1, 1.0), data_state={'batches': 1}, config={'step': 1})
    ckpt.wait()
    ckpt.save(state(2, 5.0), data_state={'batches': 2}, config={'step': 2})
    print('saving step 2', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
  directory = tmp_path / 'checkpoints'
  proc = subprocess.run(
    [sys.executable, '-c', KILL_DURING_SAVE, str(directory)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  assert 'saving step 2' in proc.stdout
  leftovers = [p.name for p in directory.iterdir() if p.name.startswith('2')]
  assert leftovers and all('tmp' in name for name in leftovers), leftovers  # killed mid-save

  import jax.numpy as jnp

  from video_diffusion.train.step import TrainState

  target = TrainState(
    step=jnp.int32(0),
    params={'w': jnp.zeros((24 * 1024 * 1024,))},
    ema_params={'w': jnp.zeros((24 * 1024 * 1024,))},
    opt_state={'m': jnp.zeros((24 * 1024 * 1024,))},
    rng=jnp.zeros((2,), jnp.uint32),
  )
  with Checkpointer(str(directory)) as ckpt:
    assert ckpt.steps() == [1]
    state, data_state, config = ckpt.restore(-1, target)
    assert int(state.step) == 1 and data_state == {'batches': 1} and config == {'step': 1}
    assert float(state.params['w'][0]) == 1.0 and float(state.opt_state['m'][-1]) == 3.0
    ckpt.save(dataclasses.replace(state, step=jnp.int32(2)), data_state={}, config={})
    ckpt.wait()
    assert ckpt.steps() == [1, 2]
