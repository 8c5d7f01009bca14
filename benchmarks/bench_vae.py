"""Peak memory and time of the Wan 2.1 VAE's encode and decode, with and without tiles,
ours (JAX) against diffusers' AutoencoderKLWan (PyTorch), both float32 on the CPU.

  python benchmarks/bench_vae.py --torch-python .venv-fixtures/bin/python
      [--size 256] [--frames 17] [--tile 128] [--stride 96] [--backends jax,torch]
      [--config tests/fixtures/vae/wan21_config.json]

By default the full Wan 2.1 config, with random weights (ours: WanVAE(config,
rngs=nnx.Rngs(0)); theirs: diffusers' own initialisation); it ran for about an
hour on 2 cores (docs/performance.md). A smoke test in about two minutes, mostly
JAX compiling: --config tests/fixtures/vae/wan_like/config.json --size 64
--frames 5 --tile 32 --stride 24.

Encode takes a random (1, frames, size, size, 3) video, decode random latents of
the matching shape. Each (operation, tiles, backend) runs in a fresh subprocess
(`--one`), so its peak resident memory (ru_maxrss) is its own; the table gives it
after the model and inputs were built and at the end (JAX's includes its
compilations), times the first call (JAX: compilation included) and a second
one, and gives the 1-minute load average when the case ended (the host may be
shared). The PyTorch side runs under
--torch-python (an interpreter with torch and diffusers), so that this
environment never imports torch; it keeps torch's default thread count, and JAX
runs with video_diffusion.configure_cpu()'s options. Tiles: diffusers'
enable_tiling(tile, tile, stride, stride) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'tests', 'fixtures', 'vae', 'wan21_config.json')
OPERATIONS = ('encode', 'decode')


def peak_rss_gb() -> float:
  """This process's peak resident memory so far, in GB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def read_config(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def latent_shape(args, channels_last: bool) -> tuple[int, ...]:
  """(1, latent frames, h, w, z_dim) or (1, z_dim, latent frames, h, w) of the video's latents."""
  config = read_config(args.config)
  levels = len(config['dim_mult'])
  side = args.size // 2 ** (levels - 1)
  per_chunk = 4 // 2 ** sum(map(bool, config['temperal_downsample'][: levels - 1]))
  frames = 1 + (args.frames - 1) // 4 * per_chunk  # the encoder's chunks of 4 frames
  if channels_last:
    return (1, frames, side, side, config['z_dim'])
  return (1, config['z_dim'], frames, side, side)


def timed(call) -> float:
  """Seconds `call()` takes (it returns once its result is computed)."""
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def measure_jax(args) -> dict:
  """Builds our WanVAE and times `args.operation` twice in this process."""
  import video_diffusion

  video_diffusion.configure_cpu()  # before JAX starts its backend
  import jax
  import numpy as np
  from flax import nnx

  from video_diffusion.vae import VAEConfig, WanVAE

  vae = WanVAE(VAEConfig.from_json(args.config), rngs=nnx.Rngs(0))
  if args.tiled:
    vae.enable_tiling(args.tile, args.tile, args.stride, args.stride)
  rng = np.random.default_rng(0)
  if args.operation == 'encode':
    inputs = rng.uniform(-1, 1, (1, args.frames, args.size, args.size, 3)).astype(np.float32)
    run = lambda: jax.block_until_ready(vae.encode(inputs))
  else:
    inputs = rng.normal(size=latent_shape(args, channels_last=True)).astype(np.float32)
    run = lambda: jax.block_until_ready(vae.decode(inputs))
  built = peak_rss_gb()
  return dict(built_gb=built, first_s=timed(run), second_s=timed(run), version=jax.__version__)


def measure_torch(args) -> dict:
  """Builds diffusers' AutoencoderKLWan and times `args.operation` twice in this process."""
  import diffusers
  import torch
  from diffusers import AutoencoderKLWan

  vae = AutoencoderKLWan.from_config(read_config(args.config)).eval()
  if args.tiled:
    vae.enable_tiling(args.tile, args.tile, args.stride, args.stride)
  generator = torch.Generator().manual_seed(0)
  if args.operation == 'encode':
    inputs = torch.rand((1, 3, args.frames, args.size, args.size), generator=generator) * 2 - 1
    call = lambda: vae.encode(inputs).latent_dist.mean
  else:
    inputs = torch.randn(latent_shape(args, channels_last=False), generator=generator)
    call = lambda: vae.decode(inputs).sample
  built = peak_rss_gb()
  with torch.no_grad():
    first, second = timed(call), timed(call)
  return dict(
    built_gb=built,
    first_s=first,
    second_s=second,
    version=f'torch {torch.__version__}, diffusers {diffusers.__version__}, '
    f'{torch.get_num_threads()} threads',
  )


