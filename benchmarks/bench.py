"""The project's performance table: train step and sampling, ours and the PyTorch reference's.

  python benchmarks/bench.py [--configs tiny,seed_v2_2] [--repeats 5] [--rounds 3]
                             [--ddpm-steps-measured 10] [--batch 4] [--allocators auto]
                             [--no-reference]

For each config of bench_model.CONFIGS: the jitted train step (loss + grad +
Adam, median of --repeats after the warm-ups), its compile time and achieved
GFLOP/s (XLA cost analysis) against this CPU's FP32 peak; and the wall time to
--batch videos of DDPM-1000 (timed over its first --ddpm-steps-measured steps
and scaled, marked so), DDIM-50 and DPM-Solver++-20, each timed once per round
after compiling. Every measurement runs in its own subprocess (peak RSS is the
row's own); this parent imports neither jax nor torch.

The reference columns need the optional PyTorch original (not a dependency):

  pip install torch==2.13.0 einops einops-exts rotary-embedding-torch tqdm
  pip install --no-deps video-diffusion-pytorch==0.7.0

With it installed, each round runs every measurement of ours then the same of
the reference (benchmarks/reference.py), and the tables give reference time /
our time. The reference's only sampler is DDPM-1000, so DDIM-50 and
DPM-Solver++-20 are compared with it as wall-clock to samples.

--allocators: 'auto' runs ours with the fastest installed malloc (tcmalloc,
then jemalloc) and the reference with jemalloc without decay (its fastest);
'glibc', 'jemalloc' or 'tcmalloc' runs both with that one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import reference  # noqa: E402  (imports no torch)
from benchmarks.bench_model import (CONFIGS, CPU_PEAK_GFLOPS, WARMUPS,  # noqa: E402
                                    achieved, build_model, child_env, config_names,
                                    device_fields, fmt, header, markdown, peak_rss_gb,
                                    run_child, time_train_step)
from benchmarks.bench_samplers import SAMPLERS, measure_sampler, sampling_wall  # noqa: E402
from video_diffusion.allocator import (JEMALLOC_CONF, active_allocator,  # noqa: E402
                                       allocator_env, find_allocator)

MEASURES = ('train',) + SAMPLERS


def measure_ours(name: str, what: str, repeats: int, batch: int, ddpm_measured: int) -> dict:
  """One JSON row: the figures of `what` (a MEASURES entry) for config `name`."""
  import jax
  from flax import nnx

  diffusion = build_model(name)
  if what == 'train':
    shape = (CONFIGS[name]['batch'],) + diffusion.video_shape
    batch_key, step_key = jax.random.split(jax.random.key(0))
    figures = time_train_step(diffusion, shape, batch_key, step_key, repeats)
    row = dict(params_m=figures['n_params'] / 1e6, compile_s=figures['compile_s'],
               time_s=figures['step_s'], flops=figures['flops'], loss=figures['loss'])
  else:
    row = measure_sampler(name, nnx.split(diffusion), what, batch, ddpm_measured)
  return dict(row, side='ours', config=name, what=what, malloc=active_allocator(),
              rss_gb=peak_rss_gb(), **device_fields())


def side_env(side: str, allocator: str, base: dict) -> dict:
  """The environment of a `side` subprocess with `allocator` (ValueError if missing)."""
  if side == 'reference' and allocator == 'auto':
    allocator = 'jemalloc' if find_allocator('jemalloc') else 'glibc'
  return allocator_env(allocator, base)


def child_command(side: str, name: str, what: str, args) -> list[str]:
  script = __file__ if side == 'ours' else reference.__file__
  return [sys.executable, os.path.abspath(script), '--one', name, '--measure', what,
          '--repeats', str(args.repeats), '--batch', str(args.batch),
          '--ddpm-steps-measured', str(args.ddpm_steps_measured)]


def run_rounds(names, allocators, sides, args) -> dict[tuple, list[dict]]:
  """{(side, config, allocator, what): [row of each round]}; ours then the reference."""
  envs = {(side, a): side_env(side, a, child_env()) for side in sides for a in allocators}
  runs = {}
  for name in names:
    for allocator in allocators:
      for r in range(args.rounds):
        for what in MEASURES:
          for side in sides:
            if side == 'reference' and what not in reference.MEASURES:
              continue
            label = f'{name} {what} {side} ({allocator}, round {r + 1}/{args.rounds})'
            print(f'running {label} ...', file=sys.stderr, flush=True)
            row = run_child(child_command(side, name, what, args), label, envs[side, allocator])
            if row is not None:
              runs.setdefault((side, name, allocator, what), []).append(dict(row, round=r))
  return runs


def median_of(rows: list[dict] | None, field: str) -> float | None:
  return None if not rows else statistics.median(r[field] for r in rows)


def ratio(ref_rows: list[dict] | None, our_rows: list[dict] | None, field: str) -> str:
  """Reference / ours of the medians; with the range of the per-round ratios."""
  ref, ours = median_of(ref_rows, field), median_of(our_rows, field)
  if ref is None or ours is None:
    return '-'
  text = f'{ref / ours:.3g}x'
  ours_by_round = {r['round']: r[field] for r in our_rows}
  each = [r[field] / ours_by_round[r['round']] for r in ref_rows if r['round'] in ours_by_round]
  if len(each) > 1:
    text += f' ({min(each):.3g}-{max(each):.3g})'
  return text


def malloc_cell(our_rows, ref_rows) -> str:
  """The malloc of each side's runs: 'ours / reference' or 'ours'."""
  return ' / '.join(rows[0]['malloc'] for rows in (our_rows, ref_rows) if rows)


