"""A process killed by SIGKILL leaves nothing running: its data workers (and the
multiprocessing resource tracker) exit by themselves, and their /dev/shm
segments and semaphores are unlinked."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_DIT

from video_diffusion.config import config_from_dict
from video_diffusion.data import loader as data_loader
from video_diffusion.data.spec import DataSpec
from video_diffusion.reporting.run_log import read_metrics

pytestmark = pytest.mark.slow  # subprocesses; left out of `make test-fast`

SHM = '/dev/shm'
TINY = {
  **TINY_DIT,
  'diffusion': dict(TINY_DIT['diffusion'], image_size=16, num_frames=4),
  'trainer': dict(
    train_batch_size=2,
    gradient_accumulate_every=1,
    train_num_steps=100_000,
    checkpoint_every_steps=100_000,
    save_and_sample_every=100_000,
    data_workers=2,
    tensorboard_dir=None,
  ),
}


def stat(pid: int) -> tuple[int, str, int] | None:
  """(parent pid, state, start time) of a process, None when it is gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except OSError:
    return None
  return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
  """{pid: start time} of every living process below `root` (from /proc's parent pids)."""
  stats = {int(d): stat(int(d)) for d in os.listdir('/proc') if d.isdigit()}
  children = {}
  for pid, s in stats.items():
    if s is not None:
      children.setdefault(s[0], []).append(pid)
  found, todo = {}, [root]
  while todo:
    for child in children.get(todo.pop(), []):
      if child not in found:
        found[child] = stats[child][2]
        todo.append(child)
  return found


def alive(pid: int, start: int) -> bool:
  """Whether that process (not a later one with its pid) runs; a zombie does not."""
  s = stat(pid)
  return s is not None and s[2] == start and s[1] not in 'ZX'


def shm_held(pids) -> set[str]:
  """The /dev/shm names (shared memory, semaphores) these processes map or hold open."""
  names = set()
  for pid in pids:
    try:
      with open(f'/proc/{pid}/maps') as f:
        names |= {line.split()[-1] for line in f if f' {SHM}/' in line}
      fds = os.listdir(f'/proc/{pid}/fd')
    except OSError:
      continue
    for fd in fds:
      try:
        target = os.readlink(f'/proc/{pid}/fd/{fd}')
      except OSError:
        continue
      if target.startswith(SHM + '/'):
        names.add(target.split(' (deleted)')[0])
  return {os.path.basename(name) for name in names}


def end(pids, started) -> None:
  """Kills what a failed check left running, the resource tracker last: once the
  others are gone it unlinks their /dev/shm names itself."""
  trackers = [pid for pid in pids if 'resource_tracker' in cmdline(pid)]
  for pid in pids:
    if pid not in trackers and alive(pid, started[pid]):
      os.kill(pid, signal.SIGKILL)
  wait_until(lambda: not any(alive(pid, started[pid]) for pid in trackers), 5)
  for pid in trackers:
    if alive(pid, started[pid]):
      os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/cmdline') as f:
      return f.read()
  except OSError:
    return ''


def kill_and_check(proc, ready, tmp_path, *, expect=0, timeout=600.0):
  """Watches `proc` and its descendants until `ready()` and `expect` of them
  have been seen (or 20 s more have passed), kills it by SIGKILL and asserts that
  10 s later none of them lives and no /dev/shm name of theirs is left."""
  started, held = {}, set()
  deadline = time.monotonic() + timeout
  patience = None  # a loaded machine may start the last worker after the first step

  def waiting():
    nonlocal patience
    if not ready():
      return True
    patience = patience or time.monotonic() + 20
    return len(started) < expect and time.monotonic() < patience

  try:
    while waiting():
      assert proc.poll() is None, (tmp_path / 'err').read_text()[-3000:]
      assert time.monotonic() < deadline, 'no step in time'
      started |= descendants(proc.pid)
      held |= shm_held([proc.pid, *started])
      time.sleep(0.1)
    started |= descendants(proc.pid)
    held |= shm_held([proc.pid, *started])
  finally:
    proc.kill()
    proc.wait()
  time.sleep(10)
  left = [pid for pid in started if alive(pid, started[pid])]
  end(left, started)
  assert not left, f'still running 10 s after their parent was killed: {left}'
  assert not held & set(os.listdir(SHM)), 'left in /dev/shm'
  return started, held


