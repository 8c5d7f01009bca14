"""Data worker processes that end when the process that started them dies.

grain's worker processes (multiprocessing, 'spawn') are stopped by the loader
when its iterator is closed: at the end of a run, at SIGTERM or Ctrl-C. A
parent killed by SIGKILL (`kill -9`, the OOM killer) closes nothing, and its
workers would run on, re-parented to init, with their memory and the
multiprocessing resource tracker they keep open (which unlinks the run's
leftover /dev/shm segments and semaphores only once every process holding its
pipe is gone).

`ExitWithParent`, a pass-through operation that make_loader puts in a
pipeline with workers, starts a watchdog thread in each worker when grain
unpickles the pipeline there. The thread waits on the pipe that
multiprocessing keeps from each child to its parent (it reads end-of-file the
moment the parent is gone) and checks os.getppid() every half second; when
the parent is gone it ends the worker with os._exit. prctl's PR_SET_PDEATHSIG
is not used: it fires when the *thread* that forked the child ends, and grain
starts its workers from prefetch threads that it stops and restarts (set_state)
while the workers run on.

JAX-free: runs in grain worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

import grain

__all__ = ['EXIT_STATUS', 'ExitWithParent', 'exit_with_parent']

EXIT_STATUS = 3  # a worker's status when it ends because its parent died
_POLL_S = 0.5  # the longest a worker outlives its parent
_lock = threading.Lock()
_watching = False


def exit_with_parent() -> bool:
  """In a multiprocessing child: a daemon thread ends this process (os._exit)
  within _POLL_S of its parent's death, also one that came before this call.
  Once per process; False (and nothing) in a process multiprocessing did not start."""
  global _watching
  parent = multiprocessing.parent_process()
  if parent is None:
    return False
  with _lock:
    if not _watching:
      _watching = True
      threading.Thread(target=_watch, args=(parent,), name='exit-with-parent', daemon=True).start()
  return True


def _watch(parent) -> None:
  while os.getppid() == parent.pid:  # re-parented (to init) once the parent is gone
    parent.join(_POLL_S)  # returns at once when the parent's end of the pipe closes
    if not parent.is_alive():
      break
  os._exit(EXIT_STATUS)


class ExitWithParent(grain.transforms.Map):
  """Passes records through; unpickled in a worker process, it makes the worker
  exit when its parent dies (exit_with_parent)."""

  def map(self, element):
    return element

  def __reduce__(self):
    return _unpickle, ()

  def __repr__(self) -> str:
    return 'ExitWithParent()'


def _unpickle() -> ExitWithParent:
  exit_with_parent()
  return ExitWithParent()
