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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_model import CONFIGS, REFERENCE, cpu_model  # noqa: E402
from video_diffusion.allocator import active_allocator, allocator_env  # noqa: E402

TIMESTEPS = 1000


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


def run_config(name: str, batch: int, ddpm_measured: int, full_ddpm: bool) -> list[dict]:
  from flax import nnx
  from video_diffusion import samplers
  from video_diffusion.config import config_from_dict
  from video_diffusion.factory import build_diffusion

  c = CONFIGS[name]
  cfg = config_from_dict({
      'unet': dict(dim=c['dim'], dim_mults=list(c['dim_mults']), channels=c['channels']),
      'diffusion': dict(image_size=c['image_size'], num_frames=c['num_frames'],
                        channels=c['channels'], timesteps=TIMESTEPS)})
  parts = nnx.split(build_diffusion(cfg))
  runs = [('DDPM-1000', samplers.DDPM(), TIMESTEPS) if full_ddpm else
          ('DDPM-1000', samplers.DDPM(start=ddpm_measured), ddpm_measured),
          ('DDIM-50', samplers.DDIM(50), 50), ('DPM-Solver++-20', samplers.DPMSolverPP(20), 20)]
  rows = []
  for label, sampler, calls in runs:
    print(f'{name}: {label} ({calls} model calls) ...', file=sys.stderr, flush=True)
    compile_s, run_s = time_sampler(parts, sampler, batch)
    per_call = run_s / calls
    steps = int(label.split('-')[-1])
    rows.append(dict(config=name, sampler=label, steps=steps, measured_calls=calls,
                     compile_s=compile_s, per_call_s=per_call, total_s=per_call * steps))
  return rows


def table(rows: list[dict], batch: int) -> str:
  head = ['config', 'sampler', 'model calls', 'compile (s)', 's / call', f'wall for {batch} videos',
          'reference s / call (glibc / jemalloc)', 'reference wall (jemalloc)', 'speed-up']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    glibc, jemalloc = (v * batch / 4 for v in REFERENCE[r['config']]['denoise'])
    ref_total = jemalloc * 1000  # the reference can only run all 1000 steps
    wall = _duration(r['total_s'])
    if r['measured_calls'] != r['steps']:
      wall += f' (from {r["measured_calls"]} steps)'
    lines.append('| ' + ' | '.join([
        r['config'], r['sampler'], str(r['steps']), f"{r['compile_s']:.1f}",
        f"{r['per_call_s']:.2f}", wall, f'{glibc:.1f} / {jemalloc:.1f}', _duration(ref_total),
        f"{ref_total / r['total_s']:.0f}x"]) + ' |')
  return '\n'.join(lines)


def _duration(seconds: float) -> str:
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
  for name in args.configs.split(','):
    if name not in CONFIGS:
      parser.error(f'unknown config {name!r}: use some of {",".join(CONFIGS)}')
    rows += run_config(name, args.batch, args.ddpm_steps_measured, args.full_ddpm)
  import jax
  print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} | jax {jax.__version__} | {cpu_model()} "
        f"({os.cpu_count()} CPUs) | device {jax.devices()[0].device_kind} | malloc "
        f"{active_allocator()} | reference: one denoiser call at batch 4 scaled to {args.batch}")
  print()
  print(table(rows, args.batch))


if __name__ == '__main__':
  main()
