"""Train-step and denoiser benchmark of the JAX port against the PyTorch reference.

  python benchmarks/bench_model.py [--configs tiny,seed_v2_2] [--repeats 5]
                                   [--allocators glibc,jemalloc]

Each allocator row runs with that malloc preloaded (video_diffusion.runtime.allocator);
the reference was measured with glibc and with jemalloc too.

Each config runs in its own subprocess (`--one NAME --json`), so peak RSS is per
config; the parent collects one JSON line per config and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import video_diffusion  # noqa: E402  (no jax)
from video_diffusion.runtime.allocator import active_allocator, allocator_env  # noqa: E402  (no jax)

CONFIGS = {
  'tiny': dict(dim=16, dim_mults=(1, 2, 4), channels=1, image_size=32, num_frames=8, batch=4),
  'seed_v2_2': dict(
    dim=32, dim_mults=(1, 2, 4, 8), channels=1, image_size=64, num_frames=10, batch=4
  ),
}
# video-diffusion-pytorch 0.7.0 on the same machine: train step and one denoiser call
# in seconds with glibc malloc / jemalloc, peak RSS in GB, GFLOP per train step.
REFERENCE = {
  'tiny': dict(step=(4.1, 1.42), denoise=(1.08, 0.72), rss_gb=2.1, gflop=50),
  'seed_v2_2': dict(step=(30.4, 11.0), denoise=(8.0, 4.6), rss_gb=9.0, gflop=637),
}
CPU_PEAK_GFLOPS = 166.0  # 2 cores x 2.6 GHz x 32 FP32 FLOP/cycle
WARMUPS = 2


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown CPU'


def median_time(fn, repeats: int) -> float:
  """Median wall time of `fn()` (which blocks until ready) after WARMUPS calls."""
  for _ in range(WARMUPS):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def flops_of(compiled) -> float | None:
  """'flops' from a lowered or compiled function's cost analysis (a dict, or a
  list of dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or 'flops' not in cost else float(cost['flops'])


def model_flops(fn, *args) -> float | None:
  """The model's FLOPs in one call of fn(*args): XLA's count of the program
  with whole-frame temporal attention, since the cost analysis counts the
  body of the tiled form's loop once (rematerialisation is not counted)."""
  import jax

  from video_diffusion.models import pixels_minor

  tiled_from = pixels_minor.MIN_TILED_PIXELS
  pixels_minor.MIN_TILED_PIXELS = float('inf')
  try:  # a new function object, so jit does not reuse the tiled trace
    return flops_of(jax.jit(lambda *a: fn(*a)).lower(*args))
  finally:
    pixels_minor.MIN_TILED_PIXELS = tiled_from


def time_train_step(diffusion, shape, batch_key, step_key, repeats: int) -> dict:
  """Compiles loss + grad + Adam update of `diffusion` as one jitted function and
  times it: params, compile_s, step_s, flops, temp_bytes (XLA), loss."""
  import jax
  import optax
  from flax import nnx

  graphdef, params, rest = nnx.split(diffusion, nnx.Param, ...)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def train_step(params, opt_state, rest, batch, key):
    def loss_fn(p):
      return nnx.merge(graphdef, p, rest)(batch, key)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batch = jax.random.uniform(batch_key, shape)
  flops = model_flops(train_step, params, opt_state, rest, batch, step_key)
  t0 = time.perf_counter()
  step = (
    jax.jit(train_step, donate_argnums=(0, 1))
    .lower(params, opt_state, rest, batch, step_key)
    .compile()
  )
  compile_s = time.perf_counter() - t0
  memory = step.memory_analysis()
  keys = iter(jax.random.split(step_key, WARMUPS + repeats))
  state = {'params': params, 'opt_state': opt_state, 'loss': None}

  def one_step():
    p, o, loss = step(state['params'], state['opt_state'], rest, batch, next(keys))
    state.update(params=p, opt_state=o, loss=jax.block_until_ready(loss))

  step_s = median_time(one_step, repeats)
  return dict(
    n_params=n_params,
    compile_s=compile_s,
    step_s=step_s,
    flops=flops,
    temp_bytes=None if memory is None else int(memory.temp_size_in_bytes),
    loss=float(state['loss']),
  )


