"""benchmarks/sweep_recipe.py: levers combined into config keys, runs shared, the table."""

import argparse
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / 'benchmarks'))

import sweep_recipe as sweep

from video_diffusion.config import load_config


def test_levers_combine_later_keys_winning_and_the_last_sampler_named():
  keys, sampler = sweep.lever_keys('lr_1e-3+heun_50+lr_2e-3')
  assert keys == ['trainer.train_lr=1e-3', 'trainer.train_lr=2e-3'] and sampler == ('heun', 50)
  assert sweep.lever_keys('baseline') == ([], sweep.BASE_SAMPLER)
  # The schedule decays over the second half of the baseline's steps in the budget.
  keys, _ = sweep.lever_keys('lr_cosine', baseline_steps=2401)
  assert keys == ['trainer.lr_decay_start_step=1200', 'trainer.lr_decay_steps=1200']


def test_every_lever_loads_as_a_demo_config():
  root = pathlib.Path(sweep.bench.ROOT) / 'configs' / sweep.DEMO
  for name in sweep.LEVERS:
    keys, (sampler, _) = sweep.lever_keys(name, baseline_steps=1000)
    cfg = load_config(root, keys + sweep.VALIDATION)
    assert cfg.trainer.val_every == 100 and sampler in ('euler', 'heun')


def test_unknown_levers_and_a_schedule_without_its_baseline_are_refused():
  with pytest.raises(SystemExit, match="unknown lever 'lr_3'"):
    sweep.lever_keys('lr_1e-3+lr_3')
  with pytest.raises(SystemExit, match='run the baseline first'):
    sweep.lever_keys('lr_cosine')


def test_sampler_levers_share_the_baseline_run(tmp_path):
  assert sweep.run_folder(tmp_path, 'screen', 'heun_50', 5, 0).name == 'screen5m-baseline-seed0'
  assert sweep.run_folder(tmp_path, 'final', 'ema_0.999+heun_50', 20, 1).name == (
    'final20m-ema_0.999+heun_50-seed1'
  )


def test_spearman_of_known_ranks():
  assert sweep.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/120
  assert sweep.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def _record(stage, levers, seed, fvd, val_loss):
  return dict(
    stage=stage,
    levers=levers,
    seed=seed,
    minutes=5 if stage == 'screen' else 20,
    steps=600,
    s_per_step=0.46,
    val_loss=val_loss,
    fvd=fvd,
    num_videos=64 if stage == 'screen' else 256,
    sampler='heun-20',
    generated_mean_pixel=0.1,
    real_mean_pixel=0.1,
    generated_frame_change=0.1,
    real_frame_change=0.09,
    generated_mass_drift=0.01,
    real_mass_drift=0.005,
  )


def test_the_table_ranks_the_cheap_signals_against_the_final_fvd(tmp_path):
  screens = {'baseline': (900, 0.30), 'lr_1e-3': (700, 0.28), 'ema_0.995': (800, 0.30)}
  screens['heun_50'] = (850, 0.30)
  finals = {'baseline': (600, 520), 'lr_1e-3': (450, 350), 'ema_0.995': (400, 440)}
  records = {f'screen/{k}': _record('screen', k, 0, *v) for k, v in screens.items()}
  records['screen/heun_50']['s_per_step'] = None  # a run that logged only its first step
  for levers, fvds in finals.items():
    for seed, fvd in enumerate(fvds):
      records[f'final/{levers}/{seed}'] = _record('final', levers, seed, fvd, 0.2)
  (tmp_path / 'sweep.json').write_text(json.dumps(records))
  sweep.table(argparse.Namespace(output=str(tmp_path)))
  text = (tmp_path / 'table.md').read_text()
  # Final means 560, 400, 420 rank as the screens' FVDs 900, 700, 800 do: rho 1.
  assert 'Final FVD, mean over seeds: lr_1e-3 400.0 (2 seeds), ema_0.995 420.0' in text
  assert 'Spearman, screen fvd vs final FVD over 3 levers: 1.00' in text
  # Validation losses 0.30, 0.28, 0.30 rank 1.5, 0, 1.5 against 2, 0, 1: rho 1.5 / sqrt(3).
  assert 'Spearman, screen val_loss vs final FVD over 3 levers: 0.87' in text
  assert text.count('| screen |') == 4 and text.count('| final |') == 6
  assert '| screen | heun_50 | 0 | 5 | 600 | - | 0.3000 | 850.0 |' in text
