"""The argument parsers of `video-diffusion train|sample|eval`."""

from __future__ import annotations

import argparse
import importlib.resources
import os

from video_diffusion.config.registry import SAMPLERS, steps_help

DEFAULT_CONFIG = 'configs/config.yaml'
MALLOC_CHOICES = ('auto', 'glibc', 'mimalloc', 'tcmalloc', 'jemalloc')


def default_config() -> str:
  """configs/config.yaml of the working directory (a checkout), else the demo
  config shipped in the package (the same file), so the commands run anywhere."""
  if os.path.exists(DEFAULT_CONFIG):
    return DEFAULT_CONFIG
  return str(importlib.resources.files('video_diffusion.config') / 'demo.yaml')


def add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    'overrides',
    nargs='*',
    metavar='section.key=value',
    help='change any config key, e.g. trainer.train_num_steps=300 unet.dim_mults=[1,2]',
  )
  add_malloc(parser)


def add_malloc(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--malloc',
    choices=MALLOC_CHOICES,
    default='auto',
    help='CPU memory allocator to preload (auto: mimalloc, installed with '
    'the package; much faster XLA on CPU). Default: auto.',
  )


def add_resume_step(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--resume_step',
    '--resume-step',
    type=int,
    default=None,
    metavar='N',
    help='resume from the checkpoint of step N; -1 = the newest (or start '
    'afresh if there is none); 0 = start afresh, refused if the checkpoint '
    'folder has checkpoints (default: trainer.resume_training_step).',
  )


def _add_checkpoint(parser: argparse.ArgumentParser, use: str) -> None:
  """--checkpoint-path, --step, --config and --load-ema-params; `use` is what
  the command does with the weights ('sample from', 'evaluate')."""
  parser.add_argument(
    '--checkpoint-path',
    default=None,
    metavar='DIR',
    help="checkpoint folder of a run (default: the config's "
    'trainer.checkpoint_dir_path, or <results_folder>/checkpoints).',
  )
  parser.add_argument(
    '--step',
    type=int,
    default=-1,
    metavar='N',
    help='training step of the checkpoint; -1 = the newest (default).',
  )
  parser.add_argument(
    '--config',
    default=default_config(),
    help=f'YAML config of the model (default: {DEFAULT_CONFIG}, or the packaged demo '
    'config outside a checkout); its model '
    "sections must match the checkpoint's.",
  )
  parser.add_argument(
    '--load-ema-params',
    action='store_true',
    help=f'{use} the EMA weights instead of the raw weights.',
  )


def _add_sampler(group) -> None:
  """--sampler, --steps, --eta and --cond-scale."""
  group.add_argument(
    '--sampler',
    choices=SAMPLERS,  # the live table: samplers registered before parsing count
    default=None,
    help='for Gaussian models ddpm: ancestral over all timesteps (the reference), ddim: DDIM, '
    'dpmpp: DPM-Solver++(2M); for flow models euler or heun. Default: ddpm, or euler for '
    'a flow model.',
  )
  group.add_argument(
    '--steps',
    type=int,
    default=None,
    metavar='N',
    help=f'steps per video (model calls; heun makes 2 per step but the last) '
    f'(default: {steps_help()}).',
  )
  group.add_argument(
    '--eta',
    type=float,
    default=0.0,
    help='DDIM noise: 0 deterministic (default), 1 ancestral-like.',
  )
  group.add_argument(
    '--cond-scale',
    type=float,
    default=None,
    metavar='W',
    help='classifier-free guidance scale (default: trainer.cond_scale).',
  )


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description='Train a video diffusion model as a YAML config says. '
    'Checkpoints, samples, metrics.jsonl and the loss curve go to trainer.results_folder.',
  )
  parser.add_argument(
    '--config',
    default=default_config(),
    help=f'YAML config with sections unet, dit, diffusion, trainer (default: '
    f'{DEFAULT_CONFIG}, the CPU demo, or its packaged copy outside a checkout).',
  )
  parser.add_argument(
    '--rng_seed',
    '--rng-seed',
    type=int,
    default=None,
    metavar='N',
    help='seed of data order, noise and timesteps (sets trainer.seed).',
  )
  add_resume_step(parser)
  hosts = parser.add_argument_group(
    'multi-process (jax.distributed; the same command on every process)'
  )
  hosts.add_argument(
    '--coordinator-address',
    default=None,
    metavar='HOST:PORT',
    help='address of process 0 (or JAX_COORDINATOR_ADDRESS); none = one process.',
  )
  hosts.add_argument(
    '--num-processes',
    type=int,
    default=None,
    metavar='N',
    help='processes in the run (or JAX_NUM_PROCESSES).',
  )
  hosts.add_argument(
    '--process-id',
    type=int,
    default=None,
    metavar='I',
    help='this process, 0..N-1 (or JAX_PROCESS_ID).',
  )
  add_common(parser)
  return parser


