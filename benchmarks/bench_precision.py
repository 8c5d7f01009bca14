"""Train-step time and memory of float32 vs bfloat16 compute, with and without remat.

  python benchmarks/bench_precision.py [--configs tiny,seed_v2_2] [--repeats 5]

Each (config, dtype, remat) variant runs in its own subprocess (`--one NAME
--dtype D [--remat] --json`), so the peak RSS is the variant's own; the parent
never imports jax and prints a Markdown table. The train step is loss + grad +
Adam as one jitted function (as in bench_model.py); its time is the median of
--repeats steps after the warm-ups. "XLA temp" is the compiled step's scratch
memory (memory_analysis().temp_size_in_bytes: the activations kept for the
backward pass live there), which every backend reports; "device peak" is the
accelerator's peak_bytes_in_use where the backend has memory stats.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench_model import (
  CONFIGS,
  build_model,
  child_env,
  config_names,
  device_fields,
  fmt,
  header,
  markdown,
  peak_rss_gb,
  run_child,
  time_train_step,
)

import video_diffusion

DTYPES = ('float32', 'bfloat16')


def run_one(name: str, dtype: str, remat: bool, repeats: int) -> dict:
  """Benchmarks one variant in this process; returns the figures as a dict."""
  import jax

  diffusion = build_model(name, compute_dtype=dtype, remat=remat)
  shape = (CONFIGS[name]['batch'],) + diffusion.video_shape
  kb, kstep = jax.random.split(jax.random.key(0))

  figures = time_train_step(diffusion, shape, kb, kstep, repeats)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  peak_device = None if not stats else stats.get('peak_bytes_in_use')
  return dict(
    config=name,
    dtype=dtype,
    remat=remat,
    params_m=figures['n_params'] / 1e6,
    compile_s=figures['compile_s'],
    step_s=figures['step_s'],
    flops=figures['flops'],
    loss=figures['loss'],
    temp_bytes=figures['temp_bytes'],
    device_peak_bytes=peak_device,
    rss_gb=peak_rss_gb(),
    **device_fields(),
  )


def table(rows: list[dict]) -> str:
  """The Markdown table; speedup and temp ratio are against float32 without remat."""
  head = [
    'config',
    'dtype',
    'remat',
    'compile (s)',
    'train step (s)',
    'speedup',
    'GFLOP/step',
    'XLA temp (MB)',
    'temp vs f32',
    'device peak (MB)',
    'peak RSS (GB)',
    'loss',
  ]
  base = {r['config']: r for r in rows if r['dtype'] == 'float32' and not r['remat']}
  lines = []
  for r in rows:
    b = base.get(r['config'])
    speedup = None if b is None else b['step_s'] / r['step_s']
    temp_ratio = (
      None
      if b is None or not b['temp_bytes'] or r['temp_bytes'] is None
      else r['temp_bytes'] / b['temp_bytes']
    )
    cells = [
      r['config'],
      r['dtype'],
      'yes' if r['remat'] else 'no',
      fmt(r['compile_s'], '.1f'),
      fmt(r['step_s'], '.3f'),
      fmt(speedup, '.2f'),
      fmt(None if r['flops'] is None else r['flops'] / 1e9, '.1f'),
      fmt(None if r['temp_bytes'] is None else r['temp_bytes'] / 1e6, '.1f'),
      fmt(temp_ratio, '.2f'),
      fmt(None if r['device_peak_bytes'] is None else r['device_peak_bytes'] / 1e6, '.1f'),
      fmt(r['rss_gb'], '.2f'),
      fmt(r['loss'], '.4f'),
    ]
    lines.append(cells)
  return markdown(head, lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtypes', default=','.join(DTYPES))
  parser.add_argument('--one', choices=sorted(CONFIGS), help='run one variant in this process')
  parser.add_argument('--dtype', choices=DTYPES, default='float32', help='with --one')
  parser.add_argument('--remat', action='store_true', help='with --one')
  parser.add_argument('--json', action='store_true', help='with --one: print one JSON line')
  args = parser.parse_args()
  if args.one:
    video_diffusion.configure_cpu()  # before JAX starts its backend
    result = run_one(args.one, args.dtype, args.remat, args.repeats)
    print(json.dumps(result) if args.json else result, flush=True)
    return

  names = config_names(parser, args.configs)
  dtypes = [d for d in args.dtypes.split(',') if d]
  for d in dtypes:
    if d not in DTYPES:
      parser.error(f'unknown dtype {d!r}: use some of {",".join(DTYPES)}')
  env = child_env()
  rows = []
  for n in names:
    for dtype in dtypes:
      for remat in (False, True):
        label = f'{n} {dtype}{" remat" if remat else ""}'
        print(f'running {label} ...', file=sys.stderr, flush=True)
        cmd = [
          sys.executable,
          os.path.abspath(__file__),
          '--one',
          n,
          '--dtype',
          dtype,
          '--json',
          '--repeats',
          str(args.repeats),
        ] + (['--remat'] if remat else [])
        row = run_child(cmd, label, env)
        if row is not None:
          rows.append(row)
  if not rows:
    sys.exit('no variant ran to completion')
  print(header(rows, args.repeats))
  print()
  print(table(rows))


if __name__ == '__main__':
  main()
