"""Training the `vae` section's video autoencoder (`video-diffusion train-vae`).

The clips are those train.py reads (diffusion.image_size x num_frames x
channels from trainer.dataset_path), without conditions; the trainer section's
optimiser, EMA, checkpoint and logging keys mean what they mean there, and
vae_trainer adds the loss and the held-out measurements. The run loop
(checkpoints, exact resume, stop signals, metrics) is train.run's.
"""

from __future__ import annotations

import os
import time

import jax
from flax import nnx

from video_diffusion.config import Config, config_to_dict, dump_config, vae_run_problem
from video_diffusion.config.vae import MODEL_KIND
from video_diffusion.data import video_io
from video_diffusion.data.spec import DataSpec
from video_diffusion.eval.reconstruction import HeldOutReconstructions
from video_diffusion.parallel import compiled, sharding
from video_diffusion.reporting.run_log import MetricsLogger
from video_diffusion.train import setup
from video_diffusion.train.optimizer import learning_rate_schedule, make_optimizer
from video_diffusion.train.run import Run, TrainResult, run_loop
from video_diffusion.train.setup import TrainingError
from video_diffusion.train.step import StepOptions
from video_diffusion.train.vae_step import make_vae_train_step
from video_diffusion.vae.training import split_vae

__all__ = ['train_vae']


class _VAERun(Run):
  """A video autoencoder's training job between steps."""

  def _start(self, resume_step: int, process_index: int, process_count: int) -> None:
    cfg, t = self.cfg, self.cfg.trainer
    problem = vae_run_problem(cfg)
    if problem:
      raise TrainingError(problem)
    self.mesh = setup.training_mesh(t)
    resume_step = setup.resume_policy(resume_step, self.ckpt.steps(), self.ckpt_dir)
    self.graphdef, params, self.rest = split_vae(cfg.vae, t.seed, abstract=resume_step != 0)
    schedule, tx = learning_rate_schedule(t), make_optimizer(t)
    spec = DataSpec.from_config(cfg).videos_only()
    loader, self.epoch = setup.training_loader(cfg, process_index, process_count, spec)
    shardings = setup.state_shardings_of(params, tx, t.seed, self.mesh)
    self.restore_or_init(resume_step, params, tx, shardings, loader, process_index)
    self.train_step = compile_vae_step(
      cfg, self.graphdef, self.rest, tx, schedule, shardings, self.mesh
    )
    try:
      self.held_out = HeldOutReconstructions(cfg, cfg.vae_trainer.eval_num_videos, seed=t.seed)
    except ValueError as e:  # EvalError, DataError
      raise TrainingError(str(e)) from None
    self.comparison = None  # the frames of the latest reconstruction grid, until written
    if self.is_main:
      dump_config(cfg, os.path.join(self.results_folder, 'config.yaml'))

  def saved_config(self) -> dict:
    return {**config_to_dict(self.cfg), MODEL_KIND: 'vae'}

  def train_one_step(self) -> dict:
    batch = next(self.batches)
    tick = time.perf_counter()
    videos = sharding.global_batch(batch['video'], self.mesh)
    self.state, metrics = self.train_step(self.state, videos)
    metrics = jax.device_get(metrics)
    del batch, videos  # grain's shared memory: not kept alive by an error below
    return self.finish_step(metrics, tick)

  def measure(self, metrics: dict) -> dict:
    """The step's metrics, its loss terms, and at a checkpoint the PSNR and SSIM
    of the online weights' reconstructions of the held-out clips."""
    logged = super().measure(metrics)
    logged.update(recon_loss=float(metrics['recon_loss']), kl=float(metrics['kl']))
    if self.at_checkpoint():
      vae = nnx.merge(self.graphdef, self.state.params, self.rest)
      scores, self.comparison = self.held_out(vae)
      logged.update({f'val_{name}': value for name, value in scores.items()})
    return logged

  def after_step(self, logger: MetricsLogger) -> None:
    """The GIF of the held-out clips beside their reconstructions, after a checkpoint."""
    if self.comparison is None:
      return
    frames, self.comparison = self.comparison, None
    logger.frames(self.step, 'samples/reconstruction', frames)
    if self.is_main:
      path = os.path.join(self.results_folder, 'samples', f'reconstruction-{self.step}.gif')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      video_io.write_gif(path, frames)


def compile_vae_step(cfg: Config, graphdef, rest, tx, schedule, state_shardings, mesh):
  """The jitted VAE train step over `mesh`, donating the state (one per process for
  equal settings: parallel.compiled)."""
  options = StepOptions.from_config(cfg)
  batch = sharding.batch_sharding(mesh)

  def build():
    return jax.jit(
      make_vae_train_step(graphdef, rest, tx, options, cfg.vae_trainer, schedule),
      donate_argnums=0,
      in_shardings=(state_shardings, batch),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
    )

  # tx and schedule are the same objects for the same settings (train.optimizer).
  key = ('vae_train_step', graphdef, compiled.fingerprint(rest), tx, schedule, options)
  key += (cfg.vae_trainer, mesh, compiled.shardings_key(state_shardings))
  return compiled.reuse(key, build)


def train_vae(cfg: Config, *, resume_step: int | None = None) -> TrainResult:
  """Trains cfg.vae as `cfg` says (one process). resume_step: None =
  trainer.resume_training_step; 0 = start afresh; N = resume from checkpoint N;
  -1 = from the newest, or afresh when there is none. SIGTERM or Ctrl-C
  checkpoints and raises Preempted, as train.loop.train does."""
  resume_step = cfg.trainer.resume_training_step if resume_step is None else resume_step
  start = time.perf_counter()
  return run_loop(_VAERun(cfg, resume_step, 0, 1), start)
