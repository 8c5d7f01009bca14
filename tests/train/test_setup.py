"""The run set-up's functions, each without a training run."""

import jax
import numpy as np
import pytest

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import config_from_dict, config_to_dict
from video_diffusion.data import loader as data_loader
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.parallel import sharding
from video_diffusion.train import setup
from video_diffusion.train.optimizer import make_optimizer

CONFIG = {
  'unet': dict(dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8),
  'diffusion': dict(image_size=8, num_frames=2, channels=1, timesteps=10),
  'trainer': dict(train_batch_size=2, gradient_accumulate_every=1, data_workers=0, seed=3),
}


def test_resume_policy(capsys):
  assert setup.resume_policy(-1, [], '/run') == 0
  assert 'starting afresh' in capsys.readouterr().err
  assert setup.resume_policy(-1, [2, 4], '/run') == -1
  assert setup.resume_policy(4, [2, 4], '/run') == 4
  assert setup.resume_policy(0, [], '/run') == 0
  with pytest.raises(setup.TrainingError, match=r'already holds checkpoints \(steps 2, 4\)'):
    setup.resume_policy(0, [2, 4], '/run')


def test_training_mesh_refuses_a_batch_that_does_not_split():
  cfg = config_from_dict(CONFIG)
  assert setup.training_mesh(cfg.trainer).size == jax.device_count()
  t = config_from_dict({**CONFIG, 'trainer': {**CONFIG['trainer'], 'mesh_fsdp': 3}}).trainer
  with pytest.raises(setup.TrainingError, match=r'fsdp axis \(3\) must divide'):
    setup.training_mesh(t)


def test_restore_or_init_starts_fresh_then_restores_state_and_data_position(tmp_path):
  cfg = config_from_dict(CONFIG)
  mesh = setup.training_mesh(cfg.trainer)
  _, params, _ = split_diffusion(cfg)
  tx = make_optimizer(cfg.trainer)
  shardings = setup.state_shardings_of(params, tx, cfg.trainer.seed, mesh)
  with Checkpointer(str(tmp_path)) as ckpt:
    state, batches = setup.restore_or_init(
      ckpt, cfg, 0, params, tx, shardings, setup.training_loader(cfg, 0, 1)[0]
    )
    assert int(state.step) == 0
    next(batches)
    position = data_loader.iterator_state(batches)
    expected = next(batches)['video']
    state = state.replace(step=state.step + 5)
    ckpt.save(state, data_state=position, config=config_to_dict(cfg))
  with Checkpointer(str(tmp_path)) as ckpt:
    _, abstract, _ = split_diffusion(cfg, abstract=True)
    restored, batches = setup.restore_or_init(
      ckpt, cfg, -1, abstract, tx, shardings, setup.training_loader(cfg, 0, 1)[0]
    )
    assert int(restored.step) == 5
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    np.testing.assert_array_equal(next(batches)['video'], expected)
    other = config_from_dict({**CONFIG, 'unet': {**CONFIG['unet'], 'dim': 16}})
    with pytest.raises(setup.TrainingError, match=r'unet.dim=8 in the checkpoint, 16'):
      setup.restore_or_init(ckpt, other, 5, abstract, tx, shardings, None)
  assert sharding.replicated(mesh).is_fully_replicated


def test_read_only_checkpointer_logs_no_orbax_warning(tmp_path):
  import logging

  seen = []
  handler = logging.Handler()
  handler.emit = seen.append
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  try:
    Checkpointer(str(tmp_path)).close()  # creates the folder
    Checkpointer(str(tmp_path), read_only=True).close()
  finally:
    absl_logger.removeHandler(handler)
  assert not [r for r in seen if 'read' in r.getMessage()], [r.getMessage() for r in seen]