def run_one(args) -> None:
  """One measurement in this process: prints one JSON line."""
  figures = (measure_jax if args.one == 'jax' else measure_torch)(args)
  load = os.getloadavg()[0]
  print(json.dumps(dict(figures, peak_gb=peak_rss_gb(), load=load)), flush=True)


def child_command(args, backend: str, operation: str, tiled: bool) -> list[str]:
  python = sys.executable if backend == 'jax' else args.torch_python
  flags = ['--size', args.size, '--frames', args.frames, '--tile', args.tile]
  flags += ['--stride', args.stride, '--config', args.config]
  flags += ['--operation', operation, '--one', backend]
  return [python, os.path.abspath(__file__), *map(str, flags)] + (['--tiled'] if tiled else [])


def run_child(command: list[str]) -> dict | None:
  """The child's JSON line, or None (reported) if it failed."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
  done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
  if done.returncode != 0:
    print(f'{command} failed (exit status {done.returncode})', file=sys.stderr, flush=True)
    return None
  return json.loads([line for line in done.stdout.splitlines() if line.startswith('{')][-1])


def table_row(operation: str, tiles: str, backend: str, r: dict | None) -> list[str]:
  if r is None:
    return [operation, tiles, backend] + ['failed'] * 6
  figures = (r['first_s'], r['second_s'], r['built_gb'], r['peak_gb'], r['peak_gb'] - r['built_gb'])
  return [operation, tiles, backend] + [f'{v:.2f}' for v in figures] + [f'{r["load"]:.1f}']


def cpu_model() -> str:
  with open('/proc/cpuinfo') as f:
    names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  return names[0] if names else 'unknown CPU'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=256, help='video height and width')
  parser.add_argument('--frames', type=int, default=17, help='video frames (1 + 4k)')
  parser.add_argument('--tile', type=int, default=128, help='tile_sample_min_height/width')
  parser.add_argument('--stride', type=int, default=96, help='tile_sample_stride_height/width')
  parser.add_argument('--backends', default='jax,torch', help='comma-separated: jax, torch')
  parser.add_argument('--config', default=CONFIG, help='a diffusers AutoencoderKLWan config.json')
  parser.add_argument('--torch-python', default=os.path.join(ROOT, '.venv-fixtures/bin/python'))
  parser.add_argument('--one', choices=('jax', 'torch'), help='measure one case in this process')
  parser.add_argument('--operation', choices=OPERATIONS, default='encode', help='with --one')
  parser.add_argument('--tiled', action='store_true', help='with --one')
  args = parser.parse_args()
  if args.one:
    return run_one(args)
  backends = [b for b in args.backends.split(',') if b]
  rows, versions, started = [], {}, time.strftime('%Y-%m-%d %H:%M', time.gmtime())
  for operation in OPERATIONS:
    for tiled in (False, True):
      tiles = f'{args.tile} every {args.stride}' if tiled else 'none'
      for backend in backends:
        result = run_child(child_command(args, backend, operation, tiled))
        versions[backend] = result and result['version'] or versions.get(backend)
        rows.append(table_row(operation, tiles, backend, result))
        print(' | '.join(rows[-1]), file=sys.stderr, flush=True)
  head = ['operation', 'tiles (px)', 'backend', 'first call (s)', 'second call (s)']
  head += ['RSS built (GB)', 'peak RSS (GB)', 'peak - built (GB)', 'load avg']
  print(f'\n`python {" ".join(sys.argv)}`\n')
  print(
    f'{started} to {time.strftime("%H:%M UTC", time.gmtime())}, {cpu_model()} '
    f'({os.cpu_count()} CPUs), {args.frames} frames of {args.size}x{args.size}, '
    f'{"; ".join(f"{b}: {v}" for b, v in versions.items())}\n'
  )
  print('\n'.join('| ' + ' | '.join(c) + ' |' for c in [head, ['---'] * len(head)] + rows))


if __name__ == '__main__':
  main()