def peak_rss(rows: list[dict] | None) -> str:
  return fmt(rows and max(r['rss_gb'] for r in rows), '.2f')


def median_wall(rows: list[dict] | None) -> str:
  """The median wall time to samples over rounds, marked when scaled."""
  return '-' if not rows else sampling_wall(dict(rows[0], total_s=median_of(rows, 'total_s')))


def malloc_head(with_ref: bool) -> str:
  return 'malloc (ours / ref)' if with_ref else 'malloc'


def train_table(runs, names, allocators, with_ref: bool) -> str:
  """Train step: one row a config and allocator, medians over the rounds."""
  head = ['config', malloc_head(with_ref), 'params (M)', 'compile (s)', 'train step (s)',
          'GFLOP/step', 'GFLOP/s', f'% of CPU peak ({CPU_PEAK_GFLOPS:.0f} GFLOP/s)',
          'peak RSS (GB)']
  head += ['ref train step (s)', 'ref peak RSS (GB)', 'ref / ours'] if with_ref else []
  lines = []
  for name in names:
    for a in allocators:
      ours, ref = runs.get(('ours', name, a, 'train')), runs.get(('reference', name, a, 'train'))
      if not ours:
        continue
      step_s = median_of(ours, 'time_s')
      gflop, gflops, pct = achieved(ours[0]['flops'], step_s, ours[0]['platform'])
      cells = [name, malloc_cell(ours, ref), fmt(ours[0]['params_m'], '.2f'),
               fmt(median_of(ours, 'compile_s'), '.1f'), fmt(step_s, '.3f'), fmt(gflop, '.1f'),
               fmt(gflops, '.1f'), fmt(pct, '.1f'), peak_rss(ours)]
      if with_ref:
        cells += [fmt(median_of(ref, 'time_s'), '.3f'), peak_rss(ref),
                  ratio(ref, ours, 'time_s')]
      lines.append(cells)
  return markdown(head, lines)


def sampling_table(runs, names, allocators, batch: int, with_ref: bool) -> str:
  """Sampling: one row a config, allocator and sampler, medians over the rounds."""
  head = ['config', 'sampler', malloc_head(with_ref), 'model calls', 'compile (s)', 's / call',
          f'wall for {batch} videos', 'peak RSS (GB)']
  head += ['ref DDPM-1000 s / call', 'ref DDPM-1000 wall', 'ref peak RSS (GB)',
           'ref / ours (wall to samples)'] if with_ref else []
  lines = []
  for name in names:
    for a in allocators:
      ref = runs.get(('reference', name, a, 'DDPM-1000'))
      for sampler in SAMPLERS:
        ours = runs.get(('ours', name, a, sampler))
        if not ours:
          continue
        cells = [name, sampler, malloc_cell(ours, ref), str(ours[0]['steps']),
                 fmt(median_of(ours, 'compile_s'), '.1f'),
                 fmt(median_of(ours, 'per_call_s'), '.3f'), median_wall(ours), peak_rss(ours)]
        if with_ref:
          cells += [fmt(median_of(ref, 'per_call_s'), '.3f'), median_wall(ref), peak_rss(ref),
                    ratio(ref, ours, 'total_s')]
        lines.append(cells)
  return markdown(head, lines)


