"""What every training job shares: its folder and checkpoints, the step and data
position, saving, and the loop around the steps (metrics, progress, checkpoints,
stop signals, clean-up).

`Run` is one job between steps; train.loop (the diffusion model) and
train.vae_loop (the video autoencoder) subclass it with how they start and take
a step, and `run_loop` drives either to trainer.train_num_steps.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from video_diffusion.checkpointing.checkpointer import Checkpointer, CheckpointWriteError
from video_diffusion.config import Config, config_to_dict, resolved_checkpoint_dir
from video_diffusion.data import loader as data_loader
from video_diffusion.parallel import distributed
from video_diffusion.reporting.progress import ProgressBar
from video_diffusion.reporting.run_log import MetricsLogger
from video_diffusion.train import setup
from video_diffusion.train.preemption import Preempted, StopSignals
from video_diffusion.train.setup import TrainingError


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


class Run:
  """The state of one training job between steps. A subclass sets, in `_start`,
  state (a train.state.TrainState), batches (the data iterator), step, data_state
  and last_saved (all through `restore_or_init`) and epoch (an EpochReport), and
  defines `train_one_step`;
  `measure` and `after_step` add its metrics and periodic outputs."""

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
    raise NotImplementedError

  def restore_or_init(
    self, resume_step: int, params, tx, shardings, loader, process_index: int
  ) -> None:
    """Sets the state and batches (fresh, or restored from checkpoint `resume_step`
    as setup.restore_or_init does), the step, the data position and last_saved."""
    self.state, self.batches = setup.restore_or_init(
      self.ckpt,
      self.cfg,
      resume_step,
      params,
      tx,
      shardings,
      loader,
      process_index,
      self.process_count,
      saved_config=self.saved_config(),
    )
    self.step = self.start_step = int(self.state.step)
    self.data_state = data_loader.iterator_state(self.batches)  # after the batches of self.step
    self.last_saved = self.step if resume_step != 0 else None

  def train_one_step(self) -> dict:
    """Takes the next batch and runs the step; returns its metrics (numpy) with
    'step_time' (through `finish_step`)."""
    raise NotImplementedError

  def saved_config(self) -> dict:
    """The config dict each checkpoint holds (compared with the config on resuming)."""
    return config_to_dict(self.cfg)

  def finish_step(self, metrics: dict, tick: float) -> dict:
    """Adds 'step_time' (seconds since `tick`), raises TrainingDiverged on a
    non-finite loss (state unchanged), else counts the step and keeps the data
    position after it."""
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

  def at_checkpoint(self) -> bool:
    """Whether this step is checkpointed: every checkpoint_every_steps, and the last."""
    t = self.cfg.trainer
    return self.step % t.checkpoint_every_steps == 0 or self.step == t.train_num_steps

  def save(self) -> None:
    """Starts an asynchronous save of the state (unless this step is saved); every
    process takes part, and the data-iterator state of each is kept."""
    step = int(self.state.step)
    if self.last_saved != step:
      data_state = self.data_state
      if self.process_count > 1:
        data_state = {'processes': distributed.gather_json(data_state)}
      self.ckpt.save(self.state, data_state=data_state, config=self.saved_config())
      self.last_saved = step

  def measure(self, metrics: dict) -> dict:
    """What metrics.jsonl and TensorBoard get for this step."""
    return {
      'loss': float(metrics['loss']),
      'lr': float(metrics['lr']),
      'grad_norm': float(metrics['grad_norm']),
      'step_time': metrics['step_time'],
    }

  def after_step(self, logger: MetricsLogger) -> None:
    """Periodic outputs after the step's checkpoint (samples, GIFs, profiles)."""

  def close(self) -> None:
    """Ends what after_step left running (called once, however the run ends)."""


def run_loop(run: Run, start: float) -> TrainResult:
  """Trains `run` to trainer.train_num_steps: logs, progress bar, checkpoints.
  SIGTERM or Ctrl-C lets the step in flight finish, checkpoints it and raises
  Preempted; a second Ctrl-C stops at once, checkpoints the last finished step
  and raises Preempted too. `start` is when the job began (perf_counter)."""
  t = run.cfg.trainer
  logger = MetricsLogger(
    run.results_folder,
    tensorboard_dir=t.tensorboard_dir,
    enabled=run.is_main,
    purge_step=run.step + 1 if run.step else None,  # hides a crashed run's later events
  )
  bar = ProgressBar(t.train_num_steps, initial=run.step) if run.is_main else None
  loss = None
  stops = StopSignals().install()  # SIGTERM, Ctrl-C: finish the step, checkpoint it, stop
  try:
    while run.step < t.train_num_steps:
      metrics = run.train_one_step()
      loss = float(metrics['loss'])
      logger.log(run.step, run.measure(metrics))
      epoch_note = run.epoch.warning(run.step)
      if run.is_main and epoch_note:
        print(epoch_note, file=sys.stderr)
      if bar is not None:
        bar.update(run.step, loss=loss)
      if run.at_checkpoint():
        run.save()
      run.after_step(logger)
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
    run.close()
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
