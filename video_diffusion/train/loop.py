"""The training loop: data, compiled step, checkpoints, logs and samples.

`train(cfg)` runs a whole training job as the config says; all the maths is
in the pure `train_step`, this module only orchestrates and does the I/O.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import numpy as np

from video_diffusion.conditions import encoding as conditioning
from video_diffusion.config import Config, dump_config
from video_diffusion.config.vae import LATENTS_RECORD
from video_diffusion.data import video_io
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.eval.evaluate import TrainingEvaluator
from video_diffusion.inference.gifs import grid_frames
from video_diffusion.inference.sampling import compile_sample_fn
from video_diffusion.parallel import sharding
from video_diffusion.reporting.run_log import MetricsLogger
from video_diffusion.train import setup
from video_diffusion.train.optimizer import learning_rate_schedule, make_optimizer
from video_diffusion.train.preemption import Preempted
from video_diffusion.train.run import Run, TrainingDiverged, TrainResult, run_loop
from video_diffusion.train.setup import TrainingError
from video_diffusion.train.validation import Validator
from video_diffusion.vae.latent import LatentEncoder, decoder

__all__ = ['Preempted', 'TrainResult', 'TrainingDiverged', 'TrainingError', 'train']


class _Run(Run):
  """A diffusion model's training job between steps; `train_one_step` advances it."""

  def _start(self, resume_step: int, process_index: int, process_count: int) -> None:
    cfg, t = self.cfg, self.cfg.trainer
    self.mesh = setup.training_mesh(t)
    try:
      self.text_encoder = conditioning.make_text_encoder(cfg)
    except ValueError as e:  # ConditionError, TextEncoderError
      raise TrainingError(str(e)) from None
    self.sample_cond = None
    resume_step = setup.resume_policy(resume_step, self.ckpt.steps(), self.ckpt_dir)
    self.latents = setup.latent_space(cfg, self.ckpt, resume_step)
    # What the backbone sees: the latents' sizes in latent space, else cfg.
    model_cfg = cfg if self.latents is None else self.latents.model_config(cfg)
    self.graphdef, params, self.constants = split_diffusion(model_cfg, abstract=resume_step != 0)
    schedule = learning_rate_schedule(t)
    tx = make_optimizer(t)
    loader, self.epoch = setup.training_loader(cfg, process_index, process_count)
    shardings = setup.state_shardings_of(params, tx, t.seed, self.mesh)
    self.restore_or_init(resume_step, params, tx, shardings, loader, process_index)
    self.profiling = False
    self.train_step = setup.compile_train_step(
      model_cfg, self.graphdef, self.constants, tx, schedule, shardings, self.mesh
    )
    self.encode = None if self.latents is None else LatentEncoder(self.latents, self.mesh, t.seed)
    self.decode = decoder(self.latents)
    self.sample_fn = None
    self.evaluator = None
    if t.eval_every:
      try:
        self.evaluator = TrainingEvaluator(
          cfg,
          self.graphdef,
          self.constants,
          mesh=self.mesh,
          is_main=self.is_main,
          text_encoder=self.text_encoder,
          decode=self.decode,
        )
      except ValueError as e:  # EvalError, DataError, a sampler that does not fit
        raise TrainingError(f'trainer.eval_every: {e}') from None
    self.validator = None
    if t.val_every:
      try:
        self.validator = Validator(
          cfg,
          self.graphdef,
          self.constants,
          shardings.params,
          self.mesh,
          self.text_encoder,
          encode=None if self.encode is None else self.encode.means,
        )
      except ValueError as e:  # EvalError, DataError, MeshError, ConditionError
        raise TrainingError(f'trainer.val_every: {e}') from None
    if self.is_main:
      dump_config(cfg, os.path.join(self.results_folder, 'config.yaml'))

  def train_one_step(self) -> dict:
    """Takes the next batch, runs the compiled step and returns its metrics
    (numpy) with 'step_time', the seconds from the batch in hand to the metrics
    back; raises TrainingDiverged on a non-finite loss (state unchanged)."""
    batch = next(self.batches)
    cond = self.condition(batch)
    tick = time.perf_counter()
    videos = sharding.global_batch(batch['video'], self.mesh)
    cond = None if cond is None else sharding.global_batch(cond, self.mesh)
    images = batch.get('image')  # image-video co-training
    images = None if images is None else sharding.global_batch(images, self.mesh)
    if self.encode is not None:
      videos = self.encode(videos, self.step, images)
    self.state, metrics = self.train_step(self.state, videos, cond, images)
    metrics = jax.device_get(metrics)
    del batch, videos, cond, images  # grain's shared memory: not kept alive by an error below
    return self.finish_step(metrics, tick)

  def measure(self, metrics: dict) -> dict:
    """The step's metrics, with the FVD and validation loss when due."""
    t, logged = self.cfg.trainer, super().measure(metrics)
    if self.evaluator is not None and self.step % t.eval_every == 0:
      fvd = self.evaluator(self.state.ema_params, self.step)  # every process samples
      if fvd is not None:
        logged['fvd'] = fvd
    if self.validator is not None and self.step % t.val_every == 0:
      logged.update(self.validator(self.state.params))  # fixed clips, noise and times
    return logged

  def after_step(self, logger: MetricsLogger) -> None:
    """The sample grid (and loss-curve copy) when due; the profiler trace from the
    second step on (the first one compiles) to trainer.profile_flush_step."""
    t = self.cfg.trainer
    if self.step % t.save_and_sample_every == 0:
      grid, frames = self.write_samples()  # every process samples; process 0 writes
      logger.frames(self.step, 'samples/grid', frames)
      if self.is_main and t.add_loss_plot:
        logger.plot()
        shutil.copyfile(
          logger.plot_path, os.path.join(os.path.dirname(grid), f'loss-{self.step}.png')
        )
    if self.profiling and self.step >= t.profile_flush_step:
      self.ckpt.wait()  # no checkpoint thread still writing while the trace stops
      jax.profiler.stop_trace()
      self.profiling = False
    flush = t.profile_flush_step
    if flush and self.step == self.start_step + 1 and self.step < flush:
      jax.profiler.start_trace(os.path.join(self.results_folder, 'profile'))
      self.profiling = True

  def close(self) -> None:
    if self.profiling:
      jax.profiler.stop_trace()
      self.profiling = False

  def saved_config(self) -> dict:
    """The run's config dict, and in latent space the autoencoder's record."""
    saved = super().saved_config()
    if self.latents is not None:
      saved[LATENTS_RECORD] = self.latents.record()
    return saved

  def condition(self, batch: dict):
    """The model's condition of a data batch (None for an unconditional model);
    the first one also sets the condition of the periodic samples."""
    if 'cond' not in batch:
      return None
    n = self.cfg.trainer.num_sample_rows**2
    if self.sample_cond is None:
      try:
        raw = conditioning.requested_condition(self.cfg, n)
      except conditioning.ConditionError:  # no default: take the first videos' conditions
        raw = np.stack([batch['cond'][i % len(batch['cond'])] for i in range(n)])
      self.sample_cond = conditioning.model_condition(self.cfg, raw, self.text_encoder)
    return conditioning.model_condition(self.cfg, batch['cond'], self.text_encoder)

  def write_samples(self) -> tuple[str, np.ndarray | None]:
    """Samples the periodic grid from the EMA params (every process); process 0
    writes it as a GIF and returns (its path, the grid's uint8 frames)."""
    rows = self.cfg.trainer.num_sample_rows
    if self.sample_fn is None:
      self.sample_fn = compile_sample_fn(
        self.graphdef,
        self.constants,
        rows * rows,
        cond_scale=self.cfg.trainer.cond_scale,
        mesh=self.mesh,
      )
    key = jax.random.fold_in(jax.random.key(self.cfg.trainer.seed), self.step)
    videos = self.sample_fn(self.state.ema_params, key, self.sample_cond)
    if not self.is_main:
      return '', None
    videos = self.decode(videos)
    path = os.path.join(self.results_folder, 'samples', f'sample-{self.step}.gif')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = grid_frames(videos, rows)
    video_io.write_gif(path, frames)
    return path, frames


def train(
  cfg: Config,
  *,
  resume_step: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> TrainResult:
  """Trains as `cfg` says. resume_step: None = trainer.resume_training_step;
  0 = start afresh; N = resume from checkpoint N; -1 = from the newest, or
  afresh when the checkpoint folder is empty. SIGTERM or Ctrl-C lets the step in
  flight finish, checkpoints it and raises Preempted; a second Ctrl-C stops at
  once, checkpoints the last finished step and raises Preempted too."""
  t = cfg.trainer
  resume_step = t.resume_training_step if resume_step is None else resume_step
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  start = time.perf_counter()
  return run_loop(_Run(cfg, resume_step, process_index, process_count), start)
