"""The training loop: data, compiled step, checkpoints, logs and samples.

`train(cfg)` runs a whole training job as the config says; all the maths is
in the pure `train_step`, this module only orchestrates and does the I/O.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

import jax
import numpy as np

from video_diffusion.checkpointing.checkpointer import Checkpointer, CheckpointWriteError
from video_diffusion.conditions import encoding as conditioning
from video_diffusion.config import Config, config_to_dict, dump_config, resolved_checkpoint_dir
from video_diffusion.data import loader as data_loader
from video_diffusion.data import video_io
from video_diffusion.diffusion.factory import split_diffusion
from video_diffusion.eval.evaluate import TrainingEvaluator
from video_diffusion.inference.gifs import grid_frames
from video_diffusion.inference.sampling import compile_sample_fn
from video_diffusion.parallel import distributed, sharding
from video_diffusion.reporting.progress import ProgressBar
from video_diffusion.reporting.run_log import MetricsLogger
from video_diffusion.train import setup
from video_diffusion.train.optimizer import learning_rate_schedule, make_optimizer
from video_diffusion.train.preemption import Preempted, StopSignals
from video_diffusion.train.setup import TrainingError
from video_diffusion.train.validation import Validator

__all__ = ['Preempted', 'TrainResult', 'TrainingDiverged', 'TrainingError', 'train']


class TrainingDiverged(TrainingError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
  """What a finished (or stopped) run leaves behind."""

  step: int
  loss: float | None
  results_folder: str
  checkpoint_dir: str
  checkpoint_steps: list[int]
  wall_s: float


class _Run:
  """The state of one training job between steps; `train_one_step` advances it."""

  def __init__(self, cfg: Config, resume_step: int, process_index: int, process_count: int):
    t = cfg.trainer
    self.cfg = cfg
    self.is_main = process_index == 0
    self.process_count = process_count
    self.results_folder = os.path.abspath(t.results_folder)
    self.ckpt_dir = resolved_checkpoint_dir(cfg)
    os.makedirs(self.results_folder, exist_ok=True)
    self.ckpt = Checkpointer(self.ckpt_dir, max_to_keep=t.max_to_keep)
    try:
      self._start(resume_step, process_index, process_count)
    except BaseException:
      self.ckpt.close()
      raise

  def _start(self, resume_step: int, process_index: int, process_count: int) -> None:
    cfg, t = self.cfg, self.cfg.trainer
    self.mesh = setup.training_mesh(t)
    try:
      self.text_encoder = conditioning.make_text_encoder(cfg)
    except ValueError as e:  # ConditionError, TextEncoderError
      raise TrainingError(str(e)) from None
    self.sample_cond = None
    resume_step = setup.resume_policy(resume_step, self.ckpt.steps(), self.ckpt_dir)
    self.graphdef, params, self.constants = split_diffusion(cfg, abstract=resume_step != 0)
    schedule = learning_rate_schedule(t)
    tx = make_optimizer(t)
    loader, self.epoch = setup.training_loader(cfg, process_index, process_count)
    shardings = setup.state_shardings_of(params, tx, t.seed, self.mesh)
    self.state, self.batches = setup.restore_or_init(
      self.ckpt, cfg, resume_step, params, tx, shardings, loader, process_index, process_count
    )
    self.step = int(self.state.step)
    self.data_state = data_loader.iterator_state(self.batches)  # after the batches of self.step
    self.last_saved = self.step if resume_step != 0 else None
    self.train_step = setup.compile_train_step(
      cfg, self.graphdef, self.constants, tx, schedule, shardings, self.mesh
    )
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
        )
      except ValueError as e:  # EvalError, DataError, a sampler that does not fit
        raise TrainingError(f'trainer.eval_every: {e}') from None
    self.validator = None
    if t.val_every:
      try:
        self.validator = Validator(
          cfg, self.graphdef, self.constants, shardings.params, self.mesh, self.text_encoder
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
    self.state, metrics = self.train_step(self.state, videos, cond, images)
    metrics = jax.device_get(metrics)
    del batch, videos, cond, images  # grain's shared memory: not kept alive by an error below
    metrics['step_time'] = time.perf_counter() - tick
    if not metrics['finite']:
      kept = (
        f'the last checkpoint (step {self.last_saved}) is kept'
        if self.last_saved is not None
        else 'no checkpoint had been written yet'
      )
      raise TrainingDiverged(
        f'loss is {float(metrics["loss"])} (grad norm {float(metrics["grad_norm"])}) at '
        f'step {self.step + 1}; training stopped and {kept} in {self.ckpt_dir}. Lower '
        'trainer.train_lr, set trainer.max_grad_norm, or add trainer.warmup_steps, then '
        'resume with --resume_step -1'
      )
    self.step += 1
    self.data_state = data_loader.iterator_state(self.batches)
    return metrics

  def save(self) -> None:
    """Starts an asynchronous save of the state (unless this step is saved); every
    process takes part, and the data-iterator state of each is kept."""
    step = int(self.state.step)
    if self.last_saved != step:
      data_state = self.data_state
      if self.process_count > 1:
        data_state = {'processes': distributed.gather_json(data_state)}
      self.ckpt.save(self.state, data_state=data_state, config=config_to_dict(self.cfg))
      self.last_saved = step

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
  run = _Run(cfg, resume_step, process_index, process_count)
  logger = MetricsLogger(
    run.results_folder,
    tensorboard_dir=t.tensorboard_dir,
    enabled=run.is_main,
    purge_step=run.step + 1 if run.step else None,  # hides a crashed run's later events
  )
  bar = ProgressBar(t.train_num_steps, initial=run.step) if run.is_main else None
  loss, start_step, profiling = None, run.step, False
  stops = StopSignals().install()  # SIGTERM, Ctrl-C: finish the step, checkpoint it, stop
  try:
    while run.step < t.train_num_steps:
      metrics = run.train_one_step()
      loss = float(metrics['loss'])
      logged = {
        'loss': loss,
        'lr': float(metrics['lr']),
        'grad_norm': float(metrics['grad_norm']),
        'step_time': metrics['step_time'],
      }
      if run.evaluator is not None and run.step % t.eval_every == 0:
        fvd = run.evaluator(run.state.ema_params, run.step)  # every process samples
        if fvd is not None:
          logged['fvd'] = fvd
      if run.validator is not None and run.step % t.val_every == 0:
        logged.update(run.validator(run.state.params))  # fixed clips, noise and times
      logger.log(run.step, logged)
      epoch_note = run.epoch.warning(run.step)
      if run.is_main and epoch_note:
        print(epoch_note, file=sys.stderr)
      if bar is not None:
        bar.update(run.step, loss=loss)
      if run.step % t.checkpoint_every_steps == 0 or run.step == t.train_num_steps:
        run.save()
      if run.step % t.save_and_sample_every == 0:
        grid, frames = run.write_samples()  # every process samples; process 0 writes
        logger.frames(run.step, 'samples/grid', frames)
        if run.is_main and t.add_loss_plot:
          logger.plot()
          shutil.copyfile(
            logger.plot_path, os.path.join(os.path.dirname(grid), f'loss-{run.step}.png')
          )
      if profiling and run.step >= t.profile_flush_step:
        run.ckpt.wait()  # no checkpoint thread still writing while the trace stops
        jax.profiler.stop_trace()
        profiling = False
      if t.profile_flush_step and run.step == start_step + 1 and run.step < t.profile_flush_step:
        jax.profiler.start_trace(os.path.join(run.results_folder, 'profile'))
        profiling = True  # from the second step on: the first one compiles
      if stops.stop_requested(run.process_count):
        run.save()
        raise Preempted(stops.received, run.step, run.ckpt_dir)
  except KeyboardInterrupt:
    run.save()
    raise Preempted('SIGINT', run.step, run.ckpt_dir) from None
  except CheckpointWriteError as e:
    raise TrainingError(str(e)) from None
  finally:
    stops.restore()
    if profiling:
      jax.profiler.stop_trace()
    if bar is not None:
      bar.close()
    logger.close()
    data_loader.close_iterator(run.batches)
    run.batches = None  # frees the prefetched batches' shared memory, even while an error
    # raised here keeps this frame alive (else: "leaked shared_memory objects" at exit)
    try:
      run.ckpt.close()  # waits for the last save: its write error surfaces here
    except CheckpointWriteError as e:
      raise TrainingError(str(e)) from None
  return TrainResult(
    step=run.step,
    loss=loss,
    results_folder=run.results_folder,
    checkpoint_dir=run.ckpt_dir,
    checkpoint_steps=run.ckpt.steps(),
    wall_s=time.perf_counter() - start,
  )