def build_model(name: str, **trainer):
  """GaussianDiffusion(Unet3D) of config `name` (timesteps 1000, l2 loss), initialised
  in numpy; `trainer` may set compute_dtype and remat."""
  from video_diffusion.config import config_from_dict
  from video_diffusion.diffusion.factory import build_diffusion

  c = CONFIGS[name]
  return build_diffusion(
    config_from_dict(
      {
        'unet': dict(dim=c['dim'], dim_mults=list(c['dim_mults']), channels=c['channels']),
        'diffusion': dict(
          image_size=c['image_size'],
          num_frames=c['num_frames'],
          channels=c['channels'],
          timesteps=1000,
          loss_type='l2',
        ),
        'trainer': trainer,
      }
    )
  )


def peak_rss_gb() -> float:
  """This process's peak resident memory in GB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def device_fields() -> dict:
  """platform, device_kind and jax_version of this process's first device."""
  import jax

  device = jax.devices()[0]
  return dict(platform=device.platform, device_kind=device.device_kind, jax_version=jax.__version__)


def run_one(name: str, repeats: int) -> dict:
  """Benchmarks one config in this process; returns the figures as a dict."""
  import jax
  from flax import nnx

  diffusion = build_model(name)
  unet = diffusion.denoise_fn
  shape = (CONFIGS[name]['batch'],) + diffusion.video_shape
  kx, kt, kb, kstep = jax.random.split(jax.random.key(0), 4)

  # One denoiser call (done first: the train step below donates the shared params).
  ugraph, ustate = nnx.split(unet)
  denoise = jax.jit(lambda state, x, t: nnx.merge(ugraph, state)(x, t))
  x = jax.random.normal(kx, shape)
  t = jax.random.randint(kt, (shape[0],), 0, 1000)
  denoise = denoise.lower(ustate, x, t).compile()
  denoise_s = median_time(lambda: jax.block_until_ready(denoise(ustate, x, t)), repeats)

  figures = time_train_step(diffusion, shape, kb, kstep, repeats)
  return dict(
    config=name,
    params_m=figures['n_params'] / 1e6,
    compile_s=figures['compile_s'],
    step_s=figures['step_s'],
    denoise_s=denoise_s,
    flops=figures['flops'],
    loss=figures['loss'],
    rss_gb=peak_rss_gb(),
    allocator=active_allocator(),
    **device_fields(),
  )


def fmt(v, spec: str) -> str:
  return '-' if v is None else format(v, spec)


def markdown(head: list[str], rows: list[list[str]]) -> str:
  """A Markdown table of `head` and the rows' cells."""
  return '\n'.join('| ' + ' | '.join(cells) + ' |' for cells in [head, ['---'] * len(head)] + rows)


def achieved(flops: float | None, step_s: float, platform: str) -> tuple:
  """(GFLOP per step, GFLOP/s, % of CPU_PEAK_GFLOPS on a CPU), None where unknown."""
  gflop = None if flops is None else flops / 1e9
  gflops = None if gflop is None else gflop / step_s
  return gflop, gflops, (100 * gflops / CPU_PEAK_GFLOPS if gflops and platform == 'cpu' else None)


