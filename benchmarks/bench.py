"""The project's performance table: ours against the PyTorch reference, measured in one run.

  python benchmarks/bench.py [--configs tiny,seed_v2_2] [--repeats 5] [--rounds 3]
                             [--batch 4] [--samplers] [--ddpm-steps-measured 10]
                             [--our-malloc auto] [--reference-mallocs jemalloc,glibc]
                             [--reference-python PATH | --no-reference]

Each round measures, each in its own subprocess (so peak RSS is the row's own):
the host's practical FP32 peak (a jitted 4096^3 float32 matmul, best of 5);
then per config, ours and the reference alternating: the train step (loss +
grad + Adam, median of --repeats after the warm-ups) and one denoiser call on
--batch videos; with --samplers also the wall time to --batch videos of
DDPM-1000 (its first --ddpm-steps-measured steps, scaled), DDIM-50 and
DPM-Solver++-20 (ours) against the reference's DDPM-1000.

Ours runs with what a machine set up from the README gets (--our-malloc auto:
mimalloc from its PyPI wheel). The reference runs with each of
--reference-mallocs: jemalloc without decay is its best setting (needs
libjemalloc2), glibc its default. The reference's Python is --reference-python,
by default this one if torch==2.13.0 and video-diffusion-pytorch==0.7.0 import
here, else .venv-reference/bin/python (`make bench` creates it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import reference
from bench_model import (
  CONFIGS,
  REFERENCE,
  ROOT,
  WARMUPS,
  build_model,
  child_env,
  config_names,
  device_fields,
  fmt,
  header,
  markdown,
  median_time,
  peak_rss_gb,
  run_child,
  time_train_step,
)
from bench_samplers import SAMPLERS, measure_sampler, sampling_wall

import video_diffusion
from video_diffusion.runtime.allocator import SETTINGS, active_allocator, allocator_env, resolve

REFERENCE_VENV_PYTHON = os.path.join(ROOT, '.venv-reference', 'bin', 'python')
PEAK_SIZE = 4096


def measure_peak() -> dict:
  """The practical FP32 peak: GFLOP/s of the best of 5 jitted PEAK_SIZE^3 matmuls."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (PEAK_SIZE, PEAK_SIZE), jnp.float32)
  matmul = jax.jit(jnp.matmul).lower(a, a).compile()
  jax.block_until_ready(matmul(a, a))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    times.append(time.perf_counter() - start)
  return dict(gflops=2 * PEAK_SIZE**3 / min(times) / 1e9)


def measure_denoise(name: str, batch: int, repeats: int) -> dict:
  """Median seconds of one jitted denoiser call on `batch` videos."""
  import jax
  from flax import nnx

  unet = build_model(name).denoise_fn
  graphdef, state = nnx.split(unet)
  c = CONFIGS[name]
  x = jax.random.normal(
    jax.random.key(0), (batch, c['num_frames'], c['image_size'], c['image_size'], c['channels'])
  )
  t = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
  call = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t)).lower(state, x, t).compile()
  return dict(
    time_s=median_time(lambda: jax.block_until_ready(call(state, x, t)), repeats), batch=batch
  )


def measure_ours(name: str, what: str, repeats: int, batch: int, ddpm_measured: int) -> dict:
  """One JSON row of ours: `what` is peak, train, denoise or a SAMPLERS label."""
  import jax
  from flax import nnx

  if what == 'peak':
    row = measure_peak()
  elif what == 'train':
    diffusion = build_model(name)
    shape = (CONFIGS[name]['batch'],) + diffusion.video_shape
    batch_key, step_key = jax.random.split(jax.random.key(0))
    figures = time_train_step(diffusion, shape, batch_key, step_key, repeats)
    row = dict(
      params_m=figures['n_params'] / 1e6,
      compile_s=figures['compile_s'],
      time_s=figures['step_s'],
      flops=figures['flops'],
      loss=figures['loss'],
    )
  elif what == 'denoise':
    row = measure_denoise(name, batch, repeats)
  else:
    row = measure_sampler(name, nnx.split(build_model(name)), what, batch, ddpm_measured)
  return dict(
    row,
    side='ours',
    config=name,
    what=what,
    malloc=active_allocator(),
    rss_gb=peak_rss_gb(),
    **device_fields(),
  )


def default_reference_python() -> str | None:
  """This Python if the reference imports here, else .venv-reference's, else None."""
  if reference.installed_versions() is not None:
    return sys.executable
  return REFERENCE_VENV_PYTHON if os.path.exists(REFERENCE_VENV_PYTHON) else None


