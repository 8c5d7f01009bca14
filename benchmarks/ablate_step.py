"""What each attention costs the train step: the step with layers replaced by
the identity (docs/performance.md).

  python benchmarks/ablate_step.py [--config seed_v2_2] [--rounds 2] [--repeats 3]

Each round runs, each in its own process with the allocator of --malloc
(default auto), bench_model's train step and denoiser call of --config as
they are and with the temporal attention, the linear attention or both
replaced by the identity. The rows differ by what the removed layers cost,
including the memory they hold. Prints a Markdown table: the median over
rounds, and each round's figure in brackets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from bench_model import CONFIGS, child_env, fmt, header, markdown, run_child, run_one

import video_diffusion
from video_diffusion.models import attention
from video_diffusion.runtime.allocator import allocator_env, resolve

LAYERS = {'temporal': attention.TemporalAttention, 'linear': attention.SpatialLinearAttention}
REMOVALS = ['', 'temporal', 'linear', 'temporal,linear']


def identity(self, x, *args, **kwargs):
  return x


def run_removed(config: str, removed: str, repeats: int) -> dict:
  """bench_model.run_one with the layers named in `removed` (comma-separated) as identities."""
  for name in filter(None, removed.split(',')):
    LAYERS[name].__call__ = identity
  return dict(run_one(config, repeats), removed=removed)


def table(rows: dict[str, list[dict]]) -> str:
  def cell(runs, key, spec):
    values = [r[key] for r in runs]
    each = ', '.join(format(v, spec) for v in values)
    return f'{fmt(statistics.median(values), spec)} ({each})'

  head = ['removed', 'train step s', 'denoiser call s', 'peak RSS GB', 'GFLOP/step']
  body = [
    [
      removed or 'nothing',
      cell(runs, 'step_s', '.2f'),
      cell(runs, 'denoise_s', '.3f'),
      cell(runs, 'rss_gb', '.2f'),
      fmt(runs[0]['flops'] / 1e9, '.1f'),
    ]
    for removed, runs in rows.items()
    if runs
  ]
  return markdown(head, body)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='seed_v2_2', choices=sorted(CONFIGS))
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--malloc', default='auto')
  parser.add_argument('--removed', help=argparse.SUPPRESS)  # child: one measurement
  args = parser.parse_args()
  if args.removed is not None:
    print(json.dumps(run_removed(args.config, args.removed, args.repeats)))
    return
  env = allocator_env(args.malloc, child_env())
  rows = {removed: [] for removed in REMOVALS}
  for r in range(args.rounds):
    for removed in REMOVALS:
      label = f'{args.config} without {removed or "nothing"} (round {r + 1}/{args.rounds})'
      print(f'running {label} ...', file=sys.stderr, flush=True)
      cmd = [sys.executable, __file__, '--config', args.config, '--removed', removed]
      row = run_child(cmd + ['--repeats', str(args.repeats)], label, env)
      if row is not None:
        rows[removed].append(row)
  done = [runs[0] for runs in rows.values() if runs]
  if not done:
    sys.exit('every measurement failed')
  print(header(done, args.repeats, (f'malloc {resolve(args.malloc)}',)))
  print(table(rows))


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
