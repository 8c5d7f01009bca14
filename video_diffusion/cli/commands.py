"""What `video-diffusion train|sample|eval` do with their parsed arguments.

Errors in the user's input (config, data, checkpoints) end with one line
`error: ...` naming the problem and the fix, exit status 2, and no traceback.
JAX is imported only after the arguments are read, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

# 'on' when this process is the command itself (it may re-exec with an allocator).
STANDALONE = {'on': False}


def _use_allocator(name: str) -> None:
  """Re-executes this command with a faster malloc preloaded, once."""
  if not STANDALONE['on']:
    return
  from video_diffusion.runtime.allocator import reexec_with_allocator

  try:
    reexec_with_allocator(name)
  except ValueError as e:
    sys.exit(f'error: --malloc {name}: {e}')


def _use_compilation_cache() -> None:
  """Keeps XLA compilations between runs (JAX_COMPILATION_CACHE_DIR overrides the place)."""
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR', os.path.join(cache_home, 'video-diffusion', 'xla')
  )


def _set_up_jax() -> None:
  """Before JAX starts: the compilation cache, then the package's CPU options."""
  _use_compilation_cache()  # JAX reads JAX_COMPILATION_CACHE_DIR when imported
  from video_diffusion.runtime.xla_options import configure_cpu

  configure_cpu()


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config(path: str, overrides: list[str]):
  """The config of `path` with `overrides`, or exit with its error."""
  from video_diffusion.config import ConfigError, load_config

  try:
    return load_config(path, overrides)
  except ConfigError as e:
    _fail(str(e))


def run_train(args: argparse.Namespace) -> None:
  overrides = list(args.overrides)
  if args.rng_seed is not None:
    overrides.append(f'trainer.seed={args.rng_seed}')
  cfg = _config(args.config, overrides)
  _use_allocator(args.malloc)
  _set_up_jax()
  from video_diffusion.parallel import distributed
  from video_diffusion.runtime import runtime_info
  from video_diffusion.train import loop as trainer

  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  except ValueError as e:
    _fail(str(e))
  runtime_info.print_startup()
  train_and_report(trainer.train, cfg, args.resume_step)


