"""Sampling benchmark: wall time to sample videos with DDPM, DDIM and DPM-Solver++.

  python benchmarks/bench_samplers.py [--configs seed_v2_2] [--batch 16]
                                      [--ddpm-steps-measured 50] [--full-ddpm]

Each sampler runs as one compiled loop (jax.lax.fori_loop) on freshly
initialised weights (the cost does not depend on the weights). DDIM-50 and
DPM-Solver++-20 are timed in full; DDPM-1000 too with --full-ddpm, otherwise
it is timed over its first --ddpm-steps-measured steps and scaled to 1000
(every step is one model call, so the cost is linear in the steps; the table
marks such rows). The reference's row is its one-denoiser-call time from
benchmarks/bench_model.py's REFERENCE (batch 4, this machine) scaled to the
batch, times the steps: the PyTorch original's only sampler is DDPM over all
steps, one Python-dispatched call per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench_model import CONFIGS, REFERENCE, build_model, config_names, cpu_model, markdown

import video_diffusion
from video_diffusion.runtime.allocator import active_allocator, allocator_env


def time_sampler(diffusion_parts, sampler, batch: int, seed: int = 0) -> tuple[float, float]:
  """(compile seconds, run seconds) of one compiled sampling loop."""
  import jax
  from flax import nnx

  graphdef, state = diffusion_parts

  def sample(state, key):
    return nnx.merge(graphdef, state).sample(key, batch_size=batch, sampler=sampler)

  key = jax.random.key(seed)
  t0 = time.perf_counter()
  compiled = jax.jit(sample).lower(state, key).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  videos = jax.block_until_ready(compiled(state, key))
  run_s = time.perf_counter() - t0
  assert videos.shape[0] == batch
  return compile_s, run_s


SAMPLERS = ('DDPM-1000', 'DDIM-50', 'DPM-Solver++-20')


def make_sampler(label: str, ddpm_measured: int, full_ddpm: bool = False) -> tuple:
  """(sampler, model calls timed) for a label of SAMPLERS; DDPM over its first
  `ddpm_measured` steps unless `full_ddpm`."""
  from video_diffusion.diffusion import samplers

  steps = int(label.rsplit('-', 1)[1])
  if label.startswith('DDPM'):
    calls = steps if full_ddpm else min(ddpm_measured, steps)
    return samplers.DDPM(start=calls), calls
  if label.startswith('DDIM'):
    return samplers.DDIM(steps), steps
  return samplers.DPMSolverPP(steps), steps


def measure_sampler(
  name: str, parts, label: str, batch: int, ddpm_measured: int, full_ddpm: bool = False
) -> dict:
  """Compiles and times sampler `label` on the split diffusion `parts` of config `name`."""
  sampler, calls = make_sampler(label, ddpm_measured, full_ddpm)
  print(f'{name}: {label} ({calls} model calls) ...', file=sys.stderr, flush=True)
  compile_s, run_s = time_sampler(parts, sampler, batch)
  steps = int(label.rsplit('-', 1)[1])
  return dict(
    config=name,
    sampler=label,
    steps=steps,
    measured_calls=calls,
    compile_s=compile_s,
    per_call_s=run_s / calls,
    total_s=run_s / calls * steps,
  )


def run_config(name: str, batch: int, ddpm_measured: int, full_ddpm: bool) -> list[dict]:
  from flax import nnx

  parts = nnx.split(build_model(name))
  return [
    measure_sampler(name, parts, label, batch, ddpm_measured, full_ddpm) for label in SAMPLERS
  ]


def table(rows: list[dict], batch: int) -> str:
  head = [
    'config',
    'sampler',
    'model calls',
    'compile (s)',
    's / call',
    f'wall for {batch} videos',
    'reference s / call (glibc / jemalloc)',
    'reference wall (jemalloc)',
    'speed-up',
  ]
  lines = []
  for r in rows:
    glibc, jemalloc = (v * batch / 4 for v in REFERENCE[r['config']]['denoise'])
    ref_total = jemalloc * 1000  # the reference can only run all 1000 steps
    lines.append(
      [
        r['config'],
        r['sampler'],
        str(r['steps']),
        f'{r["compile_s"]:.1f}',
        f'{r["per_call_s"]:.2f}',
        sampling_wall(r),
        f'{glibc:.1f} / {jemalloc:.1f}',
        duration(ref_total),
        f'{ref_total / r["total_s"]:.0f}x',
      ]
    )
  return markdown(head, lines)


def sampling_wall(row: dict) -> str:
  """A row's wall time to samples, marked when scaled from fewer measured steps."""
  wall = duration(row['total_s'])
  if row['measured_calls'] != row['steps']:
    wall += f' (from {row["measured_calls"]} steps)'
  return wall


def duration(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} h'
  if seconds >= 60:
    return f'{seconds / 60:.1f} min'
  return f'{seconds:.1f} s'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='seed_v2_2', help=f'some of {",".join(CONFIGS)}')
  parser.add_argument('--batch', type=int, default=16, help='videos per sampling call')
  parser.add_argument('--ddpm-steps-measured', type=int, default=50)
  parser.add_argument('--full-ddpm', action='store_true', help='time all 1000 DDPM steps')
  parser.add_argument('--malloc', default='auto', help='glibc, jemalloc, tcmalloc or auto')
  args = parser.parse_args()
  if args.malloc != 'glibc' and 'BENCH_SAMPLERS_MALLOC' not in os.environ:
    env = allocator_env(args.malloc)
    if 'LD_PRELOAD' in env:  # re-run with the faster allocator preloaded (as sample.py does)
      env['BENCH_SAMPLERS_MALLOC'] = '1'
      os.execve(sys.executable, [sys.executable] + sys.argv, env)
  rows = []
  for name in config_names(parser, args.configs):
    rows += run_config(name, args.batch, args.ddpm_steps_measured, args.full_ddpm)
  import jax

  print(
    f'{time.strftime("%Y-%m-%d %H:%M:%S")} | jax {jax.__version__} | {cpu_model()} '
    f'({os.cpu_count()} CPUs) | device {jax.devices()[0].device_kind} | malloc '
    f'{active_allocator()} | reference: one denoiser call at batch 4 scaled to {args.batch}'
  )
  print()
  print(table(rows, args.batch))


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
