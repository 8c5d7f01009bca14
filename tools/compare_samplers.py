"""Side-by-side GIF of one checkpoint sampled three ways: DDPM (all steps), DDIM-50
and DPM-Solver++-20 for a Gaussian model, Euler-50, Heun-20 and Euler-10 for a flow model.

  python tools/compare_samplers.py --config configs/demo_unet3d.yaml \
      [--checkpoint-path DIR] [--output docs/sampler_comparison.gif]

Each panel is a grid of the same number of videos from the EMA weights, with
the sampler and its number of model calls written above it, and the wall
time of each sampler (after compilation) is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image, ImageDraw

import video_diffusion
from video_diffusion.config import load_config, resolved_checkpoint_dir
from video_diffusion.data import video_io
from video_diffusion.diffusion import samplers
from video_diffusion.inference import checkpoint, gifs, sampling


def label_panel(grid: np.ndarray, text: str, height: int = 12) -> np.ndarray:
  """grid (frames, h, w, c) uint8 with a `height`-pixel caption band on top."""
  band = Image.new('L', (grid.shape[2], height), 0)
  ImageDraw.Draw(band).text((2, 0), text, fill=255)
  band = np.repeat(np.asarray(band)[None, :, :, None], grid.shape[0], axis=0)
  return np.concatenate([np.repeat(band, grid.shape[3], axis=3), grid], axis=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint-path', help="default: the config's checkpoint folder")
  parser.add_argument('--config', default='configs/config.yaml')
  parser.add_argument('--step', type=int, default=-1)
  parser.add_argument('--output', default='docs/sampler_comparison.gif')
  parser.add_argument('--videos', type=int, default=9)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  import jax

  cfg = load_config(args.config)
  graphdef, params, constants, step, _ = checkpoint.load_params(
    cfg, args.checkpoint_path or resolved_checkpoint_dir(cfg), step=args.step, ema=True
  )
  if cfg.diffusion.is_flow:
    runs = [
      ('Euler-50', samplers.Euler(50)),
      ('Heun-20', samplers.Heun(20)),
      ('Euler-10', samplers.Euler(10)),
    ]
  else:
    runs = [
      (f'DDPM-{cfg.diffusion.timesteps}', samplers.DDPM()),
      ('DDIM-50', samplers.DDIM(50)),
      ('DPM++-20', samplers.DPMSolverPP(20)),
    ]
  panels = []
  for name, sampler in runs:
    sample = sampling.compile_sample_fn(graphdef, constants, args.videos, sampler=sampler)
    key = jax.random.key(args.seed)
    jax.block_until_ready(sample(params, key))  # compile
    t0 = time.perf_counter()
    videos = np.asarray(sample(params, key))
    seconds = time.perf_counter() - t0
    print(
      f'{name}: {args.videos} videos in {seconds:.1f} s; pixel mean {videos.mean():.3f}, '
      f'std {videos.std():.3f}'
    )
    frames = video_io.to_uint8(videos, value_range=(0.0, 1.0))
    grid = video_io.video_grid(frames, gifs.grid_rows(args.videos))
    panels.append(label_panel(grid, name))
  gap = np.zeros(panels[0].shape[:2] + (4,) + panels[0].shape[3:], np.uint8)
  row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=2)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  video_io.write_gif(args.output, row, fps=8)
  print(f'wrote {args.output} (step {step}, {os.path.getsize(args.output) / 1e3:.0f} kB)')


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