def sample_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description='Sample videos from a training checkpoint into GIFs: '
    'sample_1.gif ... sample_N.gif and grid.gif in --output-path.',
  )
  _add_checkpoint(parser, 'use')
  parser.add_argument(
    '--output-path',
    default=None,
    metavar='DIR',
    help='folder for the GIFs (default: <results_folder>/samples-step<N>).',
  )
  parser.add_argument(
    '--seed', type=int, default=0, metavar='N', help='seed of the sampling noise (default: 0).'
  )
  parser.add_argument(
    '--batch-size', type=int, default=16, metavar='N', help='videos to generate (default: 16).'
  )
  parser.add_argument('--fps', type=int, default=8, help='GIF frames per second (default: 8).')
  _add_sampler(parser.add_argument_group('sampler'))
  what = parser.add_argument_group('condition')
  what.add_argument(
    '--class',
    dest='labels',
    type=int,
    nargs='+',
    default=None,
    metavar='N',
    help='class labels of a class-conditional model, cycled over the batch '
    '(default: 0, 1, 2, ...).',
  )
  what.add_argument(
    '--text',
    dest='texts',
    action='append',
    default=None,
    metavar='TEXT',
    help='text of a text-conditional model; repeat for several, cycled over '
    'the batch (default: trainer.sample_text).',
  )
  what.add_argument(
    '--cond',
    dest='cond_path',
    default=None,
    metavar='FILE.npy',
    help='condition vectors (n, cond_dim) of a vector-conditional model.',
  )
  frames = parser.add_argument_group('frames')
  frames.add_argument(
    '--prime',
    default=None,
    metavar='CLIP',
    help='continue this video file (gif/mp4/...): its last --num-cond-frames '
    'frames start every sample.',
  )
  frames.add_argument(
    '--interpolate',
    nargs=2,
    default=None,
    metavar=('FIRST', 'LAST'),
    help='fill the frames between the end of FIRST and the start of LAST '
    '(--num-cond-frames from each, default 1).',
  )
  frames.add_argument(
    '--num-cond-frames',
    type=int,
    default=None,
    metavar='K',
    help="frames given from --prime (default: half the model's frames) or "
    'from each --interpolate clip (default 1), and the context of each '
    "extension chunk (default: half the model's frames).",
  )
  frames.add_argument(
    '--num-frames',
    type=int,
    default=None,
    metavar='N',
    help='frames per video; more than the model was trained on extends the '
    "video autoregressively (default: the model's).",
  )
  frames.add_argument(
    '--recon-guidance',
    type=float,
    default=0.0,
    metavar='W',
    help='reconstruction guidance weight (Ho et al. 2022) for given frames '
    'with a model trained without diffusion.frame_conditioning; 0 = '
    'plain replacement (default).',
  )
  add_common(parser)
  return parser


def eval_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description="FVD (I3D Kinetics-400 features) of a checkpoint's samples against "
    'held-out real videos of the configured dataset, with the real-vs-real FVD of two '
    'disjoint real sets; writes a JSON file and prints one line.',
  )
  _add_checkpoint(parser, 'evaluate')
  parser.add_argument(
    '--num-videos',
    type=int,
    default=256,
    metavar='N',
    help='generated videos, and real videos per real set (default: 256).',
  )
  parser.add_argument(
    '--batch-size',
    type=int,
    default=16,
    metavar='N',
    help='videos per sampling call (default: 16).',
  )
  _add_sampler(parser)
  parser.add_argument(
    '--seed',
    type=int,
    default=0,
    metavar='N',
    help="seed of the sampling noise and the real videos' windows.",
  )
  parser.add_argument(
    '--real-path',
    default=None,
    metavar='PATH',
    help='real videos from this dataset (.npy or folder) instead of trainer.dataset_path.',
  )
  parser.add_argument(
    '--output',
    default=None,
    metavar='FILE.json',
    help='result file (default: <results_folder>/eval/fvd-step<N>-<sampler><steps>[-ema].json).',
  )
  add_common(parser)
  return parser


def prepare_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog=prog,
    description='Cut the clips of a folder of videos (or a Moving MNIST .npy) once, '
    'preprocessed to the model size, into ArrayRecord shards with their conditions; '
    'point trainer.dataset_path at the output folder to train on them.',
  )
  parser.add_argument('source', metavar='SRC', help='folder of videos or Moving MNIST .npy.')
  parser.add_argument('out', metavar='OUT', help='new folder for the shards and manifest.json.')
  parser.add_argument(
    '--config',
    default=default_config(),
    help='YAML config whose diffusion and trainer keys give the defaults below '
    f'(default: {DEFAULT_CONFIG}).',
  )
  for flag, key, kind in (
    ('--num-frames', 'diffusion.num_frames', int),
    ('--image-size', 'diffusion.image_size', int),
    ('--channels', 'diffusion.channels', int),
    ('--frame-stride', 'trainer.frame_stride', int),
    ('--fps', 'trainer.fps', float),
    ('--clips-per-video', 'trainer.clips_per_video', int),
    ('--seed', 'trainer.seed', int),
  ):
    parser.add_argument(flag, type=kind, default=None, metavar='N', help=f'default: {key}.')
  parser.add_argument(
    '--shards', type=int, default=8, metavar='M', help='ArrayRecord files to write (default: 8).'
  )
  parser.add_argument(
    '--vae',
    default=None,
    metavar='PATH',
    help='encode each clip once with this autoencoder (a train-vae checkpoint folder or a '
    "diffusers folder) and pack its posterior's mean and log-variance; training on the "
    'shards (with diffusion.vae: PATH) skips the encoder (default: pack the pixels).',
  )
  parser.add_argument(
    '--vae-sample',
    action='store_true',
    help='with --vae, pack one posterior sample per clip instead (half the size; every '
    'epoch then sees the same sample).',
  )
  return parser
