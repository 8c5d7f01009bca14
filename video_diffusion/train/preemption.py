"""Stopping a run at a step boundary when a scheduler preempts it (SIGTERM).

A cluster scheduler that takes a machine back sends SIGTERM, then SIGKILL a
little later. While a `StopSignals` is entered, SIGTERM only records the
request; the training loop asks `stop_requested()` after each step, so the
step in flight finishes and is checkpointed before the run ends. In a
multi-process run every process asks at the same step and the answer is the
OR over processes (one tiny all-gather per step), so all of them stop and save
at the same step even when the signal reaches them at different times.
"""

from __future__ import annotations

import signal
import threading

PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM death


class Preempted(Exception):
  """The run stopped on a signal (`reason`: 'SIGTERM', or 'SIGTERM to another
  process') after checkpointing `step`."""

  def __init__(self, reason: str, step: int, checkpoint_dir: str):
    self.reason, self.step, self.checkpoint_dir = reason, step, checkpoint_dir
    super().__init__(
      f'{reason}: stopped at step {step}, which is checkpointed in {checkpoint_dir}; '
      'continue with --resume_step -1'
    )


class StopSignals:
  """Records SIGTERM instead of dying between `install()` and `restore()` (or
  as a context manager); in the main thread only, elsewhere it installs
  nothing and never requests a stop."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.signals = signals
    self.received: str | None = None
    self._previous: dict[int, object] = {}

  def _record(self, signum, frame) -> None:
    self.received = signal.Signals(signum).name

  def install(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.signals:
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def restore(self) -> None:
    """Puts the handlers from before `install` back."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  __enter__ = install

  def __exit__(self, *exc) -> None:
    self.restore()

  def stop_requested(self, process_count: int = 1) -> bool:
    """Whether any process has received a stop signal; with several processes
    every one must call this at the same step (it is a collective)."""
    local = self.received is not None
    if process_count == 1:
      return local
    from video_diffusion.parallel.distributed import any_process

    anywhere = any_process(local)
    if anywhere and not local:
      self.received = 'SIGTERM to another process'
    return anywhere
