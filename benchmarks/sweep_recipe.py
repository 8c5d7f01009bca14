"""Recipe sweep of the demo: which training settings reach the best FVD in its CPU budget.

  python benchmarks/sweep_recipe.py screen [--minutes 5] [--levers all] [--output results/sweep]
  python benchmarks/sweep_recipe.py final --levers baseline,lr_1e-3+ema_0.995 [--seeds 0,1]
                                    [--minutes 20] [--num-videos 256]
  python benchmarks/sweep_recipe.py table [--output results/sweep]

Every lever (LEVERS) is a set of config keys changed from the demo,
configs/config.yaml, and the sampler its videos are drawn with; levers joined
with '+' combine (keys of the later ones win; the last sampler named wins).
Each run trains the demo with its keys for --minutes of wall clock on these
cores (bench_quality.py's train_run: compilation included, then SIGTERM),
logging the validation loss (16 held-out clips at 8 fixed times) every 100
steps, and is then judged by the EMA weights of its last step:

- screen: seed 0, FVD of 64 videos and the last validation loss (the cheap
  signals); levers that change only the sampler reuse the baseline's run;
- final: each seed of --seeds, FVD of --num-videos videos.

Every number is kept in --output (runs, evaluations.json, I3D features of the
real videos), so an interrupted sweep started again with the same command
carries on: finished runs and evaluations are kept; a run stopped part-way
trains again from its start (its budget is wall clock). `table` prints and
writes (table.md, sweep.json) every run with its steps, s/step, validation
loss, FVD, mean pixel value, frame change and mass drift beside the real
videos', and the Spearman rank correlation of each cheap signal with the
final FVD over the levers that have both.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

import bench_quality as bench

import video_diffusion

DEMO = 'config.yaml'
BASE_SAMPLER = ('heun', 20)  # the demo's sampler in the README and `make demo`
# The validation loss every run logs (bench's train_run sets everything else).
VALIDATION = ['trainer.val_every=100', 'trainer.val_batch_size=16', 'trainer.val_times=8']
CHECKPOINT_EVERY = 100
SCREEN_VIDEOS = 64
# name -> (config keys changed from the demo, sampler or None = BASE_SAMPLER); '{half}'
# in a key is half the baseline's steps in the same budget (lr_cosine decays over them).
LEVERS: dict[str, tuple[list[str], tuple[str, int] | None]] = {
  'baseline': ([], None),
  'lr_1e-3': (['trainer.train_lr=1e-3'], None),
  'lr_2e-3': (['trainer.train_lr=2e-3'], None),
  'lr_4e-3': (['trainer.train_lr=4e-3'], None),
  'lr_cosine': (['trainer.lr_decay_start_step={half}', 'trainer.lr_decay_steps={half}'], None),
  'batch_4': (['trainer.train_batch_size=4'], None),
  'batch_16': (['trainer.train_batch_size=16'], None),
  'ema_0.995': (['trainer.ema_decay=0.995'], None),
  'ema_0.999': (['trainer.ema_decay=0.999', 'trainer.step_start_ema=200'], None),
  'width_24': (['unet.dim=24'], None),
  'width_12': (['unet.dim=12'], None),
  'depth_2': (['unet.dim_mults=[1,2]'], None),
  'shift_0.5': (['diffusion.time_shift=0.5'], None),
  'shift_2': (['diffusion.time_shift=2.0'], None),
  'uniform_times': (['diffusion.time_sampling=uniform'], None),
  'lognorm_mean_0.5': (['diffusion.logit_normal_mean=0.5'], None),  # noisier times
  'lognorm_mean_-0.5': (['diffusion.logit_normal_mean=-0.5'], None),
  'heun_50': ([], ('heun', 50)),
  'euler_50': ([], ('euler', 50)),
}


def lever_keys(levers: str, baseline_steps: int | None = None) -> tuple[list[str], tuple]:
  """(config keys, (sampler, steps)) of levers joined with '+'; `baseline_steps`
  fills the '{half}' of a schedule (half the baseline's steps in the budget)."""
  keys, sampler = [], BASE_SAMPLER
  for name in levers.split('+'):
    if name not in LEVERS:
      sys.exit(f'error: unknown lever {name!r}: use some of {", ".join(LEVERS)}, joined by +')
    lever_keys_, lever_sampler = LEVERS[name]
    keys += lever_keys_
    sampler = lever_sampler or sampler
  if any('{half}' in k for k in keys):
    if not baseline_steps:
      sys.exit(f'error: {levers} decays over the baseline steps: run the baseline first')
    keys = [k.format(half=baseline_steps // 2) for k in keys]
  return keys, sampler


def trains(levers: str) -> bool:
  """Whether the levers have a run of their own (sampler levers share the baseline's)."""
  return levers == 'baseline' or bool(lever_keys(levers, baseline_steps=2)[0])


def run_folder(out: pathlib.Path, stage: str, levers: str, minutes: float, seed: int):
  """Where a run trains: out/<stage><minutes>m-<levers>-seed<seed>."""
  name = levers if trains(levers) else 'baseline'
  return out / f'{stage}{minutes:g}m-{name}-seed{seed}'


def ensure_trained(folder: pathlib.Path, levers: str, minutes: float, seed: int, base_steps):
  """Trains the run unless a finished one is there (a part-trained one starts again)."""
  done = folder / 'trained.json'
  if done.exists():
    return
  if folder.exists():
    print(f'{folder.name}: stopped part-way before; training it again', flush=True)
    shutil.rmtree(folder)
  keys, _ = lever_keys(levers, base_steps)
  print(f'== {folder.name}: {minutes:g} min with {keys or "the demo"}', flush=True)
  bench.train_run(folder, DEMO, keys + VALIDATION, minutes, CHECKPOINT_EVERY, seed)
  done.write_text(json.dumps({'levers': levers, 'keys': keys, 'minutes': minutes}))


def judge(folder: pathlib.Path, levers: str, num_videos: int, cache: pathlib.Path) -> dict:
  """The run's numbers: steps, s/step, last validation loss, and the evaluation of the
  EMA weights of its last step with the levers' sampler on `num_videos` videos."""
  import numpy as np

  cfg, _, records = bench.trained_run(folder)
  last = last_checkpoint(folder)
  sampler, steps = lever_keys(levers, baseline_steps=2)[1]
  step_times = [r['step_time'] for r in records if 'step_time' in r][1:]  # not the compile
  val = [r['val_loss'] for r in records if 'val_loss' in r]
  return dict(
    steps=last,
    s_per_step=float(np.median(step_times)) if step_times else None,
    val_loss=val[-1] if val else None,
    sampler=f'{sampler}-{steps}',
    **bench.evaluate(cfg, last, sampler, steps, num_videos, cache),
  )


def spearman(xs: list[float], ys: list[float]) -> float:
  """Spearman's rank correlation; tied values share their mean rank."""
  import numpy as np

  def ranks(values):
    values = np.asarray(values, float)
    return np.array([np.flatnonzero(np.sort(values) == v).mean() for v in values])

  return float(np.corrcoef(ranks(xs), ranks(ys))[0, 1])


def baseline_steps(out: pathlib.Path, stage: str, minutes: float) -> int | None:
  """The steps of the seed-0 baseline of the stage and budget, once trained."""
  folder = run_folder(out, stage, 'baseline', minutes, 0)
  if not (folder / 'trained.json').exists():
    return None
  return last_checkpoint(folder)


def last_checkpoint(folder: pathlib.Path) -> int:
  """The step of a trained run's last checkpoint (the one SIGTERM wrote)."""
  return max(int(p.name) for p in (folder / 'checkpoints').iterdir() if p.name.isdigit())


def sweep(args, stage: str, seeds: list[int], num_videos: int) -> None:
  """Trains (the baseline first) and judges every lever of the stage, recording each."""
  out = pathlib.Path(args.output).resolve()
  cache = out / 'real_features'
  cache.mkdir(parents=True, exist_ok=True)
  store = out / 'sweep.json'
  names = list(LEVERS) if args.levers == 'all' else args.levers.split(',')
  names = sorted(names, key=lambda n: n != 'baseline')
  for levers in names:
    lever_keys(levers, baseline_steps=2)  # unknown names end the sweep before any work
  for seed in seeds:
    for levers in names:
      folder = run_folder(out, stage, levers, args.minutes, seed)
      steps = baseline_steps(out, stage, args.minutes)
      ensure_trained(folder, levers if trains(levers) else 'baseline', args.minutes, seed, steps)
      record = dict(stage=stage, levers=levers, seed=seed, minutes=args.minutes)
      record.update(judge(folder, levers, num_videos, cache), num_videos=num_videos)
      if stage == 'final':  # the same weights' cheap FVD, for the rank correlation
        record['fvd_64'] = judge(folder, levers, SCREEN_VIDEOS, cache)['fvd']
      done = json.loads(store.read_text()) if store.exists() else {}
      done[f'{stage}/{levers}/{seed}/{args.minutes:g}'] = record
      store.write_text(json.dumps(done, indent=2))
      print(f'{stage} {levers} seed {seed}: FVD-{num_videos} {record["fvd"]:.1f}', flush=True)
  table(args)


def _fmt(value, digits=1) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def table(args) -> None:
  """Prints and writes the sweep's table and the cheap signals' rank correlations."""
  import numpy as np

  out = pathlib.Path(args.output).resolve()
  records = list(json.loads((out / 'sweep.json').read_text()).values())
  head = (
    '| stage | levers | seed | min | steps | s/step | val loss | FVD | videos | sampler '
    '| mean pixel | frame change | mass drift |'
  )
  rows = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in sorted(records, key=lambda r: (r['stage'] != 'screen', r['fvd'])):
    rows.append(
      f'| {r["stage"]} | {r["levers"]} | {r["seed"]} | {r["minutes"]:g} | {r["steps"]} | '
      f'{_fmt(r["s_per_step"], 2)} | {_fmt(r["val_loss"], 4)} | {r["fvd"]:.1f} | '
      f'{r["num_videos"]} | '
      f'{r["sampler"]} | {r["generated_mean_pixel"]:.3f} ({r["real_mean_pixel"]:.3f}) | '
      f'{r["generated_frame_change"]:.4f} ({r["real_frame_change"]:.4f}) | '
      f'{r["generated_mass_drift"]:.4f} ({r["real_mass_drift"]:.4f}) |'
    )
  finals: dict[str, list[float]] = {}
  for r in records:
    if r['stage'] == 'final':
      finals.setdefault(r['levers'], []).append(r['fvd'])
  ranked = sorted(finals.items(), key=lambda kv: np.mean(kv[1]))
  means = ', '.join(f'{k} {np.mean(v):.1f} ({len(v)} seeds)' for k, v in ranked)
  lines = ['', f'Final FVD, mean over seeds: {means or "none yet"}']
  screens = {r['levers']: r for r in records if r['stage'] == 'screen'}
  both = [k for k in finals if k in screens]
  for signal, keep in (('fvd', both), ('val_loss', [k for k in both if trains(k)])):
    if len(keep) >= 3:
      rho = spearman([screens[k][signal] for k in keep], [float(np.mean(finals[k])) for k in keep])
      lines.append(f'Spearman, screen {signal} vs final FVD over {len(keep)} levers: {rho:.2f}')
  seed0 = [r for r in records if r['stage'] == 'final' and 'fvd_64' in r]
  if len(seed0) >= 3:
    rho = spearman([r['fvd_64'] for r in seed0], [r['fvd'] for r in seed0])
    lines.append(f'Spearman, FVD-64 vs FVD-{seed0[0]["num_videos"]} of the final runs: {rho:.2f}')
  text = '\n'.join(rows + lines)
  print(text)
  (out / 'table.md').write_text(text + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('stage', choices=['screen', 'final', 'table'])
  parser.add_argument('--levers', default='all', help="names of LEVERS, or 'all'")
  parser.add_argument('--minutes', type=float, default=None, help='screen 5, final 20')
  parser.add_argument('--seeds', default='0,1', help='final: the seeds of each lever')
  parser.add_argument('--num-videos', type=int, default=256, help='final: FVD videos')
  parser.add_argument('--output', default=str(bench.ROOT / 'results' / 'sweep'))
  args = parser.parse_args()
  os.environ.setdefault('PYTHONUNBUFFERED', '1')
  if args.stage == 'table':
    return table(args)
  if args.minutes is None:
    args.minutes = 5.0 if args.stage == 'screen' else 20.0
  if args.stage == 'screen':
    return sweep(args, 'screen', [0], SCREEN_VIDEOS)
  sweep(args, 'final', [int(s) for s in args.seeds.split(',')], args.num_videos)


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
