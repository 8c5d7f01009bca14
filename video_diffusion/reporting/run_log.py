"""Training metrics: a JSON-lines log, TensorBoard scalars and images, a loss-curve PNG."""

import json
import logging
import math
import numbers
import os
import time

from video_diffusion.reporting.plot import plot_loss_curve
from video_diffusion.reporting.tensorboard import EventWriter

logger = logging.getLogger(__name__)

_NON_FINITE = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}

# metrics.jsonl names whose TensorBoard tag is not `{tag_prefix}{name}`: a name that
# starts with one of GROUPS goes to that group, and RENAMED names are as they say.
GROUPS = {'val_': 'val/'}
RENAMED = {'fvd': 'eval/fvd'}


def tensorboard_tag(name: str, prefix: str = 'train/') -> str:
  """The TensorBoard tag of metric `name`: 'loss' -> 'train/loss', 'fvd' ->
  'eval/fvd', 'val_loss_t62' -> 'val/loss_t62'."""
  if name in RENAMED:
    return RENAMED[name]
  for start, group in GROUPS.items():
    if name.startswith(start):
      return group + name[len(start) :]
  return prefix + name


def _to_json(value):
  """Numbers (Python, NumPy, 0-d JAX arrays) -> int/float; non-finite floats -> 'NaN' etc."""
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  value = float(value)
  if math.isfinite(value):
    return value
  return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')


def _from_json(value):
  return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def dedupe(records: list[dict]) -> list[dict]:
  """Later runs win: a record drops every earlier record whose step is >= its own."""
  out = []
  for record in records:
    while out and out[-1]['step'] >= record['step']:
      out.pop()
    out.append(record)
  return out


def read_metrics(path, *, deduplicate: bool = False) -> list[dict]:
  """The records of a metrics.jsonl, in file order; 'NaN'/'Infinity'/'-Infinity' -> float.

  Lines that are not a JSON object with a 'step' (such as one cut short by a crash) are
  skipped. With `deduplicate`, records superseded by a resumed run are dropped (see dedupe).
  """
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        records.append({k: _from_json(v) for k, v in record.items()})
  return dedupe(records) if deduplicate else records


class MetricsLogger:
  """Logs training metrics to `results_folder/metrics.jsonl`, TensorBoard and a PNG.

  Each log() appends one line `{"step", "time" (unix seconds), **metrics}` and flushes it,
  so a crashed process loses nothing already logged. JSON has no NaN/inf: non-finite values
  are written as the strings "NaN", "Infinity" and "-Infinity" (read_metrics turns them back
  into floats). Every metric also becomes a TensorBoard scalar when `tensorboard_dir` is
  set, tagged by tensorboard_tag (`{tag_prefix}{name}` but for the val and eval groups),
  and frames() adds images; tensorboardX writes them from a background thread, all of
  them by close(), and `purge_step` hides the events of a crashed run from that step on.
  `results_folder/loss_curve.png` is re-rendered every `plot_every` log() calls and on
  close().

  Resuming appends to an existing metrics.jsonl, and the curve includes the earlier steps.
  The file itself is never rewritten; the curve is de-duplicated with dedupe(): a record
  with step s (e.g. the first one after resuming from a checkpoint at s) drops the earlier
  records with step >= s that a crashed run logged after that checkpoint.
  With `enabled=False` (non-zero processes of a multi-host run) every method is a no-op.
  """

  def __init__(
    self,
    results_folder,
    *,
    tensorboard_dir=None,
    plot_every: int = 100,
    enabled: bool = True,
    tag_prefix: str = 'train/',
    loss_key: str = 'loss',
    purge_step: int | None = None,
  ):
    self.enabled = enabled
    self.plot_every, self.tag_prefix, self.loss_key = max(int(plot_every), 1), tag_prefix, loss_key
    self.path = os.path.join(os.fspath(results_folder), 'metrics.jsonl')
    self.plot_path = os.path.join(os.fspath(results_folder), 'loss_curve.png')
    self._file = self._writer = None
    self._curve: list[tuple[int, float]] = []
    self._since_plot = 0
    if not enabled:
      return
    os.makedirs(results_folder, exist_ok=True)
    for record in read_metrics(self.path):
      self._add_point(record)
    self._file = open(self.path, 'a', encoding='utf-8')
    if self._file.tell() > 0 and not self._ends_with_newline():
      self._file.write('\n')  # a crash cut the last line short: keep the next one separate
    if tensorboard_dir is not None:
      self._writer = EventWriter(tensorboard_dir, purge_step=purge_step)

  def _ends_with_newline(self) -> bool:
    with open(self.path, 'rb') as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) == b'\n'

  def _add_point(self, record):
    step, loss = record['step'], record.get(self.loss_key)
    while self._curve and self._curve[-1][0] >= step:
      self._curve.pop()
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
      self._curve.append((step, float(loss)))

  def log(self, step: int, metrics: dict):
    """Records `metrics` (name -> number) at `step`."""
    if not self.enabled:
      return
    if 'step' in metrics or 'time' in metrics:
      raise ValueError("'step' and 'time' are reserved metric names")
    step = int(step)
    record = {'step': step, 'time': round(time.time(), 3)}
    record.update({name: _to_json(value) for name, value in metrics.items()})
    self._file.write(json.dumps(record, allow_nan=False) + '\n')
    self._file.flush()
    self._add_point({k: _from_json(v) for k, v in record.items()})
    if self._writer is not None:
      scalars = {
        tensorboard_tag(name, self.tag_prefix): _from_json(value)
        for name, value in record.items()
        if name not in ('step', 'time')
      }
      self._writer.scalars(
        {
          k: v
          for k, v in scalars.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        step,
      )
      self._writer.flush()
    self._since_plot += 1
    if self._since_plot >= self.plot_every:
      self.plot()

  def frames(self, step: int, tag: str, frames):
    """Adds uint8 frames (n, height, width, channels) to TensorBoard as one image
    at `step`, 8 frames a row (nothing without tensorboard_dir)."""
    if self._writer is not None:
      self._writer.images(tag, frames, int(step))
      self._writer.flush()

  def plot(self):
    """Re-renders loss_curve.png; a failure is logged, never raised into the training loop."""
    if not self.enabled:
      return
    self._since_plot = 0
    if not self._curve:
      return
    steps, losses = zip(*self._curve)
    try:
      plot_loss_curve(steps, losses, self.plot_path, title=f'{self.tag_prefix}{self.loss_key}')
    except Exception:  # pylint: disable=broad-except
      logger.warning('could not write %s', self.plot_path, exc_info=True)

  def flush(self):
    if self._file is not None:
      self._file.flush()
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    """Renders the final loss curve and closes the files (idempotent)."""
    if self._file is None:
      return
    self.plot()
    self._file.close()
    self._file = None
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
