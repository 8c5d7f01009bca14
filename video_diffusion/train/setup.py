"""Starting a training run, one job per function: the mesh, the resume policy,
the loader, the state (restored or fresh) and the compiled step.

Each takes the config section or values it needs and raises TrainingError
with the fix when the run cannot start.
"""

from __future__ import annotations

import sys

import jax
from jax.sharding import Mesh

from video_diffusion.checkpointing.checkpointer import (
  CheckpointDamagedError,
  Checkpointer,
  model_mismatch,
)
from video_diffusion.conditions.kinds import condition_kind
from video_diffusion.config import Config, TrainerConfig, config_to_dict
from video_diffusion.config.vae import LATENTS_RECORD
from video_diffusion.data import loader as data_loader
from video_diffusion.data.sources import make_source
from video_diffusion.data.spec import DataSpec
from video_diffusion.eval.evaluate import training_clips
from video_diffusion.parallel import compiled, distributed, sharding
from video_diffusion.train import step as train_step_lib
from video_diffusion.train.state import TrainState, init_train_state
from video_diffusion.vae import latent


class TrainingError(RuntimeError):
  """Training cannot start or go on; the message says why and what to do."""


def training_mesh(t: TrainerConfig, devices=None) -> Mesh:
  """The (data, fsdp) mesh of trainer.mesh_data and trainer.mesh_fsdp, checked
  against the micro-batch."""
  try:
    mesh = sharding.make_mesh(t.mesh_data, t.mesh_fsdp, devices)
    sharding.check_batch(t.train_batch_size, mesh)
  except sharding.MeshError as e:
    raise TrainingError(str(e)) from None
  return mesh


def resume_policy(requested: int, existing: list[int], checkpoint_dir: str) -> int:
  """The step to resume from (0 = start afresh): -1 = the newest of `existing`,
  or afresh when there is none; refuses to start afresh over checkpoints."""
  if requested == -1 and not existing:
    print(f'no checkpoint in {checkpoint_dir} yet: starting afresh', file=sys.stderr)
    return 0
  if requested == 0 and existing:
    raise TrainingError(
      f'{checkpoint_dir} already holds checkpoints (steps {", ".join(map(str, existing))}); '
      'continue with --resume_step -1 (newest) or --resume_step N, or set '
      'trainer.checkpoint_dir_path / trainer.results_folder to start a new run'
    )
  return requested


def training_loader(
  cfg: Config, process_index: int, process_count: int, spec: DataSpec | None = None
):
  """(loader, epoch) of this process: the loader of the run's data (`spec`, by
  default DataSpec.from_config) and an EpochReport of its source."""
  spec = DataSpec.from_config(cfg) if spec is None else spec
  source = make_source(spec)
  latents = getattr(source, 'latents', None)
  if latents is not None and cfg.diffusion.vae is None:
    raise TrainingError(
      f'{spec.dataset_path} holds the latents of the autoencoder {latents["vae"]!r}; '
      'set diffusion.vae to it (or train on the videos)'
    )
  loader = data_loader.make_loader(
    spec, process_index=process_index, process_count=process_count, source=source
  )
  return loader, data_loader.EpochReport.of(source, spec.batch_size)


def restore_or_init(
  ckpt: Checkpointer,
  cfg: Config,
  resume_step: int,
  params,
  tx,
  shardings,
  loader,
  process_index: int = 0,
  process_count: int = 1,
  saved_config: dict | None = None,
):
  """(state, batch iterator): fresh at step 0 from `params`, or checkpoint
  `resume_step` restored into `shardings` with the data iterator where it was.
  `params` may be abstract (ShapeDtypeStructs) when resuming. With -1 (the
  newest), a damaged checkpoint is set aside with a warning and the one before
  it is tried. `saved_config` is the config dict the run saves (by default
  config_to_dict(cfg)), whose model the checkpoint's must match."""
  seed = cfg.trainer.seed
  if resume_step == 0:
    return jax.device_put(init_train_state(params, tx, seed), shardings), iter(loader)
  abstract = jax.eval_shape(lambda p: init_train_state(p, tx, seed), params)
  target = sharding.with_shardings(abstract, shardings)
  try:
    steps = [ckpt.resolve_step(resume_step)]
  except FileNotFoundError as e:
    raise TrainingError(f'cannot resume: {e}') from None
  if resume_step == -1:
    steps = ckpt.steps()[::-1]
  for step in steps:
    try:
      current = config_to_dict(cfg) if saved_config is None else saved_config
      mismatch = model_mismatch(current, ckpt.restore_config(step))
      if mismatch:
        raise TrainingError(
          f'cannot resume from step {step} in {ckpt.directory}: '
          f'{mismatch}; resume with the model settings it was trained with, '
          'or start a new run in another checkpoint folder'
        )
      state, data_state, _ = ckpt.restore(step, target)
      break
    except CheckpointDamagedError as e:
      if resume_step != -1:
        others = [s for s in ckpt.steps() if s != step]
        raise TrainingError(
          f'cannot resume: {e}; resume from another step (--resume_step -1 takes the newest '
          f'readable one; steps: {", ".join(map(str, others)) or "none"})'
        ) from None
      warning = str(e)
      if process_index == 0:
        warning += f'; moved to {ckpt.set_aside(step)}'
      distributed.barrier(f'set aside {step}')
      print(f'warning: {warning}; resuming from the checkpoint before it', file=sys.stderr)
  else:
    raise TrainingError(
      f'no checkpoint in {ckpt.directory} can be read (the damaged ones are set aside as '
      '<step>.damaged); start afresh with --resume_step 0'
    )
  if 'processes' in data_state or process_count > 1:
    saved = data_state.get('processes', [data_state])
    if len(saved) != process_count:
      raise TrainingError(
        f'checkpoint {step} was written by {len(saved)} '
        f'process(es); resume it with as many (here: {process_count})'
      )
    data_state = saved[process_index]
  return state, data_loader.restore_iterator(loader, data_state)