def child_command(python: str, side: str, name: str, what: str, args) -> list[str]:
  script = os.path.abspath(__file__ if side == 'ours' else reference.__file__)
  return [
    python,
    script,
    '--one',
    name,
    '--measure',
    what,
    '--repeats',
    str(args.repeats),
    '--batch',
    str(args.batch),
    '--ddpm-steps-measured',
    str(args.ddpm_steps_measured),
  ]


def allocator_settings(name: str) -> str:
  """The settings the runs with allocator `name` get, as KEY=value, ..."""
  env = allocator_env(name, child_env())
  return ', '.join(f'{key}={env[key]}' for key in SETTINGS[name])


def run_rounds(names, args, ref_python: str | None) -> dict[tuple, list[dict]]:
  """{(side, config, malloc, what): [row of each round]}, ours and the reference alternating."""
  base = child_env()
  our_env = allocator_env(args.our_malloc, base)
  ref_envs = {m: allocator_env(m, base) for m in args.reference_mallocs} if ref_python else {}
  measures = ['train', 'denoise'] + (list(SAMPLERS) if args.samplers else [])
  runs = {}

  def run(side, name, what, malloc, env, python, r):
    label = f'{name} {what} {side} ({malloc}, round {r + 1}/{args.rounds})'
    print(f'running {label} ...', file=sys.stderr, flush=True)
    row = run_child(child_command(python, side, name, what, args), label, env)
    if row is not None:
      runs.setdefault((side, name, malloc, what), []).append(dict(row, round=r))

  for r in range(args.rounds):
    run('ours', names[0], 'peak', args.our_malloc, our_env, sys.executable, r)
    for name in names:
      for what in measures:
        run('ours', name, what, args.our_malloc, our_env, sys.executable, r)
        ref_what = 'DDPM-1000' if what in SAMPLERS else what
        if what in SAMPLERS and what != SAMPLERS[0]:
          continue  # the reference's one sampler runs once per round
        for malloc, env in ref_envs.items():
          run('reference', name, ref_what, malloc, env, ref_python, r)
  return runs


def median_of(rows, field: str) -> float | None:
  return None if not rows else statistics.median(r[field] for r in rows)


def ratio(ref_rows, our_rows, field: str = 'time_s') -> str:
  """Reference / ours of the medians, with the range of the per-round ratios."""
  ref, ours = median_of(ref_rows, field), median_of(our_rows, field)
  if ref is None or ours is None:
    return '-'
  text = f'**{ref / ours:.2f}x**'
  ours_by_round = {r['round']: r[field] for r in our_rows}
  each = [r[field] / ours_by_round[r['round']] for r in ref_rows if r['round'] in ours_by_round]
  if len(each) > 1:
    text += f' ({min(each):.2f}-{max(each):.2f})'
  return text


def peak_rss(rows) -> str:
  return fmt(max(r['rss_gb'] for r in rows) if rows else None, '.2f')


def speed_table(runs, names, args, peak: float | None) -> str:
  """Train step and denoiser call: ours, the reference with each malloc, the ratios."""
  head = [
    'config',
    'measure',
    f'ours ({resolve(args.our_malloc)}) s',
    'GFLOP/s',
    '% of measured FP32 peak',
    "% of peak at the original's FLOPs",
    'ours peak RSS (GB)',
  ]
  for m in args.reference_mallocs:
    head += [f'reference ({m}) s', f'reference ({m}) / ours']
  head += ['reference peak RSS (GB)']
  lines = []
  for name in names:
    for what in ('train', 'denoise'):
      ours = runs.get(('ours', name, args.our_malloc, what))
      if not ours:
        continue
      seconds = median_of(ours, 'time_s')
      flops = ours[0].get('flops')
      gflops = flops / 1e9 / seconds if flops else None
      pct = 100 * gflops / peak if gflops and peak else None
      # The same step counted as the original computes it (before our algebraic
      # savings, e.g. the folded linear attention): model FLOPs utilisation.
      model_gflop = REFERENCE[name]['gflop'] if what == 'train' else None
      model_pct = 100 * model_gflop / seconds / peak if model_gflop and peak else None
      cells = [
        name,
        'train step' if what == 'train' else f'denoiser call (batch {args.batch})',
        fmt(seconds, '.3f'),
        fmt(gflops, '.1f'),
        fmt(pct, '.1f'),
        fmt(model_pct, '.1f'),
        peak_rss(ours),
      ]
      ref_rss = []
      for m in args.reference_mallocs:
        ref = runs.get(('reference', name, m, what))
        ref_rss += ref or []
        cells += [fmt(median_of(ref, 'time_s'), '.3f'), ratio(ref, ours)]
      lines.append(cells + [peak_rss(ref_rss)])
  return markdown(head, lines)


