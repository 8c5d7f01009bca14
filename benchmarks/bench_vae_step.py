"""Time of one train-vae step (forward, backward, Adam, EMA) of a config's VAE.

  python benchmarks/bench_vae_step.py [--config configs/vae_digits.yaml] [--steps 5]
      [section.key=value ...]

Builds the step as train-vae does (video_diffusion.train.vae_step) on random
uint8 clips of the config's size and batch, compiles it (timed), then times
--steps steps and prints one table row: the median step and the CPU time the
process spent per step (all cores). Compare two trees by running it in each,
alternately, in one shell command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'vae_digits.yaml'))
  parser.add_argument('--steps', type=int, default=5, help='timed steps after the first')
  parser.add_argument('--label', default='', help='a name for the row (e.g. the tree)')
  parser.add_argument('overrides', nargs='*', help='section.key=value')
  args = parser.parse_args()

  import video_diffusion

  video_diffusion.configure_cpu()
  import jax
  import numpy as np

  from video_diffusion.config import load_config
  from video_diffusion.train.optimizer import learning_rate_schedule, make_optimizer
  from video_diffusion.train.state import init_train_state
  from video_diffusion.train.step import StepOptions
  from video_diffusion.train.vae_step import make_vae_train_step
  from video_diffusion.vae.training import split_vae

  cfg = load_config(args.config, args.overrides)
  t, d = cfg.trainer, cfg.diffusion
  graphdef, params, rest = split_vae(cfg.vae, t.seed)
  tx = make_optimizer(t)
  step_fn = make_vae_train_step(
    graphdef, rest, tx, StepOptions.from_config(cfg), cfg.vae_trainer, learning_rate_schedule(t)
  )
  step = jax.jit(step_fn, donate_argnums=0)
  state = init_train_state(params, tx, t.seed)
  shape = (t.train_batch_size, d.num_frames, d.image_size, d.image_size, d.channels)
  videos = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

  start = time.perf_counter()
  state, metrics = step(state, videos)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times, cpu = [], time.process_time()
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, videos)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  cpu_per_step = (time.process_time() - cpu) / args.steps
  print(f'`python {" ".join(sys.argv)}` ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})')
  print('| tree | clips x frames x size | first step (s) | step (s) | CPU s per step |')
  print('|---|---|---|---|---|')
  size = f'{shape[0]} x {shape[1]} x {shape[2]}x{shape[3]}'
  print(
    f'| {args.label} | {size} | {first:.1f} | {statistics.median(times):.2f} | {cpu_per_step:.2f} |'
  )


if __name__ == '__main__':
  main()
