"""Stopping a run at a step boundary when a scheduler preempts it (SIGTERM) or
its user presses Ctrl-C (SIGINT).

A cluster scheduler that takes a machine back sends SIGTERM, then SIGKILL a
little later. While a `StopSignals` is entered, SIGTERM and a first Ctrl-C only
record the request; the training loop asks `stop_requested()` after each step,
so the step in flight finishes and is checkpointed before the run ends. (A
KeyboardInterrupt raised wherever Python happens to be can be lost: one that
lands in a garbage-collection callback is printed and ignored.) A second Ctrl-C
raises KeyboardInterrupt at once. In a
multi-process run every process asks at the same step and the answer is the
OR over processes (one tiny all-gather per step), so all of them stop and save
at the same step even when the signal reaches them at different times.
"""

from __future__ import annotations

import signal
import sys
import threading

PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM death
INTERRUPTED_EXIT_STATUS = 128 + signal.SIGINT
OTHER_PROCESS = 'a stop signal to another process'


class Preempted(Exception):
  """The run stopped on a signal (`reason`: 'SIGTERM', 'SIGINT', or
  OTHER_PROCESS) after checkpointing `step`; `kind` is 'interrupted' (Ctrl-C)
  or 'preempted', `exit_status` what a shell reports for a death by that signal."""

  def __init__(self, reason: str, step: int, checkpoint_dir: str):
    self.reason, self.step, self.checkpoint_dir = reason, step, checkpoint_dir
    by_user = reason == 'SIGINT'
    self.kind = 'interrupted' if by_user else 'preempted'
    self.exit_status = INTERRUPTED_EXIT_STATUS if by_user else PREEMPTED_EXIT_STATUS
    super().__init__(
      f'{reason}: stopped at step {step}, which is checkpointed in {checkpoint_dir}; '
      'continue with --resume_step -1'
    )


class StopSignals:
  """Records SIGTERM and a first SIGINT instead of dying between `install()` and
  `restore()` (or as a context manager); a SIGINT after either raises
  KeyboardInterrupt. In the main thread only; elsewhere it installs nothing
  and never requests a stop."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self.signals = signals
    self.received: str | None = None
    self._previous: dict[int, object] = {}

  def _record(self, signum, frame) -> None:
    if signum == signal.SIGINT:
      if self.received is not None:
        raise KeyboardInterrupt
      print(
        '\nCtrl-C: stopping after the step in flight, which will be checkpointed '
        '(Ctrl-C again to stop at once)',
        file=sys.stderr,
      )
    self.received = self.received or signal.Signals(signum).name

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
      self.received = OTHER_PROCESS
    return anywhere
