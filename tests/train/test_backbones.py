"""Both backbones with every objective, end to end: train, checkpoint, resume
exactly, sample with every sampler that fits (and refuse the others), evaluate.

The Unet3D's Gaussian objectives are covered by tests/conditions and tests/train;
this adds flow matching on the Unet3D and every objective on the DiT. Tiny
models train in this process (trainer.train) and sample.py's command runs in it
too (cli.main), so compilations are shared.
"""

import dataclasses
import json

import numpy as np
import pytest
from conditions.test_conditional import sample_cli as _sample_cli
from test_training import restore

from video_diffusion.config import config_from_dict
from video_diffusion.config.registry import SAMPLERS
from video_diffusion.train import loop as trainer

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

DIT = dict(patch_size=2, width=16, depth=2, heads=2)


def tiny(tmp, backbone, objective, unet=None, diffusion=None, **trainer_keys):
  data = {
    'unet': dict(
      dim=8, dim_mults=[1, 2], channels=1, attn_heads=2, attn_dim_head=8, **(unet or {})
    ),
    'diffusion': dict(
      backbone=backbone,
      objective=objective,
      image_size=8,
      num_frames=4,
      channels=1,
      timesteps=4,
      loss_type='l2',
      **(diffusion or {}),
    ),
    'dit': DIT,
    'trainer': dict(
      train_batch_size=2,
      gradient_accumulate_every=1,
      checkpoint_every_steps=2,
      save_and_sample_every=2,
      num_sample_rows=1,
      data_workers=0,
      step_start_ema=1,
      update_ema_every=1,
      ema_decay=0.9,
      max_to_keep=None,
      results_folder=str(tmp / 'results'),
      **({'train_num_steps': 2} | trainer_keys),
    ),
  }
  return config_from_dict(data)


def sample_cli(cfg, folder, *flags):
  """sample.py on cfg's run, working in `folder` (made here)."""
  folder.mkdir(parents=True, exist_ok=True)
  return _sample_cli(cfg, folder, *flags)


def fitting_samplers(objective):
  flow = objective == 'flow'
  return [name for name, info in SAMPLERS.items() if info.flow == flow]


@pytest.mark.parametrize(
  'backbone, objective', [('unet3d', 'flow'), ('dit', 'eps'), ('dit', 'x0'), ('dit', 'v')]
)
def test_every_objective_trains_and_samples_with_every_fitting_sampler(
  tmp_path, capsys, backbone, objective
):
  cfg = tiny(tmp_path, backbone, objective)
  result = trainer.train(cfg)
  assert result.step == 2 and np.isfinite(result.loss) and result.checkpoint_steps == [2]
  assert (tmp_path / 'results' / 'samples' / 'sample-2.gif').exists()
  for name in fitting_samplers(objective):
    steps = [] if name == 'ddpm' else ['--steps', 2]
    videos = sample_cli(cfg, tmp_path / name, '--sampler', name, *steps)
    assert all(v.shape == (4, 8, 8, 1) for v in videos)
  other = 'ddim' if objective == 'flow' else 'euler'
  with pytest.raises(SystemExit) as info:
    sample_cli(cfg, tmp_path / 'other', '--sampler', other)
  assert info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f'error: the {other} sampler cannot sample'), err


@pytest.fixture(scope='module')
def dit_flow_run(tmp_path_factory):
  """DiT, flow matching with logit-normal times and a timestep shift,
  class-conditional and frame-conditioned, with training-time FVD."""
  tmp = tmp_path_factory.mktemp('dit_flow')
  keys = dict(
    unet={'num_classes': 10},
    diffusion={'frame_conditioning': True, 'time_sampling': 'logit_normal', 'time_shift': 2.0},
    cond_drop_prob=0.5,
    cond_scale=2.0,
    prob_focus_present=0.5,
  )
  straight = tiny(tmp / 'straight', 'dit', 'flow', train_num_steps=4, **keys)
  straight = dataclasses.replace(
    straight,
    trainer=dataclasses.replace(straight.trainer, eval_every=4, eval_num_videos=2, eval_steps=2),
  )
  return straight, tmp, trainer.train(straight), keys


def test_dit_flow_resumes_bit_identically(dit_flow_run):
  straight, tmp, result, keys = dit_flow_run
  assert result.checkpoint_steps == [2, 4]
  split = tiny(tmp / 'split', 'dit', 'flow', train_num_steps=2, **keys)
  trainer.train(split)
  longer = dataclasses.replace(split, trainer=dataclasses.replace(split.trainer, train_num_steps=4))
  trainer.train(longer, resume_step=-1)
  a, _, _ = restore(straight, 4)
  b, _, _ = restore(split, 4)
  for x, y in zip(
    [a.params, a.ema_params, a.opt_state], [b.params, b.ema_params, b.opt_state], strict=True
  ):
    for u, v in zip(jax_leaves(x), jax_leaves(y), strict=True):
      np.testing.assert_array_equal(u, v)


def jax_leaves(tree):
  import jax

  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_dit_flow_logs_training_time_fvd_with_euler(dit_flow_run):
  _, tmp, _, _ = dit_flow_run
  records = [
    json.loads(line)
    for line in (tmp / 'straight' / 'results' / 'metrics.jsonl').read_text().splitlines()
  ]
  fvd = [r for r in records if 'fvd' in r]
  assert [r['step'] for r in fvd] == [4] and np.isfinite(fvd[0]['fvd'])


def test_dit_flow_samples_classes_with_guidance_and_given_frames(dit_flow_run, tmp_path):
  cfg, _, _, _ = dit_flow_run
  videos = sample_cli(cfg, tmp_path / 'class', '--class', 3, 7, '--cond-scale', 3.0)
  assert all(v.shape == (4, 8, 8, 1) for v in videos)
  clip = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
  from video_diffusion.data import video_io

  video_io.write_gif(tmp_path / 'clip.gif', clip)
  videos = sample_cli(
    cfg,
    tmp_path / 'prime',
    '--sampler',
    'heun',
    '--steps',
    2,
    '--class',
    1,
    2,
    '--prime',
    tmp_path / 'clip.gif',
    '--num-cond-frames',
    2,
    '--num-frames',
    6,
  )
  for video in videos:
    assert video.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(video[:2], clip[-2:])
  a, b = (clip[:2], clip[1:])
  video_io.write_gif(tmp_path / 'a.gif', a)
  video_io.write_gif(tmp_path / 'b.gif', b)
  videos = sample_cli(
    cfg,
    tmp_path / 'interp',
    '--steps',
    2,
    '--class',
    0,
    0,
    '--interpolate',
    tmp_path / 'a.gif',
    tmp_path / 'b.gif',
  )
  for video in videos:
    np.testing.assert_array_equal(video[0], a[-1])
    np.testing.assert_array_equal(video[-1], b[0])
