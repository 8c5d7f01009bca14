"""`video-diffusion train-vae|eval-vae`: the video autoencoder's flags and commands.

As the other commands: bad input ends in one `error:` line and exit status 2,
and JAX is imported only after the arguments are read.
"""

from __future__ import annotations

import argparse
import json
import os

from video_diffusion.cli.commands import (
  _config,
  _fail,
  _set_up_jax,
  _use_allocator,
  train_and_report,
)
from video_diffusion.cli.parsers import add_common, add_malloc, add_resume_step


def train_vae_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description="Train the config's vae section (a Wan 2.1 causal video autoencoder) on "
    'its clips; checkpoints, reconstruction GIFs, metrics.jsonl and the loss curve go '
    'to trainer.results_folder.',
  )
  parser.add_argument(
    '--config',
    required=True,
    help='YAML config with the vae, vae_trainer, diffusion (clip size) and trainer '
    'sections, e.g. configs/vae_digits.yaml.',
  )
  add_resume_step(parser)
  add_common(parser)
  return parser


def eval_vae_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description='PSNR, SSIM and reconstruction FVD (I3D) of a train-vae checkpoint on '
    "held-out clips of its run's dataset; prints one line.",
  )
  parser.add_argument(
    '--checkpoint-path',
    required=True,
    metavar='DIR',
    help='checkpoint folder of a train-vae run (<results_folder>/checkpoints).',
  )
  parser.add_argument(
    '--step', type=int, default=-1, metavar='N', help='checkpoint step; -1 = the newest (default).'
  )
  parser.add_argument(
    '--load-ema-params', action='store_true', help='evaluate the EMA weights instead of the raw.'
  )
  parser.add_argument(
    '--num-videos', type=int, default=64, metavar='N', help='held-out clips (default: 64).'
  )
  parser.add_argument(
    '--batch-size', type=int, default=8, metavar='N', help='clips per VAE call (default: 8).'
  )
  parser.add_argument(
    '--seed', type=int, default=0, metavar='N', help="seed of the clips' windows (default: 0)."
  )
  parser.add_argument(
    '--real-path',
    default=None,
    metavar='PATH',
    help="held-out clips from this dataset instead of the run's trainer.dataset_path.",
  )
  parser.add_argument(
    '--output', default=None, metavar='FILE.json', help='also write the result to this file.'
  )
  add_malloc(parser)
  return parser


def run_train_vae(args: argparse.Namespace) -> None:
  from video_diffusion.config import vae_run_problem

  cfg = _config(args.config, args.overrides)
  problem = vae_run_problem(cfg)
  if problem:
    _fail(f'{args.config}: {problem}')
  _use_allocator(args.malloc)
  _set_up_jax()
  from video_diffusion.runtime import runtime_info
  from video_diffusion.train.vae_loop import train_vae

  runtime_info.print_startup()
  train_and_report(train_vae, cfg, args.resume_step)


def run_eval_vae(args: argparse.Namespace) -> None:
  for flag, value, low in (
    ('--num-videos', args.num_videos, 2),
    ('--batch-size', args.batch_size, 1),
  ):
    if value < low:
      _fail(f'{flag} must be >= {low}, got {value}')
  if not os.path.isdir(args.checkpoint_path):
    _fail(
      f'--checkpoint-path {args.checkpoint_path} is not a folder; pass the checkpoint folder '
      'of a train-vae run (<results_folder>/checkpoints)'
    )
  _use_allocator(args.malloc)
  _set_up_jax()
  from video_diffusion.checkpointing.checkpointer import CheckpointDamagedError
  from video_diffusion.data.errors import DataError
  from video_diffusion.eval.reconstruction import evaluate_vae_checkpoint
  from video_diffusion.runtime import runtime_info

  runtime_info.print_startup()
  try:
    result = evaluate_vae_checkpoint(
      args.checkpoint_path,
      step=args.step,
      ema=args.load_ema_params,
      num_videos=args.num_videos,
      batch_size=args.batch_size,
      seed=args.seed,
      dataset_path=args.real_path,
    )
  except (ValueError, DataError, CheckpointDamagedError, FileNotFoundError) as e:
    _fail(str(e))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  print(
    f'PSNR {result["psnr"]:.2f} dB, SSIM {result["ssim"]:.4f}, reconstruction FVD '
    f'{result["fvd"]:.2f} on {result["num_videos"]} held-out clips: step {result["step"]}, '
    f'{result["weights"]} weights'
  )
