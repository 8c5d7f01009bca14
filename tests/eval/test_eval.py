"""`video-diffusion eval` and FVD during training, end to end in subprocesses."""

import json
import math
import re

import numpy as np
import pytest
import yaml
from cli.test_cli import TINY, read_scalars, run
from conftest import ROOT, TINY_DIT

# end-to-end runs, left out of `make test-fast`; I3D compiled as users' runs are (tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.optimized]

EVAL = dict(eval_every=2, eval_num_videos=2, eval_sampler='ddim', eval_steps=2)


@pytest.fixture(scope='module')
def evaluated_run(tmp_path_factory):
  """The tiny config (a DiT) trained 4 steps with FVD every 2 steps."""
  root = tmp_path_factory.mktemp('eval')
  results = root / 'results'
  data = {k: dict(v) for k, v in TINY.items()}
  # FVD does not depend on the backbone: the tiny DiT compiles in a fraction of the Unet3D's time.
  data.update(unet=dict(channels=1), dit=TINY_DIT['dit'])
  data['diffusion'].update(backbone='dit')
  data['trainer'].update(
    results_folder=str(results),
    tensorboard_dir=str(results / 'tb'),
    profile_flush_step=None,
    add_loss_plot=False,
    **EVAL,
  )
  config = root / 'tiny.yaml'
  config.write_text(yaml.safe_dump(data))
  run('train.py', '--config', config)
  return config, results


def test_training_logs_fvd_every_eval_every_steps(evaluated_run):
  _, results = evaluated_run
  records = [json.loads(line) for line in (results / 'metrics.jsonl').read_text().splitlines()]
  with_fvd = {r['step']: r['fvd'] for r in records if 'fvd' in r}
  assert sorted(with_fvd) == [2, 4]
  assert all(math.isfinite(v) and v > 0 for v in with_fvd.values()), with_fvd
  scalars = dict(read_scalars(results / 'tb')['eval/fvd'])
  assert scalars.keys() == {2, 4}
  np.testing.assert_allclose([scalars[2], scalars[4]], [with_fvd[2], with_fvd[4]], rtol=1e-6)


def test_eval_command_writes_fvd_and_the_real_vs_real_floor(evaluated_run, tmp_path):
  config, results = evaluated_run
  output = tmp_path / 'fvd.json'
  proc = run(
    '-m',
    'video_diffusion',
    'eval',
    '--config',
    config,
    '--load-ema-params',
    '--num-videos',
    3,
    '--batch-size',
    2,
    '--sampler',
    'ddim',
    '--steps',
    2,
    '--output',
    output,
  )
  line = proc.stdout.strip().splitlines()[-1]
  assert re.fullmatch(
    r'FVD [\d.]+ \(real vs real [\d.]+\) on 3 videos: step 4, ema weights, '
    r'ddim-2; .*fvd\.json',
    line,
  ), line
  result = json.loads(output.read_text())
  assert result['num_videos'] == 3 and result['step'] == 4 and result['model_calls'] == 2
  assert result['weights'] == 'ema' and result['sampler'] == 'ddim'
  assert math.isfinite(result['fvd']) and result['fvd'] > 0
  assert math.isfinite(result['fvd_real_vs_real']) and result['fvd_real_vs_real'] > 0
  assert f'{result["fvd"]:.2f}' in line
  # Moving digits keep their mass: the real videos' drift is far below their frame change.
  assert 0 < result['real_mass_drift'] < result['real_frame_change'] / 2
  assert result['generated_frame_change'] > 0 and result['generated_mass_drift'] > 0
  # The real features are kept for the next evaluation of the same real videos.
  assert len(list((results / 'eval').glob('real-features-3-*.npz'))) == 1
  again = run(
    '-m',
    'video_diffusion',
    'eval',
    '--config',
    config,
    '--load-ema-params',
    '--num-videos',
    3,
    '--batch-size',
    2,
    '--sampler',
    'ddim',
    '--steps',
    2,
    '--output',
    tmp_path / 'again.json',
  )
  assert 'real set' not in again.stderr  # features read back, not recomputed
  assert json.loads((tmp_path / 'again.json').read_text())['fvd'] == pytest.approx(
    result['fvd'], rel=1e-9
  )


def test_eval_refuses_a_dataset_too_small_for_two_real_sets(evaluated_run, tmp_path):
  config, _ = evaluated_run
  small = tmp_path / 'mnist.npy'
  np.save(small, np.zeros((6, 5, 16, 16), np.uint8))  # 5 sequences of 6 frames
  proc = run(
    '-m',
    'video_diffusion',
    'eval',
    '--config',
    config,
    '--num-videos',
    3,
    '--real-path',
    small,
    check=False,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'has 5 videos' in proc.stderr and 'lower --num-videos to 2' in proc.stderr
  proc = run('-m', 'video_diffusion', 'eval', '--config', config, '--num-videos', 1, check=False)
  assert proc.returncode == 2 and '--num-videos must be >= 2, got 1' in proc.stderr


def test_training_refuses_an_eval_sampler_that_does_not_fit(tmp_path):
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer'].update(results_folder=str(tmp_path / 'r'), eval_every=2, eval_steps=50)
  config = tmp_path / 'bad.yaml'
  config.write_text(yaml.safe_dump(data))
  proc = run('train.py', '--config', config, check=False)
  assert proc.returncode == 2
  assert 'error: trainer.eval_every: steps must be in [1, 8]' in proc.stderr, proc.stderr[-500:]


def test_cli_knows_the_eval_command():
  proc = run('-m', 'video_diffusion', '--help', cwd=ROOT)
  assert 'eval' in proc.stdout