def table(rows: list[dict]) -> str:
  """The Markdown table of our figures, the reference's, and the speedup."""
  head = [
    'config',
    'malloc',
    'params (M)',
    'compile (s)',
    'train step (s)',
    'denoiser (s)',
    'peak RSS (GB)',
    'GFLOP/step',
    'GFLOP/s',
    '% CPU peak',
    'ref step (s) glibc / jemalloc',
    'ref denoiser (s) glibc / jemalloc',
    'ref RSS (GB)',
    'ref GFLOP/step',
    'speedup vs ref (same malloc)',
  ]
  lines = []
  for r in rows:
    ref = REFERENCE[r['config']]
    gflop, gflops, frac = achieved(r['flops'], r['step_s'], r['platform'])
    ref_step = ref['step'][0 if r['allocator'] == 'glibc' else 1]
    lines.append(
      [
        r['config'],
        r['allocator'],
        fmt(r['params_m'], '.3f'),
        fmt(r['compile_s'], '.1f'),
        fmt(r['step_s'], '.3f'),
        fmt(r['denoise_s'], '.3f'),
        fmt(r['rss_gb'], '.2f'),
        fmt(gflop, '.1f'),
        fmt(gflops, '.1f'),
        fmt(frac, '.1f'),
        '{} / {}'.format(*ref['step']),
        '{} / {}'.format(*ref['denoise']),
        str(ref['rss_gb']),
        str(ref['gflop']),
        fmt(ref_step / r['step_s'], '.2f'),
      ]
    )
  return markdown(head, lines)


def run_child(cmd: list[str], label: str, env: dict) -> dict | None:
  """Runs one benchmark subprocess; its last JSON line, or None (reported) if it failed."""
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
  if proc.returncode != 0:
    print(
      f'{label} failed (exit status {proc.returncode}; -9 is usually out of memory)',
      file=sys.stderr,
      flush=True,
    )
    return None
  return json.loads([line for line in proc.stdout.splitlines() if line.startswith('{')][-1])


def child_env() -> dict:
  """os.environ with the repository root on PYTHONPATH, for benchmark subprocesses."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
  return env


def config_names(parser: argparse.ArgumentParser, text: str) -> list[str]:
  """The comma-separated config names in `text`; a parser error on an unknown one."""
  names = [n for n in text.split(',') if n]
  for n in names:
    if n not in CONFIGS:
      parser.error(f'unknown config {n!r}: use some of {",".join(CONFIGS)}')
  return names


def header(rows: list[dict], repeats: int, extras: tuple[str, ...] = ()) -> str:
  """The table's first line: date, jax, `extras`, CPU, devices, repeats."""
  kinds = sorted({r['device_kind'] for r in rows})
  return ' | '.join(
    [
      time.strftime('%Y-%m-%d %H:%M:%S'),
      f'jax {rows[0]["jax_version"]}',
      *extras,
      f'{cpu_model()} ({os.cpu_count()} CPUs)',
      f'device {", ".join(kinds)}',
      f'median of {repeats} after {WARMUPS} warm-ups',
    ]
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--one', choices=sorted(CONFIGS), help='run one config in this process')
  parser.add_argument('--json', action='store_true', help='with --one: print one JSON line')
  parser.add_argument(
    '--allocators',
    default='glibc,auto',
    help='comma-separated: glibc, jemalloc, tcmalloc, auto (fastest installed)',
  )
  args = parser.parse_args()
  if args.one:
    video_diffusion.configure_cpu()  # before JAX starts its backend
    result = run_one(args.one, args.repeats)
    print(json.dumps(result) if args.json else result, flush=True)
    return

  names = config_names(parser, args.configs)
  # The parent never imports jax, so it holds no accelerator memory the children need.
  env = child_env()
  rows = []
  allocators = list(dict.fromkeys(args.allocators.split(',')))
  for n in names:
    for allocator in allocators:
      print(f'running {n} with {allocator} malloc ...', file=sys.stderr, flush=True)
      try:
        run_env = allocator_env(allocator, env)
      except ValueError as error:
        sys.exit(str(error))
      row = run_child(
        [
          sys.executable,
          os.path.abspath(__file__),
          '--one',
          n,
          '--json',
          '--repeats',
          str(args.repeats),
        ],
        f'config {n} with {allocator} malloc',
        run_env,
      )
      if row is not None:
        rows.append(row)
  if not rows:
    sys.exit('no config ran to completion')
  print(header(rows, args.repeats))
  print()
  print(table(rows))


if __name__ == '__main__':
  main()
