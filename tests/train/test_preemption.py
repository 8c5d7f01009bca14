"""Preemption end to end: train.py stopped by SIGTERM at chosen and random moments
(starting up, between steps, during a checkpoint save) or by Ctrl-C, and restarted
with --resume_step -1 each time, ends with exactly the weights of an uninterrupted run."""

import random
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, TINY_DIT
from test_training import TINY, assert_same_state

from video_diffusion.config import config_from_dict, load_config
from video_diffusion.reporting.run_log import read_metrics
from video_diffusion.train import loop as trainer
from video_diffusion.train.preemption import INTERRUPTED_EXIT_STATUS, PREEMPTED_EXIT_STATUS

pytestmark = pytest.mark.slow  # subprocesses; left out of `make test-fast`

STEPS = 40
# The loop around the model is under test: the tiny DiT with one micro-batch a
# step is the least to trace and load in each of the six starts.
SOAK = {
  **TINY_DIT,
  'diffusion': dict(TINY_DIT['diffusion'], image_size=16, num_frames=4),
  'trainer': dict(
    TINY['trainer'],
    train_num_steps=STEPS,
    checkpoint_every_steps=4,
    max_to_keep=2,
    prob_focus_present=0.0,
    gradient_accumulate_every=1,
    tensorboard_dir=None,
  ),
}


def logged_steps(results) -> int:
  path = results / 'metrics.jsonl'
  records = read_metrics(path) if path.exists() else []
  return records[-1]['step'] if records else 0


def saving(results) -> bool:
  """Whether orbax is writing a step (its temporary folder exists)."""
  folder = results / 'checkpoints'
  return folder.exists() and any('tmp' in p.name for p in folder.iterdir())


def start(config):
  return subprocess.Popen(
    [sys.executable, 'train.py', '--config', str(config), '--resume_step', '-1'],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def wait_for(proc, condition, timeout=300.0) -> bool:
  """Polls `condition()` until it holds (True) or the process ends (False)."""
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.01)
  return False


def test_sigterm_soak_ends_with_the_uninterrupted_weights(tmp_path):
  results = tmp_path / 'soak'
  data = {k: dict(v) for k, v in SOAK.items()}
  data['trainer']['results_folder'] = str(results)
  config = tmp_path / 'soak.yaml'
  config.write_text(yaml.safe_dump(data))
  rng = random.Random(0)
  early, late, pause = rng.randint(2, 6), rng.randint(3, 12), rng.uniform(0.5, 3.0)
  moments = {  # when each run is sent SIGTERM, given the step it started from
    'between steps': lambda start: logged_steps(results) >= start + early,
    'during a save': lambda start: saving(results),
    'starting up': lambda start: time.sleep(pause) or True,
    'at a random step': lambda start: logged_steps(results) >= start + late,
    'Ctrl-C': lambda start: logged_steps(results) >= start + early,
  }
  handled = []
  for moment, condition in moments.items():
    signum = signal.SIGINT if moment == 'Ctrl-C' else signal.SIGTERM
    status, word = {
      signal.SIGTERM: (PREEMPTED_EXIT_STATUS, 'preempted:'),
      signal.SIGINT: (INTERRUPTED_EXIT_STATUS, 'interrupted:'),
    }[signum]
    begun = logged_steps(results)
    proc = start(config)
    if wait_for(proc, lambda condition=condition, begun=begun: condition(begun)):
      proc.send_signal(signum)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (status, -signum, 0), (moment, err[-3000:])
    assert 'Traceback' not in err, (moment, err[-3000:])
    if proc.returncode == status:
      message = [line for line in err.splitlines() if line.startswith(word)]
      assert len(message) == 1 and 'continue with --resume_step -1' in message[0], err[-2000:]
      handled.append(moment)
  assert {'between steps', 'during a save', 'at a random step', 'Ctrl-C'} <= set(handled), handled
  proc = start(config)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]

  soaked = load_config(config)
  data['trainer']['results_folder'] = str(tmp_path / 'straight')
  straight = config_from_dict(data)
  assert trainer.train(straight).step == STEPS
  assert_same_state(straight, soaked, STEPS)
