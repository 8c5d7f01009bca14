"""Command line: `video-diffusion train|sample|eval` (also `python train.py`, `python sample.py`).

Errors in the user's input (config, data, checkpoints) end with one line
`error: ...` naming the problem and the fix, exit status 2, and no traceback.
JAX is imported only after the arguments are read, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CONFIG = 'configs/config.yaml'
MALLOC_CHOICES = ('auto', 'glibc', 'mimalloc', 'tcmalloc', 'jemalloc')
_REEXEC_MARK = 'VIDEO_DIFFUSION_MALLOC_SET'
_STANDALONE = False  # True when this process is the command itself (may re-exec)


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('overrides', nargs='*', metavar='section.key=value',
                      help='change any config key, e.g. trainer.train_num_steps=300 '
                           'unet.dim_mults=[1,2]')
  parser.add_argument('--malloc', choices=MALLOC_CHOICES, default='auto',
                      help='CPU memory allocator to preload (auto: mimalloc, installed with '
                           'the package; much faster XLA on CPU). Default: auto.')


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description='Train a video diffusion model as a YAML config says. '
      'Checkpoints, samples, metrics.jsonl and the loss curve go to trainer.results_folder.')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help=f'YAML config with sections unet, diffusion, trainer '
                           f'(default: {DEFAULT_CONFIG}, the CPU demo).')
  parser.add_argument('--rng_seed', '--rng-seed', type=int, default=None, metavar='N',
                      help='seed of data order, noise and timesteps (sets trainer.seed).')
  parser.add_argument('--resume_step', '--resume-step', type=int, default=None, metavar='N',
                      help='resume from the checkpoint of step N; -1 = the newest (or start '
                           'afresh if there is none); 0 = start afresh, refused if the checkpoint '
                           'folder has checkpoints (default: trainer.resume_training_step).')
  hosts = parser.add_argument_group('multi-process (jax.distributed; the same command on '
                                    'every process)')
  hosts.add_argument('--coordinator-address', default=None, metavar='HOST:PORT',
                     help='address of process 0 (or JAX_COORDINATOR_ADDRESS); none = one '
                          'process.')
  hosts.add_argument('--num-processes', type=int, default=None, metavar='N',
                     help='processes in the run (or JAX_NUM_PROCESSES).')
  hosts.add_argument('--process-id', type=int, default=None, metavar='I',
                     help='this process, 0..N-1 (or JAX_PROCESS_ID).')
  _add_common(parser)
  return parser


def sample_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description='Sample videos from a training checkpoint into GIFs: '
      'sample_1.gif ... sample_N.gif and grid.gif in --output-path.')
  parser.add_argument('--checkpoint-path', default=None, metavar='DIR',
                      help='checkpoint folder of a run (default: the config\'s '
                           'trainer.checkpoint_dir_path, or <results_folder>/checkpoints).')
  parser.add_argument('--step', type=int, default=-1, metavar='N',
                      help='training step of the checkpoint; -1 = the newest (default).')
  parser.add_argument('--output-path', default=None, metavar='DIR',
                      help='folder for the GIFs (default: <results_folder>/samples-step<N>).')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help=f'YAML config of the model (default: {DEFAULT_CONFIG}); its model '
                           'sections must match the checkpoint\'s.')
  parser.add_argument('--seed', type=int, default=0, metavar='N',
                      help='seed of the sampling noise (default: 0).')
  parser.add_argument('--load-ema-params', action='store_true',
                      help='use the EMA weights instead of the raw weights.')
  parser.add_argument('--batch-size', type=int, default=16, metavar='N',
                      help='videos to generate (default: 16).')
  parser.add_argument('--fps', type=int, default=8, help='GIF frames per second (default: 8).')
  how = parser.add_argument_group('sampler')
  how.add_argument('--sampler', choices=('ddpm', 'ddim', 'dpmpp'), default='ddpm',
                   help='ddpm: ancestral over all timesteps (the reference); ddim: DDIM; '
                        'dpmpp: DPM-Solver++(2M). Default: ddpm.')
  how.add_argument('--steps', type=int, default=None, metavar='N',
                   help='model calls per video (default: all timesteps for ddpm, 50 for ddim, '
                        '20 for dpmpp).')
  how.add_argument('--eta', type=float, default=0.0,
                   help='DDIM noise: 0 deterministic (default), 1 ancestral-like.')
  what = parser.add_argument_group('condition')
  what.add_argument('--cond-scale', type=float, default=None, metavar='W',
                    help='classifier-free guidance scale (default: trainer.cond_scale).')
  what.add_argument('--class', dest='labels', type=int, nargs='+', default=None, metavar='N',
                    help='class labels of a class-conditional model, cycled over the batch '
                         '(default: 0, 1, 2, ...).')
  what.add_argument('--text', dest='texts', action='append', default=None, metavar='TEXT',
                    help='text of a text-conditional model; repeat for several, cycled over '
                         'the batch (default: trainer.sample_text).')
  what.add_argument('--cond', dest='cond_path', default=None, metavar='FILE.npy',
                    help='condition vectors (n, cond_dim) of a vector-conditional model.')
  frames = parser.add_argument_group('frames')
  frames.add_argument('--prime', default=None, metavar='CLIP',
                      help='continue this video file (gif/mp4/...): its last --num-cond-frames '
                           'frames start every sample.')
  frames.add_argument('--interpolate', nargs=2, default=None, metavar=('FIRST', 'LAST'),
                      help='fill the frames between the end of FIRST and the start of LAST '
                           '(--num-cond-frames from each, default 1).')
  frames.add_argument('--num-cond-frames', type=int, default=None, metavar='K',
                      help='frames given from --prime (default: half the model\'s frames) or '
                           'from each --interpolate clip (default 1), and the context of each '
                           'extension chunk (default: half the model\'s frames).')
  frames.add_argument('--num-frames', type=int, default=None, metavar='N',
                      help='frames per video; more than the model was trained on extends the '
                           'video autoregressively (default: the model\'s).')
  frames.add_argument('--recon-guidance', type=float, default=0.0, metavar='W',
                      help='reconstruction guidance weight (Ho et al. 2022) for given frames '
                           'with a model trained without diffusion.frame_conditioning; 0 = '
                           'plain replacement (default).')
  _add_common(parser)
  return parser


def eval_parser(prog: str | None = None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description='FVD (I3D Kinetics-400 features) of a checkpoint\'s samples against '
      'held-out real videos of the configured dataset, with the real-vs-real FVD of two '
      'disjoint real sets; writes a JSON file and prints one line.')
  parser.add_argument('--checkpoint-path', default=None, metavar='DIR',
                      help='checkpoint folder of a run (default: the config\'s).')
  parser.add_argument('--step', type=int, default=-1, metavar='N',
                      help='training step of the checkpoint; -1 = the newest (default).')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help=f'YAML config of the model (default: {DEFAULT_CONFIG}).')
  parser.add_argument('--load-ema-params', action='store_true',
                      help='evaluate the EMA weights instead of the raw weights.')
  parser.add_argument('--num-videos', type=int, default=256, metavar='N',
                      help='generated videos, and real videos per real set (default: 256).')
  parser.add_argument('--batch-size', type=int, default=16, metavar='N',
                      help='videos per sampling call (default: 16).')
  parser.add_argument('--sampler', choices=('ddpm', 'ddim', 'dpmpp'), default='ddpm',
                      help='sampler of the generated videos (default: ddpm).')
  parser.add_argument('--steps', type=int, default=None, metavar='N',
                      help='model calls per video (default: all timesteps for ddpm, 50 for '
                           'ddim, 20 for dpmpp).')
  parser.add_argument('--eta', type=float, default=0.0, help='DDIM noise (default: 0).')
  parser.add_argument('--cond-scale', type=float, default=None, metavar='W',
                      help='classifier-free guidance scale (default: trainer.cond_scale).')
  parser.add_argument('--seed', type=int, default=0, metavar='N',
                      help='seed of the sampling noise and the real videos\' windows.')
  parser.add_argument('--real-path', default=None, metavar='PATH',
                      help='real videos from this dataset (.npy or folder) instead of '
                           'trainer.dataset_path.')
  parser.add_argument('--output', default=None, metavar='FILE.json',
                      help='result file (default: <results_folder>/eval/'
                           'fvd-step<N>-<sampler><steps>[-ema].json).')
  _add_common(parser)
  return parser


def _use_allocator(name: str) -> None:
  """Re-executes this command with a faster malloc preloaded, once."""
  if name == 'glibc' or os.environ.get(_REEXEC_MARK) or not _STANDALONE:
    return
  from video_diffusion.allocator import allocator_env
  try:
    env = allocator_env(name)
  except ValueError as e:
    sys.exit(f'error: --malloc {name}: {e}')
  if 'LD_PRELOAD' not in env:
    return
  env[_REEXEC_MARK] = '1'
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def _use_compilation_cache() -> None:
  """Keeps XLA compilations between runs (JAX_COMPILATION_CACHE_DIR overrides the place)."""
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                        os.path.join(cache_home, 'video-diffusion', 'xla'))


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def run_train(args: argparse.Namespace) -> None:
  from video_diffusion.config import ConfigError, load_config
  overrides = list(args.overrides)
  if args.rng_seed is not None:
    overrides.append(f'trainer.seed={args.rng_seed}')
  try:
    cfg = load_config(args.config, overrides)
  except ConfigError as e:
    _fail(str(e))
  _use_allocator(args.malloc)
  _use_compilation_cache()
  from video_diffusion import distributed, runtime_info, trainer
  from video_diffusion.data import DataError
  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except ValueError as e:
    _fail(str(e))
  runtime_info.print_startup()
  try:
    result = trainer.train(cfg, resume_step=args.resume_step)
  except (ConfigError, DataError, trainer.TrainingError) as e:
    _fail(str(e))
  except KeyboardInterrupt:
    print('\ninterrupted: the current step was checkpointed; continue with --resume_step -1',
          file=sys.stderr)
    sys.exit(130)
  loss = 'n/a' if result.loss is None else f'{result.loss:.4g}'
  print(f'trained to step {result.step} in {result.wall_s:.0f} s, last loss {loss}; '
        f'checkpoints {result.checkpoint_steps} in {result.checkpoint_dir}; '
        f'samples and logs in {result.results_folder}')


def run_sample(args: argparse.Namespace) -> None:
  if args.batch_size < 1:
    _fail(f'--batch-size must be >= 1, got {args.batch_size}')
  cfg, checkpoint_dir, step = _load_checked(args)
  from video_diffusion import sampling
  request = _sample_request(cfg, args)
  try:
    videos, step = sampling.sample_checkpoint(cfg, checkpoint_dir, step=step,
                                              ema=args.load_ema_params, seed=args.seed,
                                              batch_size=args.batch_size, **request)
  except sampling.SamplingError as e:
    _fail(str(e))
  output = args.output_path or os.path.join(cfg.trainer.results_folder, f'samples-step{step}')
  paths = sampling.write_samples(output, videos, fps=args.fps)
  weights = 'EMA' if args.load_ema_params else 'raw'
  print(f'wrote {len(paths) - 1} videos and grid.gif of step {step} ({weights} weights) '
        f'to {os.path.abspath(output)}')


def _load_checked(args: argparse.Namespace):
  """(cfg, checkpoint_dir, step) of sample/eval flags; exits when the config,
  folder or step is wrong or the config does not describe the checkpoint's model."""
  from video_diffusion.config import ConfigError, load_config, resolved_checkpoint_dir
  try:
    cfg = load_config(args.config, args.overrides)
  except ConfigError as e:
    _fail(str(e))
  checkpoint_dir = args.checkpoint_path or resolved_checkpoint_dir(cfg)
  if not os.path.isdir(checkpoint_dir):
    _fail(f'--checkpoint-path {checkpoint_dir} is not a folder; pass the checkpoint folder of a '
          'training run (trainer.checkpoint_dir_path, or <results_folder>/checkpoints)')
  _use_allocator(args.malloc)
  _use_compilation_cache()
  from video_diffusion import runtime_info
  runtime_info.print_startup()
  from video_diffusion.checkpoint import Checkpointer, CheckpointNotFoundError, model_mismatch
  from video_diffusion.config import config_to_dict
  try:
    with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
      step = ckpt.resolve_step(args.step)
      mismatch = model_mismatch(config_to_dict(cfg), ckpt.restore_config(step))
  except CheckpointNotFoundError as e:
    _fail(str(e))
  if mismatch:
    _fail(f'--config {args.config} does not describe the model of step {step}: {mismatch}; '
          'pass the config the run was trained with')
  return cfg, checkpoint_dir, step