def sampling_table(runs, names, args) -> str:
  """Wall time to --batch videos for each of our samplers against the reference's DDPM-1000."""
  best = args.reference_mallocs[0] if args.reference_mallocs else None
  head = [
    'config',
    'sampler',
    'model calls',
    's / call',
    f'wall for {args.batch} videos',
    f'reference ({best}) DDPM-1000 wall',
    'reference / ours',
  ]
  lines = []
  for name in names:
    ref = runs.get(('reference', name, best, 'DDPM-1000'))
    for sampler in SAMPLERS:
      ours = runs.get(('ours', name, args.our_malloc, sampler))
      if ours:
        wall = sampling_wall(dict(ours[0], total_s=median_of(ours, 'total_s')))
        ref_wall = (
          '-' if not ref else sampling_wall(dict(ref[0], total_s=median_of(ref, 'total_s')))
        )
        lines.append(
          [
            name,
            sampler,
            str(ours[0]['steps']),
            fmt(median_of(ours, 'per_call_s'), '.3f'),
            wall,
            ref_wall,
            ratio(ref, ours, 'total_s'),
          ]
        )
  return markdown(head, lines)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--repeats', type=int, default=5, help='timed calls per run')
  parser.add_argument('--rounds', type=int, default=3, help='alternation rounds')
  parser.add_argument('--batch', type=int, default=4, help='videos per denoiser/sampler call')
  parser.add_argument('--samplers', action='store_true', help='add the sampling table')
  parser.add_argument('--ddpm-steps-measured', type=int, default=10)
  parser.add_argument('--our-malloc', default='auto')
  parser.add_argument('--reference-mallocs', default='jemalloc,glibc')
  parser.add_argument('--reference-python', default=None, metavar='PATH')
  parser.add_argument('--no-reference', action='store_true')
  parser.add_argument('--one', choices=sorted(CONFIGS), help='run one measurement here')
  parser.add_argument('--measure', default='train', help='with --one')
  args = parser.parse_args()
  if min(args.repeats, args.rounds, args.ddpm_steps_measured, args.batch) < 1:
    parser.error('--repeats, --rounds, --ddpm-steps-measured and --batch must be positive')
  args.names = config_names(parser, args.configs)
  args.reference_mallocs = [m for m in args.reference_mallocs.split(',') if m]
  return args


def main() -> None:
  args = parse_args()
  if args.one:
    print(
      json.dumps(
        measure_ours(args.one, args.measure, args.repeats, args.batch, args.ddpm_steps_measured)
      ),
      flush=True,
    )
    return
  ref_python = None if args.no_reference else (args.reference_python or default_reference_python())
  if ref_python is None and not args.no_reference:
    print(
      'reference columns skipped: torch==2.13.0 and video-diffusion-pytorch==0.7.0 are '
      f'not importable here; `make bench` installs them into .venv-reference '
      f'({reference.INSTALL})',
      file=sys.stderr,
    )
  load = os.getloadavg()[0]  # other work on the CPU slows both sides
  try:
    runs = run_rounds(args.names, args, ref_python)
  except ValueError as error:  # an allocator that is not installed
    sys.exit(f'error: {error}')
  ours = [row for (side, *_), rows in runs.items() if side == 'ours' for row in rows]
  if not ours:
    sys.exit('no measurement of ours ran to completion')
  refs = [row for (side, *_), rows in runs.items() if side == 'reference' for row in rows]
  peak = median_of(runs.get(('ours', args.names[0], args.our_malloc, 'peak')), 'gflops')
  extras = ((f'torch {refs[0]["torch_version"]}',) if refs else ()) + (
    f'load average {load:.2f} at start',
    f'measured FP32 peak {fmt(peak, ".0f")} GFLOP/s',
  )
  print(header(ours, args.repeats, extras))
  print(
    f'{args.rounds} round(s), ours and the reference alternating; each figure the median '
    f"over rounds of a run's median of {args.repeats} after {WARMUPS} warm-ups; "
    f'reference / ours: median ratio, per-round range in brackets'
  )
  if any(r['malloc'] == 'jemalloc' for r in refs):
    print(f'jemalloc runs with {allocator_settings("jemalloc")}')
  if resolve(args.our_malloc) == 'mimalloc':
    print(f'ours runs with mimalloc, {allocator_settings("mimalloc")}')
  print()
  print(speed_table(runs, args.names, args, peak))
  if args.samplers:
    print()
    print(sampling_table(runs, args.names, args))


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