def train_and_report(train, cfg, resume_step: int | None) -> None:
  """Runs `train(cfg, resume_step=...)` (train.loop.train or train.vae_loop.train_vae)
  and prints its last line; bad input ends in one `error:` line, a stop signal in
  the preempted / interrupted line and its exit status."""
  from video_diffusion.config import ConfigError
  from video_diffusion.data.errors import DataError
  from video_diffusion.train.preemption import INTERRUPTED_EXIT_STATUS, Preempted
  from video_diffusion.train.setup import TrainingError

  try:
    result = train(cfg, resume_step=resume_step)
  except (ConfigError, DataError, TrainingError) as e:
    _fail(str(e))
  except Preempted as e:
    print(f'\n{e.kind}: {e}', file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:
    print('\ninterrupted before the first step', file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT_STATUS)
  loss = 'n/a' if result.loss is None else f'{result.loss:.4g}'
  print(
    f'trained to step {result.step} in {result.wall_s:.0f} s, last loss {loss}; '
    f'checkpoints {result.checkpoint_steps} in {result.checkpoint_dir}; '
    f'samples and logs in {result.results_folder}'
  )


def run_sample(args: argparse.Namespace) -> None:
  if args.batch_size < 1:
    _fail(f'--batch-size must be >= 1, got {args.batch_size}')
  cfg, checkpoint_dir, step = _load_checked(args)
  from video_diffusion.checkpointing.checkpointer import CheckpointDamagedError
  from video_diffusion.inference import checkpoint, gifs, sampling

  request = _sample_request(cfg, args)
  try:
    videos, step = checkpoint.sample_checkpoint(
      cfg,
      checkpoint_dir,
      step=step,
      ema=args.load_ema_params,
      seed=args.seed,
      batch_size=args.batch_size,
      **request,
    )
  except (sampling.SamplingError, CheckpointDamagedError) as e:
    _fail(str(e))
  output = args.output_path or os.path.join(cfg.trainer.results_folder, f'samples-step{step}')
  paths = gifs.write_samples(output, videos, fps=args.fps)
  weights = 'EMA' if args.load_ema_params else 'raw'
  print(
    f'wrote {len(paths) - 1} videos and grid.gif of step {step} ({weights} weights) '
    f'to {os.path.abspath(output)}'
  )


def _load_checked(args: argparse.Namespace):
  """(cfg, checkpoint_dir, step) of sample/eval flags; exits when the config,
  folder or step is wrong or the config does not describe the checkpoint's model."""
  from video_diffusion.config import resolved_checkpoint_dir

  cfg = _config(args.config, args.overrides)
  checkpoint_dir = args.checkpoint_path or resolved_checkpoint_dir(cfg)
  if not os.path.isdir(checkpoint_dir):
    _fail(
      f'--checkpoint-path {checkpoint_dir} is not a folder; pass the checkpoint folder of a '
      'training run (trainer.checkpoint_dir_path, or <results_folder>/checkpoints)'
    )
  _use_allocator(args.malloc)
  _set_up_jax()
  from video_diffusion.runtime import runtime_info

  runtime_info.print_startup()
  from video_diffusion.checkpointing.checkpointer import (
    CheckpointDamagedError,
    Checkpointer,
    CheckpointNotFoundError,
    model_mismatch,
  )
  from video_diffusion.config import config_to_dict

  try:
    with Checkpointer(checkpoint_dir, read_only=True) as ckpt:
      step = ckpt.resolve_step(args.step)
      mismatch = model_mismatch(config_to_dict(cfg), ckpt.restore_config(step))
  except (CheckpointNotFoundError, CheckpointDamagedError) as e:
    _fail(str(e))
  if mismatch:
    _fail(
      f'--config {args.config} does not describe the model of step {step}: {mismatch}; '
      'pass the config the run was trained with'
    )
  return cfg, checkpoint_dir, step


def run_eval(args: argparse.Namespace) -> None:
  for flag, value, low in (
    ('--num-videos', args.num_videos, 2),
    ('--batch-size', args.batch_size, 1),
  ):
    if value < low:
      _fail(f'{flag} must be >= {low}, got {value}')
  cfg, checkpoint_dir, step = _load_checked(args)
  import json

  from video_diffusion.checkpointing.checkpointer import CheckpointDamagedError
  from video_diffusion.data.errors import DataError
  from video_diffusion.diffusion import samplers
  from video_diffusion.eval import evaluate

  try:
    d = cfg.diffusion
    sampler = samplers.get_sampler(args.sampler, d.timesteps, args.steps, args.eta, flow=d.is_flow)
    eval_dir = os.path.join(cfg.trainer.results_folder, 'eval')
    result = evaluate.evaluate_checkpoint(
      cfg,
      checkpoint_dir,
      step=step,
      ema=args.load_ema_params,
      sampler=sampler,
      sampler_name=sampler.name,
      num_videos=args.num_videos,
      batch_size=args.batch_size,
      seed=args.seed,
      cond_scale=args.cond_scale,
      dataset_path=args.real_path,
      cache_dir=eval_dir,
    )
  except (ValueError, DataError, CheckpointDamagedError) as e:  # eval, sampler, data, weights
    _fail(str(e))
  weights, calls = result['weights'], result['model_calls']
  suffix = '-ema' if args.load_ema_params else ''
  output = args.output or os.path.join(
    eval_dir, f'fvd-step{step}-{sampler.name}{calls}{suffix}.json'
  )
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  print(
    f'FVD {result["fvd"]:.2f} (real vs real {result["fvd_real_vs_real"]:.2f}) on '
    f'{args.num_videos} videos: step {step}, {weights} weights, {sampler.name}-{calls}; '
    f'{os.path.abspath(output)}'
  )


def _sample_request(cfg, args: argparse.Namespace) -> dict:
  """sample_checkpoint's keyword arguments from sample.py's flags (exits on bad input)."""
  from video_diffusion.conditions import encoding as conditioning
  from video_diffusion.config.schema import default_cond_frames
  from video_diffusion.diffusion import samplers
  from video_diffusion.inference import sampling

  d = cfg.diffusion
  shape = d.video_shape
  k = args.num_cond_frames
  checks = [
    (args.prime and args.interpolate, '--prime and --interpolate cannot be combined'),
    (k is not None and k < 1, f'--num-cond-frames must be >= 1, got {k}'),
    (
      k is not None and k >= d.num_frames,
      f"--num-cond-frames {k} leaves none of the model's {d.num_frames} frames "
      f'(diffusion.num_frames) to generate; give at most {d.num_frames - 1}',
    ),
    (
      args.num_frames is not None and args.num_frames < 1,
      f'--num-frames must be >= 1, got {args.num_frames}',
    ),
    (
      args.recon_guidance and d.frame_conditioning,
      '--recon-guidance is for models trained without diffusion.frame_conditioning; '
      'this one is given the known frames directly: drop --recon-guidance',
    ),
    (args.recon_guidance < 0, f'--recon-guidance must be >= 0, got {args.recon_guidance}'),
  ]
  for failed, message in checks:
    if failed:
      _fail(message)
  try:
    sampler = samplers.get_sampler(args.sampler, d.timesteps, args.steps, args.eta, flow=d.is_flow)
    raw = conditioning.requested_condition(
      cfg, args.batch_size, labels=args.labels, texts=args.texts, cond_path=args.cond_path
    )
    cond = conditioning.model_condition(cfg, raw, conditioning.make_text_encoder(cfg))
    first = last = None
    if args.prime:
      clip = sampling.load_clip(args.prime, shape)
      first = clip[-(k or min(len(clip), default_cond_frames(d.num_frames))) :]
    if args.interpolate:
      first = sampling.load_clip(args.interpolate[0], shape)[-(k or 1) :]
      last = sampling.load_clip(args.interpolate[1], shape)[: k or 1]
  except ValueError as e:  # the user's request: sampler, condition, clips, text encoder
    _fail(str(e))
  return dict(
    sampler=sampler,
    cond=cond,
    cond_scale=args.cond_scale,
    first=first,
    last=last,
    recon_guidance=args.recon_guidance,
    num_frames=args.num_frames,
    num_cond_frames=k if not args.interpolate else None,
  )


def run_prepare(args: argparse.Namespace) -> None:
  overrides = [
    f'{key}={value}'
    for key, value in (
      ('diffusion.num_frames', args.num_frames),
      ('diffusion.image_size', args.image_size),
      ('diffusion.channels', args.channels),
      ('trainer.frame_stride', args.frame_stride),
      ('trainer.fps', args.fps),
      ('trainer.clips_per_video', args.clips_per_video),
      ('trainer.seed', args.seed),
    )
    if value is not None
  ]
  # the other copies of a size (the seed configs' trainer keys, unet.channels) follow it
  for key in ('num_frames', 'image_size', 'channels'):
    if getattr(args, key) is not None:
      overrides.append(f'trainer.{key}=null')
  if args.channels is not None:
    overrides.append(f'unet.channels={args.channels}')
  cfg = _config(args.config, overrides)
  from video_diffusion.data.errors import DataError
  from video_diffusion.data.prepare import prepare
  from video_diffusion.data.spec import DataSpec
  from video_diffusion.reporting.progress import ProgressBar

  if args.vae_sample and not args.vae:
    _fail('--vae-sample packs posterior samples of --vae PATH; give --vae too')
  spec = DataSpec.from_config(cfg)
  encoding = {}
  if args.vae:
    encoding = _shard_encoding(cfg, args, spec.video_shape)
  try:
    manifest = prepare(
      args.source,
      args.out,
      spec,
      args.shards,
      progress=lambda total, done: ProgressBar(total, initial=done, unit='clip', label='prepare'),
      **encoding,
    )
  except DataError as e:
    _fail(str(e))
  f, s, _, c = manifest['video_shape']
  kinds = ', '.join(manifest['conditions']) or 'none'
  what = f'clips of {f} frames of {s}x{s}x{c}'
  train_with = f'trainer.dataset_path={args.out}'
  if args.vae:
    what = f'latents ({manifest["latents"]["stored"]}) of {what}'
    train_with += f' diffusion.vae={args.vae}'
  print(
    f'packed {manifest["clips"]} {what} into {len(manifest["shards"])} shards in '
    f'{os.path.abspath(args.out)} (conditions: {kinds}); train on them with {train_with}'
  )


def _shard_encoding(cfg, args: argparse.Namespace, video_shape) -> dict:
  """prepare's encode and latents keywords for --vae (the sizes checked first)."""
  from video_diffusion.vae import latent

  try:
    space = latent.LatentSpace.load(args.vae)
  except (OSError, ValueError) as e:
    _fail(f'--vae: {e}')
  with_vae = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, vae=args.vae))
  problem = latent.latent_sizes_problem(with_vae, space.config)
  if problem:
    _fail(f'--vae: {problem} (or the matching flag of prepare)')
  encode, latents = latent.shard_encoder(
    space, video_shape, sample=args.vae_sample, seed=cfg.trainer.seed
  )
  return {'encode': encode, 'latents': latents}
