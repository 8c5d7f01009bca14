"""The training loop in-process: exact resume, divergence stop, checkpoint safety."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import ROOT

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.train import loop as trainer
from video_diffusion.train.optimizer import make_optimizer
from video_diffusion.train.state import init_train_state

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

TINY = {
  'unet': dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8),
  'diffusion': dict(image_size=16, num_frames=4, channels=1, timesteps=10, loss_type='l2'),
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


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path):
  straight = tiny_config(tmp_path / 'straight')
  result = trainer.train(straight)
  assert result.checkpoint_steps == [2, 4]

  split = tiny_config(tmp_path / 'split', train_num_steps=2)
  assert trainer.train(split).checkpoint_steps == [2]
  resumed = trainer.train(
    dataclasses.replace(split, trainer=dataclasses.replace(split.trainer, train_num_steps=4)),
    resume_step=-1,
  )
  assert resumed.checkpoint_steps == [2, 4]

  a_state, a_data, _ = restore(straight, 4)
  b_state, b_data, _ = restore(split, 4)
  assert int(a_state.step) == int(b_state.step) == 4
  assert a_data == b_data
  leaves = jax.tree.leaves_with_path(a_state)
  assert len(leaves) == len(jax.tree.leaves(b_state))
  for (path, a), b in zip(leaves, jax.tree.leaves(b_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
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
      'unet': dict(TINY['unet'], dim=16),
      'trainer': dict(TINY['trainer'], results_folder=str(tmp_path)),
    }
  )
  with pytest.raises(trainer.TrainingError, match=r'unet.dim=8 in the checkpoint, 16 in the'):
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
