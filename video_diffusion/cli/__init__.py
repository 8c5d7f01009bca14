"""Command line: `video-diffusion train|sample|eval|prepare|train-vae|eval-vae`
(and `python train.py|sample.py`).

`parsers` has the flags, `commands` what each command does with them; `vae`
both, for the video autoencoder's commands.
"""

from __future__ import annotations

import argparse
import sys

from video_diffusion.cli.commands import STANDALONE, run_eval, run_prepare, run_sample, run_train
from video_diffusion.cli.parsers import eval_parser, prepare_parser, sample_parser, train_parser
from video_diffusion.cli.vae import eval_vae_parser, run_eval_vae, run_train_vae, train_vae_parser

__all__ = [
  'COMMANDS',
  'entry',
  'eval_parser',
  'eval_vae_parser',
  'main',
  'prepare_parser',
  'sample_parser',
  'train_parser',
  'train_vae_parser',
]

COMMANDS = {
  'train': (train_parser, run_train),
  'sample': (sample_parser, run_sample),
  'eval': (eval_parser, run_eval),
  'prepare': (prepare_parser, run_prepare),
  'train-vae': (train_vae_parser, run_train_vae),
  'eval-vae': (eval_vae_parser, run_eval_vae),
}


def main(argv: list[str] | None = None) -> None:
  """`video-diffusion {train,sample,eval} ...`."""
  STANDALONE['on'] = argv is None
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(
    prog='video-diffusion',
    description='Video diffusion in JAX: train, sample, evaluate; and a video autoencoder.',
  )
  sub = parser.add_subparsers(dest='command', required=True, metavar=f'{{{",".join(COMMANDS)}}}')
  for name, (make, _) in COMMANDS.items():
    make_sub = make()
    sub.add_parser(
      name,
      parents=[make_sub],
      add_help=False,
      help=make_sub.description,
      description=make_sub.description,
    )
  if not argv or argv[0] not in COMMANDS:
    parser.parse_args(argv)  # prints the help, or the error naming the commands
  make, run = COMMANDS[argv[0]]
  run(make(f'{parser.prog} {argv[0]}').parse_intermixed_args(argv[1:]))


def entry(command: str, prog: str) -> None:
  """Root scripts: `python train.py ...` is `video-diffusion train ...`."""
  STANDALONE['on'] = True
  make, run = COMMANDS[command]
  run(make(prog).parse_intermixed_args(sys.argv[1:]))