def test_train_killed_by_sigkill_leaves_no_worker_and_no_shared_memory(tmp_path):
  results = tmp_path / 'results'
  data = {k: dict(v) for k, v in TINY.items()}
  data['trainer']['results_folder'] = str(results)
  (tmp_path / 'tiny.yaml').write_text(yaml.safe_dump(data))
  with open(tmp_path / 'err', 'w') as err:
    proc = subprocess.Popen(
      [sys.executable, 'train.py', '--config', str(tmp_path / 'tiny.yaml')],
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )

  def a_step_is_done():
    metrics = results / 'metrics.jsonl'
    return metrics.exists() and bool(read_metrics(metrics))

  started, held = kill_and_check(proc, a_step_is_done, tmp_path, expect=3)
  # what was checked: two grain workers and the resource tracker, the batches' memory
  assert len(started) >= 3, started
  assert any(name.startswith('psm_') for name in held), held
  assert any(name.startswith('sem.') for name in held), held


def test_watched_workers_resume_where_they_stopped():
  """With the watch in its two workers, a restored iterator continues exactly."""
  spec = DataSpec.from_config(config_from_dict({k: dict(v) for k, v in TINY.items()}))
  assert spec.workers == 2
  first = iter(data_loader.make_loader(spec, seed=2))
  restored = None
  try:
    for _ in range(3):
      next(first)
    state = data_loader.iterator_state(first)
    expected = [next(first) for _ in range(3)]
    restored = data_loader.restore_iterator(data_loader.make_loader(spec, seed=2), state)
    resumed = [next(restored) for _ in range(3)]
  finally:
    for iterator in (first, restored):
      if iterator is not None:
        data_loader.close_iterator(iterator)
  for a, b in zip(expected, resumed, strict=True):
    assert a.keys() == b.keys() and 'video' in a
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


CHILD = """
import os, time
from video_diffusion.data.workers import exit_with_parent

def main(folder, watch):
  while not os.path.exists(os.path.join(folder, 'go')):
    time.sleep(0.05)
  if watch:
    exit_with_parent()
  open(os.path.join(folder, 'ready'), 'w').close()
  time.sleep(600)
"""

PARENT = """
import multiprocessing, sys, time
sys.path.insert(0, {folder!r})
import child

if __name__ == '__main__':
  process = multiprocessing.get_context('spawn').Process(target=child.main, args={args!r})
  process.start()
  print(process.pid, flush=True)
  time.sleep(600)
"""


def wait_until(condition, seconds: float) -> bool:
  deadline = time.monotonic() + seconds
  while not condition():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


@pytest.mark.parametrize(
  'watch, kill_first',
  [(True, False), (True, True), (False, False)],
  ids=['watching', 'parent gone before the watch began', 'not watching'],
)
def test_a_watching_child_exits_after_its_parent_is_killed(tmp_path, watch, kill_first):
  """exit_with_parent in a multiprocessing child, also called after the parent died."""
  (tmp_path / 'child.py').write_text(textwrap.dedent(CHILD))
  script = PARENT.format(folder=str(tmp_path), args=(str(tmp_path), watch))
  command = [sys.executable, '-c', script]
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
  child = int(proc.stdout.readline())
  start = stat(child)[2]
  try:
    if kill_first:
      proc.kill()
    (tmp_path / 'go').touch()
    if not kill_first:
      assert wait_until((tmp_path / 'ready').exists, 120)
      proc.kill()
    proc.wait()
    if watch:
      assert wait_until(lambda: not alive(child, start), 10), 'the child outlived its parent'
    else:  # the control: without the watch the child runs on
      time.sleep(3)
      assert alive(child, start)
  finally:
    if alive(child, start):
      os.kill(child, signal.SIGKILL)
