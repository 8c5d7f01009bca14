"""Two local processes (jax.distributed, gloo collectives) train, checkpoint and
resume, and agree with one process training on the same global batches."""

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_DIT

from video_diffusion.checkpointing.checkpointer import Checkpointer
from video_diffusion.config import load_config
from video_diffusion.data.loader import make_loader
from video_diffusion.data.spec import DataSpec
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.parallel.sharding import make_mesh
from video_diffusion.train import step as ts
from video_diffusion.train.optimizer import make_optimizer
from video_diffusion.train.state import init_train_state
from video_diffusion.vae import latent

pytestmark = pytest.mark.slow  # end-to-end runs; left out of `make test-fast`

TINY = {
  **TINY_DIT,
  'diffusion': dict(TINY_DIT['diffusion'], image_size=8, num_frames=3),
  'trainer': dict(
    train_batch_size=4,
    gradient_accumulate_every=1,
    train_num_steps=3,
    checkpoint_every_steps=2,
    save_and_sample_every=3,
    num_sample_rows=2,
    data_workers=0,
    step_start_ema=0,
    update_ema_every=1,
    ema_decay=0.5,
    train_lr=1e-3,
  ),
}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def two_processes(config, *args, wait=True):
  """train.py in two local processes; waits for both and checks they succeeded, or
  with wait=False returns the running processes."""
  port = free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        'train.py',
        '--config',
        str(config),
        '--coordinator-address',
        f'127.0.0.1:{port}',
        '--num-processes',
        '2',
        '--process-id',
        str(i),
        *map(str, args),
      ],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  if not wait:
    return procs
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """Steps 1-2 in two processes (checkpoint 2), then resumed to step 3 (checkpoint 3)."""
  root = tmp_path_factory.mktemp('multi')
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer']['results_folder'] = str(root / 'results')
  config = root / 'tiny.yaml'
  config.write_text(yaml.safe_dump(data))
  two_processes(config, 'trainer.train_num_steps=2')
  two_processes(config, '--resume_step', '-1')
  return load_config(config), root / 'results'


def one_process_reference(cfg, steps=3, encode=None, model_cfg=None):
  """(state, losses, initial params): `steps` steps in this process on the
  concatenation of both processes' batches, mapped by `encode(videos, step)` (a
  latent run's LatentEncoder, whose backbone is built from `model_cfg`)."""
  t, model_cfg = cfg.trainer, model_cfg or cfg
  graphdef, params, constants = split_diffusion(model_cfg)
  tx = make_optimizer(t)
  state = init_train_state(params, tx, t.seed)
  options = ts.StepOptions.from_config(model_cfg)
  step = jax.jit(ts.make_train_step(graphdef, constants, tx, options))
  loaders = [
    iter(make_loader(DataSpec.from_config(cfg), seed=t.seed, process_index=i, process_count=2))
    for i in range(2)
  ]
  losses = []
  for index in range(steps):
    videos = np.concatenate([next(loader)['video'] for loader in loaders])
    if encode is not None:
      videos = encode(videos, index)
    state, metrics = step(state, videos)
    losses.append(float(metrics['loss']))
  return state, losses, params


def test_two_processes_agree_with_one(two_process_run):
  cfg, results = two_process_run
  reference, ref_losses, initial = one_process_reference(cfg)
  moved = np.concatenate(
    [
      (np.asarray(a) != np.asarray(b)).ravel()
      for a, b in zip(*map(jax.tree.leaves, (reference.params, initial)))
    ]
  )
  assert moved.mean() > 0.9  # the DiT's zero-initialised gates no longer hold the others still
  rows = [json.loads(line) for line in (results / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert len(losses) == 3  # written once (by process 0), resumed run appended step 3
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  _, target, _ = split_diffusion(cfg, abstract=True)
  with Checkpointer(str(results / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == [2, 3]
    params = ckpt.restore_params(3, target, ema=False)
    ema = ckpt.restore_params(3, target, ema=True)
  # Adam normalises each gradient element, so float32 reduction-order noise in a
  # near-zero gradient can move an element by up to ~lr per step: allow 3 * lr
  # in the worst element, and require almost all to agree to 1e-5.
  for ours, ref in [(params, reference.params), (ema, reference.ema_params)]:
    diffs = np.concatenate(
      [
        np.abs(np.asarray(a) - np.asarray(b)).ravel()
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref))
      ]
    )
    assert diffs.max() <= 3 * cfg.trainer.train_lr
    assert np.mean(diffs <= 1e-5) > 0.999
  assert (results / 'samples' / 'sample-3.gif').exists()


def test_sigterm_to_one_process_stops_both_at_the_same_checkpointed_step(tmp_path):
  """A scheduler's SIGTERM reaches process 1 only: both processes agree (an
  all-gather after every step), checkpoint the same step and exit 143."""
  import signal
  import time

  from video_diffusion.train.preemption import PREEMPTED_EXIT_STATUS

  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer'].update(
    results_folder=str(tmp_path / 'results'), train_num_steps=500, checkpoint_every_steps=1000
  )
  config = tmp_path / 'tiny.yaml'
  config.write_text(yaml.safe_dump(data))
  procs = two_processes(config, wait=False)
  metrics = tmp_path / 'results' / 'metrics.jsonl'
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=600) for p in procs]
  steps = set()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == PREEMPTED_EXIT_STATUS, err[-3000:]
    line = next(line for line in err.splitlines() if line.startswith('preempted:'))
    steps.add(int(line.split('stopped at step ')[1].split(',')[0]))
  assert len(steps) == 1 and 3 <= next(iter(steps)) < 500, steps
  with Checkpointer(str(tmp_path / 'results' / 'checkpoints'), read_only=True) as ckpt:
    assert ckpt.steps() == sorted(steps)


def test_a_latent_run_in_two_processes_agrees_with_one(tmp_path):
  """Each process encodes its clips with the replicated autoencoder (posterior
  samples from the run's seed and the step): the losses equal one process's."""
  data = {k: dict(v) for k, v in TINY.items()}
  vae = ROOT / 'tests' / 'fixtures' / 'vae' / 'wan_like'
  data['unet']['channels'] = 3
  data['dit']['patch_size'] = 1
  data['diffusion'].update(image_size=16, num_frames=5, channels=3, vae=str(vae))
  data['trainer'].update(results_folder=str(tmp_path / 'results'), train_num_steps=2)
  config = tmp_path / 'latent.yaml'
  config.write_text(yaml.safe_dump(data))
  two_processes(config)
  cfg = load_config(config)
  space = latent.LatentSpace.load(str(vae))
  encoder = latent.LatentEncoder(space, make_mesh(devices=jax.devices()[:1]), cfg.trainer.seed)
  _, reference, _ = one_process_reference(cfg, 2, encoder, space.model_config(cfg))
  lines = (tmp_path / 'results' / 'metrics.jsonl').read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  np.testing.assert_allclose([r['loss'] for r in rows if 'loss' in r], reference, rtol=1e-5)