def reference_sides(args) -> tuple[tuple[str, ...], str | None]:
  """The sides to run, and the line saying why the reference was skipped (or None)."""
  if args.no_reference:
    return ('ours',), 'reference columns skipped (--no-reference).'
  versions = reference.installed_versions()
  if versions is None:
    return ('ours',), ('reference columns skipped: torch==2.13.0 and video-diffusion-pytorch'
                       f'==0.7.0 are not importable; to add them: {reference.INSTALL}')
  if any(versions[n].split('+')[0] != v for n, v in reference.PINNED.items()):
    print(f'warning: reference versions {versions} differ from {reference.PINNED}',
          file=sys.stderr)
  return ('ours', 'reference'), None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--repeats', type=int, default=5, help='timed train steps per run')
  parser.add_argument('--rounds', type=int, default=3, help='alternation rounds (ours, ref)')
  parser.add_argument('--ddpm-steps-measured', type=int, default=10)
  parser.add_argument('--batch', type=int, default=4, help='videos per sampling call')
  parser.add_argument('--allocators', default='auto',
                      help='comma-separated: auto (ours fastest, ref jemalloc), glibc, ...')
  parser.add_argument('--no-reference', action='store_true')
  parser.add_argument('--one', choices=sorted(CONFIGS), help='run one measurement here')
  parser.add_argument('--measure', choices=MEASURES, default='train', help='with --one')
  args = parser.parse_args()
  if min(args.repeats, args.rounds, args.ddpm_steps_measured, args.batch) < 1:
    parser.error('--repeats, --rounds, --ddpm-steps-measured and --batch must be positive')
  if args.one:
    print(json.dumps(measure_ours(args.one, args.measure, args.repeats, args.batch,
                                  args.ddpm_steps_measured)), flush=True)
    return

  names = config_names(parser, args.configs)
  load = os.getloadavg()[0]  # other work on the CPU slows both sides, the reference more
  allocators = list(dict.fromkeys(a for a in args.allocators.split(',') if a))
  sides, skipped = reference_sides(args)
  try:
    runs = run_rounds(names, allocators, sides, args)
  except ValueError as error:  # an allocator that is not installed
    sys.exit(str(error))
  ours = [row for (side, *_), rows in runs.items() if side == 'ours' for row in rows]
  if not ours:
    sys.exit('no measurement of ours ran to completion')
  ref = [row for (side, *_), rows in runs.items() if side == 'reference' for row in rows]
  with_ref = 'reference' in sides
  extras = ((f"torch {ref[0]['torch_version']}",) if ref else ()) + (
      f'load average {load:.2f} at start',)
  print(header(ours, args.repeats, extras))
  print(f'{args.rounds} round(s); train step: median over rounds of each run\'s median of '
        f'{args.repeats} after {WARMUPS} warm-ups; sampling: one run per round after '
        f'compiling, batch {args.batch}' + ('; each round runs ours, then the reference'
                                            if with_ref else ''))
  if any(r['malloc'] == 'jemalloc' for r in ours + ref):
    print(f"jemalloc runs with MALLOC_CONF={os.environ.get('MALLOC_CONF', JEMALLOC_CONF)}")
  if skipped:
    print(skipped)
  print()
  print(train_table(runs, names, allocators, with_ref))
  print()
  print(sampling_table(runs, names, allocators, args.batch, with_ref))
  if with_ref:
    print()
    print('ref / ours: reference time / our time (median of rounds, per-round range in '
          'brackets); the reference samples only with DDPM-1000, so every sampling row '
          'compares with its DDPM-1000 wall time.')


if __name__ == '__main__':
  main()