def run_eval(args: argparse.Namespace) -> None:
  for flag, value, low in (('--num-videos', args.num_videos, 2),
                           ('--batch-size', args.batch_size, 1)):
    if value < low:
      _fail(f'{flag} must be >= {low}, got {value}')
  cfg, checkpoint_dir, step = _load_checked(args)
  import json
  from video_diffusion import evaluate, samplers
  from video_diffusion.data import DataError
  try:
    sampler = samplers.get_sampler(args.sampler, cfg.diffusion.timesteps, args.steps, args.eta)
    eval_dir = os.path.join(cfg.trainer.results_folder, 'eval')
    result = evaluate.evaluate_checkpoint(
        cfg, checkpoint_dir, step=step, ema=args.load_ema_params, sampler=sampler,
        sampler_name=args.sampler, num_videos=args.num_videos, batch_size=args.batch_size,
        seed=args.seed, cond_scale=args.cond_scale, dataset_path=args.real_path,
        cache_dir=eval_dir)
  except (ValueError, DataError) as e:  # EvalError, sampler, condition, dataset
    _fail(str(e))
  weights, calls = result['weights'], result['model_calls']
  suffix = '-ema' if args.load_ema_params else ''
  output = args.output or os.path.join(eval_dir,
                                       f'fvd-step{step}-{args.sampler}{calls}{suffix}.json')
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  print(f'FVD {result["fvd"]:.2f} (real vs real {result["fvd_real_vs_real"]:.2f}) on '
        f'{args.num_videos} videos: step {step}, {weights} weights, {args.sampler}-{calls}; '
        f'{os.path.abspath(output)}')