def compile_train_step(cfg: Config, graphdef, constants, tx, schedule, state_shardings, mesh: Mesh):
  """The jitted train step over `mesh`, donating the state; a conditional model's
  step also takes the condition batch, a co-training one the image flags."""
  has_cond = condition_kind(cfg) is not None
  options = train_step_lib.StepOptions.from_config(cfg)
  batch_sharding = sharding.batch_sharding(mesh)

  def build():
    return jax.jit(
      train_step_lib.make_train_step(graphdef, constants, tx, options, schedule),
      donate_argnums=0,
      in_shardings=(
        state_shardings,
        batch_sharding,
        batch_sharding if has_cond else None,
        batch_sharding if options.cotrain else None,
      ),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
    )

  # tx and schedule are the same objects for the same settings (optimizer.py).
  key = ('train_step', graphdef, compiled.fingerprint(constants), tx, schedule, options)
  return compiled.reuse(key + (has_cond, mesh, compiled.shardings_key(state_shardings)), build)


def state_shardings_of(params, tx, seed: int, mesh: Mesh) -> TrainState:
  """Shardings of the train state of `params` (real or abstract) on `mesh`."""
  abstract = jax.eval_shape(lambda p: init_train_state(p, tx, seed), params)
  return sharding.state_shardings(abstract, mesh)


def latent_space(cfg: Config, ckpt: Checkpointer, resume_step: int) -> latent.LatentSpace | None:
  """The run's autoencoder (diffusion.vae; None in pixel space) with its latents'
  statistics: a resumed checkpoint's, else the autoencoder's own, else measured
  on the first training clips (or their latents in shards of `prepare --vae`).
  Refuses another autoencoder than the checkpoint's or the shards'."""
  d = cfg.diffusion
  if d.vae is None:
    return None
  try:
    space = latent.LatentSpace.load(d.vae, sample_posterior=d.vae_posterior == 'sample')
  except (OSError, ValueError) as e:
    raise TrainingError(f'diffusion.vae: {e}') from None
  shards = getattr(make_source(DataSpec.from_config(cfg)), 'latents', None)
  if shards is not None and cfg.trainer.image_fraction:
    raise TrainingError(
      f'{cfg.trainer.dataset_path} holds latents, but co-training image stacks are encoded on '
      'the fly; train from the videos (or set trainer.image_fraction: 0)'
    )
  try:
    space = space.with_shards(shards)  # latent shards: the encoder is skipped
  except ValueError as e:
    raise TrainingError(str(e)) from None
  problem = latent.latent_sizes_problem(cfg, space.config)
  if problem:
    raise TrainingError(problem)
  if resume_step != 0:
    try:
      saved = ckpt.restore_config(ckpt.resolve_step(resume_step))
    except (CheckpointDamagedError, FileNotFoundError):
      saved = None  # restore_or_init says what is wrong
    if saved is not None:
      if problem := space.mismatch(saved.get(LATENTS_RECORD)):
        raise TrainingError(
          f'cannot resume from {ckpt.directory}: {problem}; set diffusion.vae to the '
          'autoencoder it was trained with, or start a new run in another checkpoint folder'
        )
      record = saved[LATENTS_RECORD]
      return space.with_stats(record['mean'], record['std'])
  if space.has_stats:
    return space
  videos = training_clips(cfg, latent.STATS_CLIPS, seed=cfg.trainer.seed)
  return latent.measure_stats(space, videos, cfg.trainer.train_batch_size, cfg.trainer.seed)