def _sample_request(cfg, args: argparse.Namespace) -> dict:
  """sample_checkpoint's keyword arguments from sample.py's flags (exits on bad input)."""
  from video_diffusion import conditioning, samplers, sampling
  d = cfg.diffusion
  shape = sampling.video_shape(cfg)
  k = args.num_cond_frames
  checks = [(args.prime and args.interpolate, '--prime and --interpolate cannot be combined'),
            (k is not None and k < 1, f'--num-cond-frames must be >= 1, got {k}'),
            (args.num_frames is not None and args.num_frames < 1,
             f'--num-frames must be >= 1, got {args.num_frames}'),
            (args.recon_guidance and d.frame_conditioning,
             '--recon-guidance is for models trained without diffusion.frame_conditioning; '
             'this one is given the known frames directly: drop --recon-guidance'),
            (args.recon_guidance < 0, f'--recon-guidance must be >= 0, got {args.recon_guidance}')]
  for failed, message in checks:
    if failed:
      _fail(message)
  try:
    sampler = samplers.get_sampler(args.sampler, d.timesteps, args.steps, args.eta)
    raw = conditioning.requested_condition(cfg, args.batch_size, labels=args.labels,
                                           texts=args.texts, cond_path=args.cond_path)
    cond = conditioning.model_condition(cfg, raw, conditioning.make_text_encoder(cfg))
    first = last = None
    if args.prime:
      clip = sampling.load_clip(args.prime, shape)
      first = clip[-(k or min(len(clip), max(1, d.num_frames // 2))):]
    if args.interpolate:
      first = sampling.load_clip(args.interpolate[0], shape)[-(k or 1):]
      last = sampling.load_clip(args.interpolate[1], shape)[:k or 1]
  except ValueError as e:  # the user's request: sampler, condition, clips, text encoder
    _fail(str(e))
  return dict(sampler=sampler, cond=cond, cond_scale=args.cond_scale, first=first, last=last,
              recon_guidance=args.recon_guidance, num_frames=args.num_frames,
              num_cond_frames=k if not args.interpolate else None)


COMMANDS = {'train': (train_parser, run_train), 'sample': (sample_parser, run_sample),
            'eval': (eval_parser, run_eval)}


def main(argv: list[str] | None = None) -> None:
  """`video-diffusion {train,sample,eval} ...`."""
  global _STANDALONE
  _STANDALONE = argv is None
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog='video-diffusion',
                                   description='Video diffusion in JAX: train, sample, '
                                   'evaluate.')
  sub = parser.add_subparsers(dest='command', required=True, metavar='{train,sample,eval}')
  for name, (make, _) in COMMANDS.items():
    make_sub = make()
    sub.add_parser(name, parents=[make_sub], add_help=False, help=make_sub.description,
                   description=make_sub.description)
  args = parser.parse_args(argv)
  COMMANDS[args.command][1](args)


def entry(command: str, prog: str) -> None:
  """Root scripts: `python train.py ...` is `video-diffusion train ...`."""
  global _STANDALONE
  _STANDALONE = True
  make, run = COMMANDS[command]
  run(make(prog).parse_args(sys.argv[1:]))


if __name__ == '__main__':
  main()
